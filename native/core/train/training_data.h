// What the training loop needs from a dataset, whatever the task: the class names, batches of
// model inputs in a deterministic, resumable order, and evaluation on the validation split with
// the task's metrics (classification: loss, accuracy, top-5; detection: loss and COCO mAP).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/replica_group.h"
#include "data/dataset.h"
#include "data/image_processor.h"
#include "data/loader.h"
#include "nn/module.h"
#include "tasks/task.h"

namespace vt {

using Metrics = std::map<std::string, double>;
// Runs the model in evaluation mode on one batch (the trainer supplies it: locking, autocast).
using EvaluationForward = std::function<ModelOutputs(const ModelInputs& inputs)>;

struct DataOptions {
  size_t batch_size = 8;
  uint64_t seed = 0;  // the run's (TrainingOptions::seed): the order and augmentation follow it
  int num_workers = 2;
  bool drop_last = false;  // drop the last, incomplete batch (data-parallel: the samples that do not fill every rank)
  // The model trains on per-image masks and their classes (Mask2Former), not on label maps.
  bool mask_targets = false;
  // Data-parallel training: each rank trains on its shard (DistributedSampler's rules) and
  // evaluates its share of the validation split; the metrics are reduced over all ranks.
  ReplicaGroup* replicas = nullptr;
};

class TrainingData {
 public:
  virtual ~TrainingData() = default;
  virtual const std::vector<std::string>& class_names() const = 0;
  virtual size_t batches_per_epoch() const = 0;
  // Training batches of `epoch` from `first_batch` on; next() gives nullopt at the epoch's end.
  virtual void start_epoch(int64_t epoch, size_t first_batch) = 0;
  virtual std::optional<Batch> next() = 0;
  virtual bool has_validation() const = 0;
  // Metrics on the validation split ("eval_..."); `whole`: on the training split instead, for
  // evaluate() on a dataset without one. Data-parallel, every rank calls it and gets the
  // metrics of the whole split.
  virtual Metrics evaluate(const EvaluationForward& forward, bool whole = false) = 0;
};

// The dataset `spec` describes, for a model of `task` preprocessing with `processor`. Label maps
// carry no class names: segmentation takes the model's (`class_names`).
std::unique_ptr<TrainingData> open_training_data(Task task, const DatasetSpec& spec, const DataOptions& options,
                                                 std::shared_ptr<const ImageProcessor> processor,
                                                 const std::vector<std::string>& class_names);

}  // namespace vt
