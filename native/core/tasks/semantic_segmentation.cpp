// Semantic segmentation: the class of every pixel at the original size, as
// post_process_semantic_segmentation, with the classes present and their pixel counts.
#include <algorithm>

#include "common/error.h"
#include "data/segmentation.h"
#include "tasks/task.h"

namespace vt {

TaskDefinition semantic_segmentation_task() {
  TaskDefinition task;
  task.name = "segmentation";
  task.labels = LabelsFormat::LabelMaps;
  task.dataset = DatasetKind::SegmentationMasks;
  task.metrics = {"eval_mean_iou", "eval_overall_accuracy"};
  task.check_options = [](const PredictOptions&) {};
  task.post_process = [](const ModelOutputs& outputs, const PredictContext& context, const PredictOptions&) {
    auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
    VT_CHECK(logits.defined() && logits.dim() == 4, "the model gives no per-pixel logits");
    std::vector<Prediction> predictions(context.original_sizes.size());
    for (size_t i = 0; i < predictions.size(); ++i) {
      const auto [height, width] = context.original_sizes[i];
      auto map = post_process_semantic_segmentation(logits[static_cast<int64_t>(i)], std::make_pair(height, width));
      // Most pixels first, then by class index.
      auto counts = torch::bincount(map.flatten());
      auto count = counts.accessor<int64_t, 1>();
      std::vector<std::pair<int64_t, int64_t>> present;  // (pixels, index)
      for (int64_t index = 0; index < counts.size(0); ++index) {
        if (count[index] > 0) present.emplace_back(count[index], index);
      }
      std::sort(present.begin(), present.end(),
                [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
      nlohmann::ordered_json segments = nlohmann::ordered_json::array();
      for (const auto& [pixels, index] : present) {
        const auto label =
            static_cast<size_t>(index) < context.labels.size() ? context.labels[static_cast<size_t>(index)] : std::to_string(index);
        segments.push_back({{"label", label}, {"index", index}, {"pixels", pixels}});
      }
      predictions[i].value = {{"width", width}, {"height", height}, {"segments", segments}};
      predictions[i].maps.emplace_back("label_map", map.to(torch::kInt32));
    }
    return predictions;
  };
  return task;
}

}  // namespace vt
