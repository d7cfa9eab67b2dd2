// Object detection: per image, the objects scoring above a threshold with their boxes in pixels
// of the original image, as post_process_object_detection.
#include "common/error.h"
#include "data/detection.h"
#include "tasks/task.h"

namespace vt {

TaskDefinition object_detection_task() {
  TaskDefinition task;
  task.name = "object_detection";
  task.labels = LabelsFormat::BoxesPerImage;
  task.dataset = DatasetKind::CocoDetection;
  task.metrics = {"eval_map", "eval_map_50", "eval_map_75"};
  task.pads_batches = true;
  task.check_options = [](const PredictOptions& options) {
    const double threshold = options.threshold.value_or(0.5);
    VT_CHECK(threshold >= 0.0 && threshold <= 1.0, "threshold must be between 0 and 1, got ", threshold);
  };
  task.post_process = [](const ModelOutputs& outputs, const PredictContext& context, const PredictOptions& options) {
    auto detections = post_process_object_detection(find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32),
                                                    find_output(outputs, "pred_boxes").to(torch::kCPU, torch::kFloat32),
                                                    options.threshold.value_or(0.5), context.original_sizes);
    std::vector<Prediction> predictions(detections.size());
    for (size_t i = 0; i < detections.size(); ++i) {
      auto& objects = predictions[i].value = nlohmann::ordered_json::array();
      for (const auto& d : detections[i]) {
        const auto index = static_cast<size_t>(d.label);
        objects.push_back({{"label", index < context.labels.size() ? context.labels[index] : std::to_string(d.label)},
                           {"score", d.score},
                           {"box", {{"xmin", d.xmin}, {"ymin", d.ymin}, {"xmax", d.xmax}, {"ymax", d.ymax}}}});
      }
    }
    return predictions;
  };
  return task;
}

}  // namespace vt
