// The tasks a model's head can serve, one entry each: how its training labels look, which
// datasets train it, which metrics evaluate it, how its batches are preprocessed, and how a
// forward pass's outputs become predictions. This table is the one place a task is defined:
// loading, predict(), the trainer and the addon all dispatch through it.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/module.h"

namespace vt {

// How a task's training labels travel in ModelInputs.
enum class LabelsFormat {
  ClassIndices,   // labels [B]: int64 class indices (float targets for multi-label or regression heads)
  BoxesPerImage,  // targets: {class_labels [n] int64, boxes [n, 4] cx,cy,w,h normalised} per image
  LabelMaps,      // labels [B, H, W] int64, the ignore index for unlabelled pixels
};

// The kind of dataset a task trains on (train/training_data.cpp opens each).
enum class DatasetKind {
  ClassifiedImages,   // imagefolder, csv, jsonl, idx: an image and its class
  CocoDetection,      // coco: an instances JSON and its images
  SegmentationMasks,  // masks, or a csv/jsonl manifest with a mask column: image and label map pairs
};

// predict()'s options; each task reads those it knows and leaves the others alone.
struct PredictOptions {
  std::optional<int64_t> top_k;     // classification: labels per image, best first
  std::optional<double> threshold;  // object detection, instance and panoptic segmentation: the lowest score kept
  // Segmentation by mask queries (Mask2Former): "semantic" (a label map), "instance" or "panoptic" (segments).
  std::optional<std::string> segmentation_task;
  std::optional<double> mask_threshold;               // instance, panoptic: a pixel's mask probability to belong
  std::optional<double> overlap_mask_area_threshold;  // instance, panoptic: the share of a mask that must survive overlaps
  std::vector<int64_t> label_ids_to_fuse;             // panoptic: classes merged into one segment per image
};

// One image's prediction as predict() returns it: a JSON value and the int32 maps that go with it
// (set on `value`, an object, under their names: semantic segmentation's label_map, labelMap in JavaScript).
struct Prediction {
  nlohmann::ordered_json value;  // keys in the order the contract lists them
  std::vector<std::pair<std::string, torch::Tensor>> maps;
};

// What post-processing knows of the model and the batch.
struct PredictContext {
  const std::vector<std::string>& labels;           // index -> label
  const nlohmann::json& config;                     // config.json as the model uses it
  std::vector<std::pair<int, int>> original_sizes;  // (height, width) of each image
};

struct TaskDefinition {
  std::string name;  // ModelConfig.modelType: "classification", "object_detection", ...
  LabelsFormat labels;
  DatasetKind dataset;
  std::vector<std::string> metrics;  // what evaluation reports beside eval_loss, for early stopping
  // Preprocessing pads a batch to its largest image and gives pixel_mask (DetrImageProcessor):
  // predictions then depend on the batch, and micro-batching joins only images of one size.
  bool pads_batches = false;
  // Throws vt::Error naming an option outside its range.
  std::function<void(const PredictOptions& options)> check_options;
  // The model's outputs on a batch -> one prediction per image (post_process_* of transformers).
  std::function<std::vector<Prediction>(const ModelOutputs& outputs, const PredictContext& context, const PredictOptions& options)>
      post_process;
};

// A task is its table entry; the entries live as long as the program.
using Task = const TaskDefinition*;

const std::vector<TaskDefinition>& tasks();
// The entry called `name`; throws vt::Error listing the known names.
Task find_task(const std::string& name);
// "eval_loss" and the task's metrics.
std::vector<std::string> reported_metrics(Task task);

// The entries, one per file in tasks/.
TaskDefinition classification_task();
TaskDefinition object_detection_task();
TaskDefinition semantic_segmentation_task();

}  // namespace vt
