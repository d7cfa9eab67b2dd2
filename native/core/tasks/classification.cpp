// Image classification: the top-K labels of each image, as transformers' image-classification
// pipeline scores them.
#include "common/error.h"
#include "tasks/task.h"

namespace vt {

TaskDefinition classification_task() {
  TaskDefinition task;
  task.name = "classification";
  task.labels = LabelsFormat::ClassIndices;
  task.dataset = DatasetKind::ClassifiedImages;
  task.metrics = {"eval_accuracy", "eval_top5_accuracy"};
  task.check_options = [](const PredictOptions& options) {
    VT_CHECK(options.top_k.value_or(5) > 0, "top_k must be a positive integer, got ", *options.top_k);
  };
  task.post_process = [](const ModelOutputs& outputs, const PredictContext& context, const PredictOptions& options) {
    auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
    const std::string problem_type = HeadConfig::from_json(context.config, "config.json").problem_type;
    // Sigmoid for multi-label or single-logit heads, softmax otherwise.
    const bool sigmoid = problem_type == "multi_label_classification" || logits.size(-1) == 1;
    auto scores = sigmoid ? torch::sigmoid(logits) : torch::softmax(logits, -1);
    const int64_t k = std::min<int64_t>(options.top_k.value_or(5), scores.size(-1));
    auto [values, indices] = scores.topk(k, -1);
    auto value = values.accessor<float, 2>();
    auto index = indices.accessor<int64_t, 2>();
    std::vector<Prediction> predictions(static_cast<size_t>(scores.size(0)));
    for (int64_t b = 0; b < scores.size(0); ++b) {
      auto& ranked = predictions[static_cast<size_t>(b)].value = nlohmann::ordered_json::array();
      for (int64_t j = 0; j < k; ++j) {
        ranked.push_back({{"label", context.labels.at(static_cast<size_t>(index[b][j]))},
                          {"score", static_cast<double>(value[b][j])},
                          {"index", index[b][j]}});
      }
    }
    return predictions;
  };
  return task;
}

}  // namespace vt
