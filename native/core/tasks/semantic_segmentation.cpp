// Segmentation: the class of every pixel at the original size, as
// post_process_semantic_segmentation, with the classes present and their pixel counts. Models
// that segment by mask queries (Mask2Former) also give instance and panoptic segments, as
// post_process_instance_segmentation and post_process_panoptic_segmentation do.
#include <algorithm>
#include <set>

#include "common/error.h"
#include "data/segmentation.h"
#include "tasks/task.h"
#include "tasks/universal_segmentation_post.h"

namespace vt {

namespace {

std::string label_name(const PredictContext& context, int64_t index) {
  return index >= 0 && static_cast<size_t>(index) < context.labels.size() ? context.labels[static_cast<size_t>(index)]
                                                                          : std::to_string(index);
}

// A label map's classes, most pixels first, then by class index.
Prediction label_map_prediction(const torch::Tensor& map, const PredictContext& context, int height, int width) {
  auto counts = torch::bincount(map.flatten());
  auto count = counts.accessor<int64_t, 1>();
  std::vector<std::pair<int64_t, int64_t>> present;  // (pixels, index)
  for (int64_t index = 0; index < counts.size(0); ++index) {
    if (count[index] > 0) present.emplace_back(count[index], index);
  }
  std::sort(present.begin(), present.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  nlohmann::ordered_json segments = nlohmann::ordered_json::array();
  for (const auto& [pixels, index] : present)
    segments.push_back({{"label", label_name(context, index)}, {"index", index}, {"pixels", pixels}});
  Prediction prediction;
  prediction.value = {{"width", width}, {"height", height}, {"segments", segments}};
  prediction.maps.emplace_back("label_map", map.to(torch::kInt32));
  return prediction;
}

// Segment ids per pixel (-1 for none) and the segments, in id order.
Prediction segments_prediction(const SegmentationResult& result, const PredictContext& context, const std::set<int64_t>& stuff, int height,
                               int width) {
  auto ids = result.segmentation.to(torch::kInt64);
  auto counts = torch::bincount(ids.flatten() + 1, {}, static_cast<int64_t>(result.segments.size()) + 2);
  nlohmann::ordered_json segments = nlohmann::ordered_json::array();
  for (const auto& segment : result.segments) {
    const int64_t pixels = segment.id + 1 < counts.size(0) ? counts[segment.id + 1].item<int64_t>() : 0;
    segments.push_back({{"id", segment.id},
                        {"label", label_name(context, segment.label_id)},
                        {"index", segment.label_id},
                        {"score", segment.score},
                        {"pixels", pixels},
                        {"isThing", stuff.count(segment.label_id) == 0}});
  }
  Prediction prediction;
  prediction.value = {{"width", width}, {"height", height}, {"segments", segments}};
  prediction.maps.emplace_back("segmentation", ids.to(torch::kInt32));
  return prediction;
}

std::vector<Prediction> predict_by_mask_queries(const ModelOutputs& outputs, const PredictContext& context, const PredictOptions& options) {
  auto class_logits = find_output(outputs, "class_queries_logits").to(torch::kCPU, torch::kFloat32);
  auto mask_logits = find_output(outputs, "masks_queries_logits").to(torch::kCPU, torch::kFloat32);
  VT_CHECK(mask_logits.defined(), "the model gives class_queries_logits but no masks_queries_logits");
  TargetSizes sizes;
  for (const auto& [height, width] : context.original_sizes) sizes.emplace_back(height, width);
  const std::string task = options.segmentation_task.value_or("semantic");
  std::vector<Prediction> predictions;
  if (task == "semantic") {
    const auto maps = post_process_universal_semantic(class_logits, mask_logits, sizes);
    for (size_t i = 0; i < maps.size(); ++i)
      predictions.push_back(label_map_prediction(maps[i], context, context.original_sizes[i].first, context.original_sizes[i].second));
  } else if (task == "instance") {
    UniversalInstanceOptions instance;
    instance.threshold = options.threshold.value_or(instance.threshold);
    instance.mask_threshold = options.mask_threshold.value_or(instance.mask_threshold);
    instance.overlap_mask_area_threshold = options.overlap_mask_area_threshold.value_or(instance.overlap_mask_area_threshold);
    const auto results = post_process_universal_instance(class_logits, mask_logits, instance, sizes);
    for (size_t i = 0; i < results.size(); ++i)
      predictions.push_back(
          segments_prediction(results[i], context, {}, context.original_sizes[i].first, context.original_sizes[i].second));
  } else {
    UniversalPanopticOptions panoptic;
    panoptic.threshold = options.threshold.value_or(panoptic.threshold);
    panoptic.mask_threshold = options.mask_threshold.value_or(panoptic.mask_threshold);
    panoptic.overlap_mask_area_threshold = options.overlap_mask_area_threshold.value_or(panoptic.overlap_mask_area_threshold);
    panoptic.label_ids_to_fuse = std::set<int64_t>(options.label_ids_to_fuse.begin(), options.label_ids_to_fuse.end());
    auto results = post_process_universal_panoptic(class_logits, mask_logits, panoptic, sizes);
    for (size_t i = 0; i < results.size(); ++i) {
      // transformers marks pixels of no segment 0 (ids start at 1); the contract's "none" is -1.
      results[i].segmentation = results[i].segmentation.masked_fill(results[i].segmentation.eq(0), -1);
      predictions.push_back(segments_prediction(results[i], context, panoptic.label_ids_to_fuse, context.original_sizes[i].first,
                                                context.original_sizes[i].second));
    }
  }
  return predictions;
}

}  // namespace

TaskDefinition semantic_segmentation_task() {
  TaskDefinition task;
  task.name = "segmentation";
  task.labels = LabelsFormat::LabelMaps;
  task.dataset = DatasetKind::SegmentationMasks;
  task.metrics = {"eval_mean_iou", "eval_overall_accuracy"};
  task.check_options = [](const PredictOptions& options) {
    for (const auto& [name, value] : {std::pair<const char*, std::optional<double>>{"threshold", options.threshold},
                                      {"maskThreshold", options.mask_threshold},
                                      {"overlapMaskAreaThreshold", options.overlap_mask_area_threshold}}) {
      VT_CHECK(!value || (*value >= 0.0 && *value <= 1.0), name, " must be between 0 and 1, got ", *value);
    }
    const std::string task = options.segmentation_task.value_or("semantic");
    VT_CHECK(task == "semantic" || task == "instance" || task == "panoptic", "task must be semantic, instance or panoptic, got \"", task,
             "\"");
    for (const int64_t id : options.label_ids_to_fuse) VT_CHECK(id >= 0, "labelIdsToFuse holds ", id, ", not a class index");
  };
  task.post_process = [](const ModelOutputs& outputs, const PredictContext& context, const PredictOptions& options) {
    if (find_output(outputs, "class_queries_logits").defined()) return predict_by_mask_queries(outputs, context, options);
    const std::string task = options.segmentation_task.value_or("semantic");
    VT_CHECK(task == "semantic", "task \"", task,
             "\" needs a model that segments by mask queries (Mask2Former); this one gives per-pixel class logits only");
    auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
    VT_CHECK(logits.defined() && logits.dim() == 4, "the model gives no per-pixel logits");
    std::vector<Prediction> predictions;
    for (size_t i = 0; i < context.original_sizes.size(); ++i) {
      const auto [height, width] = context.original_sizes[i];
      auto map = post_process_semantic_segmentation(logits[static_cast<int64_t>(i)], std::make_pair(height, width));
      predictions.push_back(label_map_prediction(map, context, height, width));
    }
    return predictions;
  };
  return task;
}

}  // namespace vt
