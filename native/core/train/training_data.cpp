#include "train/training_data.h"

#include <chrono>
#include <numeric>

#include "common/error.h"
#include "data/detection.h"
#include "data/loader.h"
#include "data/random.h"
#include "data/segmentation.h"
#include "eval/coco_eval.h"

namespace vt {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void add_throughput(Metrics& metrics, double samples, double seconds) {
  metrics["eval_samples"] = samples;
  metrics["eval_runtime"] = seconds;
  metrics["eval_samples_per_second"] = samples / std::max(seconds, 1e-9);
}

class ClassificationData : public TrainingData {
 public:
  ClassificationData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor)
      : splits_(open_classification_dataset(spec, options.seed)), options_(options), processor_(std::move(processor)) {
    LoaderOptions loader_options;
    loader_options.batch_size = options.batch_size;
    loader_options.shuffle = true;
    loader_options.augment = spec.augment.any();
    loader_options.seed = options.seed;
    loader_options.num_workers = options.num_workers;
    loader_ = std::make_unique<BatchLoader>(splits_.train, processor_, spec.augment, loader_options);
  }

  const std::vector<std::string>& class_names() const override { return splits_.class_names; }
  size_t batches_per_epoch() const override { return loader_->batches_per_epoch(); }
  void start_epoch(int64_t epoch, size_t first_batch) override { loader_->start_epoch(epoch, first_batch); }
  bool has_validation() const override { return splits_.validation != nullptr; }

  std::optional<ModelInputs> next() override {
    auto batch = loader_->next();
    if (!batch) return std::nullopt;
    ModelInputs inputs;
    inputs.pixel_values = batch->pixel_values;
    inputs.labels = batch->labels;
    return inputs;
  }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    auto dataset = whole || !splits_.validation ? splits_.train : splits_.validation;
    LoaderOptions loader_options;
    loader_options.batch_size = options_.batch_size;
    loader_options.shuffle = false;
    loader_options.seed = options_.seed;
    loader_options.num_workers = options_.num_workers;
    BatchLoader loader(dataset, processor_, AugmentSpec{}, loader_options);
    loader.start_epoch(0);
    const auto started = std::chrono::steady_clock::now();
    double loss_sum = 0.0;
    int64_t samples = 0, correct = 0, correct_top5 = 0;
    const int64_t num_labels = static_cast<int64_t>(splits_.class_names.size());
    while (auto batch = loader.next()) {
      ModelInputs inputs;
      inputs.pixel_values = batch->pixel_values;
      inputs.labels = batch->labels;
      ModelOutputs outputs = forward(inputs);
      const int64_t count = batch->labels.size(0);
      loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(count);
      auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
      auto labels = batch->labels.to(torch::kCPU);
      correct += logits.argmax(-1).eq(labels).sum().item<int64_t>();
      if (num_labels >= 5) correct_top5 += std::get<1>(logits.topk(5, -1)).eq(labels.unsqueeze(1)).any(1).sum().item<int64_t>();
      samples += count;
    }
    VT_CHECK(samples > 0, "evaluation: the dataset is empty");
    const double n = static_cast<double>(samples);
    Metrics metrics{{"eval_loss", loss_sum / n}, {"eval_accuracy", static_cast<double>(correct) / n}};
    if (num_labels >= 5) metrics["eval_top5_accuracy"] = static_cast<double>(correct_top5) / n;
    add_throughput(metrics, n, seconds_since(started));
    return metrics;
  }

 private:
  DatasetSplits splits_;
  DataOptions options_;
  std::shared_ptr<const ImageProcessor> processor_;
  std::unique_ptr<BatchLoader> loader_;
};

class DetectionData : public TrainingData {
 public:
  DetectionData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor)
      : options_(options), processor_(std::move(processor)) {
    VT_CHECK(!spec.annotations.empty() && !spec.images.empty(), "dataset: format coco needs annotations (the instances JSON) and images (its directory)");
    train_ = std::make_shared<CocoDetectionDataset>(spec.annotations, spec.images);
    std::vector<size_t> all(train_->size());
    std::iota(all.begin(), all.end(), size_t{0});
    if (!spec.validation_annotations.empty()) {
      VT_CHECK(!spec.validation_images.empty(), "dataset: validationAnnotations needs validationImages (its directory)");
      validation_ = std::make_shared<CocoDetectionDataset>(spec.validation_annotations, spec.validation_images);
      VT_CHECK(validation_->class_names() == train_->class_names(), spec.validation_annotations,
               ": its categories differ from those of ", spec.annotations);
      train_indices_ = all;
      validation_indices_.resize(validation_->size());
      std::iota(validation_indices_.begin(), validation_indices_.end(), size_t{0});
    } else {
      // A seeded split of the images, as the classification datasets do.
      const double fraction = spec.validation_split.value_or(0.1);
      std::mt19937_64 rng(mix_seed(options.seed, 0x5eed));
      seeded_shuffle(all, rng);
      const auto held_out = static_cast<size_t>(std::ceil(fraction * static_cast<double>(all.size())));
      validation_indices_.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(held_out, all.size())));
      train_indices_.assign(all.begin() + static_cast<std::ptrdiff_t>(validation_indices_.size()), all.end());
      if (!validation_indices_.empty()) validation_ = train_;
    }
    if (spec.limit) {
      const auto limit = static_cast<size_t>(*spec.limit);
      if (train_indices_.size() > limit) train_indices_.resize(limit);
      if (validation_indices_.size() > limit) validation_indices_.resize(limit);
    }
    VT_CHECK(!train_indices_.empty(), spec.annotations, ": no images to train on");
    augment_.horizontal_flip = spec.augment.horizontal_flip;
    augment_.shortest_edges = spec.augment.scales;
    apply_augment_ = augment_.horizontal_flip || !augment_.shortest_edges.empty();
  }

  const std::vector<std::string>& class_names() const override { return train_->class_names(); }
  size_t batches_per_epoch() const override { return (train_indices_.size() + options_.batch_size - 1) / options_.batch_size; }
  bool has_validation() const override { return validation_ != nullptr && !validation_indices_.empty(); }

  void start_epoch(int64_t epoch, size_t first_batch) override {
    epoch_ = epoch;
    order_ = train_indices_;
    std::mt19937_64 rng(mix_seed(options_.seed, static_cast<uint64_t>(epoch)));
    seeded_shuffle(order_, rng);
    next_batch_ = first_batch;
  }

  std::optional<ModelInputs> next() override {
    const size_t begin = next_batch_ * options_.batch_size;
    if (begin >= order_.size()) return std::nullopt;
    const size_t end = std::min(order_.size(), begin + options_.batch_size);
    ++next_batch_;
    std::vector<size_t> indices(order_.begin() + static_cast<std::ptrdiff_t>(begin), order_.begin() + static_cast<std::ptrdiff_t>(end));
    return inputs_of(load_detection_batch(*train_, indices, *processor_, augment_, apply_augment_, options_.seed, epoch_));
  }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    const auto& dataset = whole || !has_validation() ? *train_ : *validation_;
    const auto& indices = whole || !has_validation() ? train_indices_ : validation_indices_;
    const auto started = std::chrono::steady_clock::now();
    std::vector<int64_t> image_ids;
    std::vector<GroundTruthBox> ground_truth;
    std::vector<DetectionBox> detections;
    double loss_sum = 0.0;
    for (size_t begin = 0; begin < indices.size(); begin += options_.batch_size) {
      std::vector<size_t> batch_indices(indices.begin() + static_cast<std::ptrdiff_t>(begin),
                                        indices.begin() + static_cast<std::ptrdiff_t>(std::min(indices.size(), begin + options_.batch_size)));
      DetectionBatch batch = load_detection_batch(dataset, batch_indices, *processor_, augment_, false, options_.seed, 0);
      ModelOutputs outputs = forward(inputs_of(batch));
      loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(batch_indices.size());
      auto results = post_process_object_detection(find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32),
                                                   find_output(outputs, "predBoxes").to(torch::kCPU, torch::kFloat32), 0.0,
                                                   batch.original_sizes);
      for (size_t i = 0; i < batch_indices.size(); ++i) {
        const int64_t image_id = static_cast<int64_t>(batch_indices[i]);
        image_ids.push_back(image_id);
        for (const auto& annotation : dataset.annotations(batch_indices[i])) {
          ground_truth.push_back({image_id, dataset.category_to_label().at(annotation.category_id),
                                  {annotation.x, annotation.y, annotation.width, annotation.height}, annotation.area, annotation.iscrowd});
        }
        for (const auto& d : results[i]) {
          detections.push_back({image_id, d.label, {d.xmin, d.ymin, d.xmax - d.xmin, d.ymax - d.ymin}, d.score});
        }
      }
    }
    VT_CHECK(!image_ids.empty(), "evaluation: the dataset is empty");
    Metrics metrics{{"eval_loss", loss_sum / static_cast<double>(image_ids.size())}};
    for (const auto& [name, value] : coco_evaluate(image_ids, ground_truth, detections).as_map()) metrics["eval_" + name] = value;
    add_throughput(metrics, static_cast<double>(image_ids.size()), seconds_since(started));
    return metrics;
  }

 private:
  static ModelInputs inputs_of(const DetectionBatch& batch) {
    ModelInputs inputs;
    inputs.pixel_values = batch.pixel_values;
    inputs.pixel_mask = batch.pixel_mask;
    for (const auto& target : batch.targets) inputs.targets.push_back({target.class_labels, target.boxes, {}});
    return inputs;
  }

  DataOptions options_;
  std::shared_ptr<const ImageProcessor> processor_;
  std::shared_ptr<CocoDetectionDataset> train_, validation_;
  std::vector<size_t> train_indices_, validation_indices_;
  DetectionAugment augment_;
  bool apply_augment_ = false;
  int64_t epoch_ = 0;
  std::vector<size_t> order_;
  size_t next_batch_ = 0;
};

class SegmentationData : public TrainingData {
 public:
  SegmentationData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor,
                   std::vector<std::string> class_names)
      : options_(options), processor_(std::move(processor)), class_names_(std::move(class_names)), augment_(spec.augment) {
    SegmentationSpec segmentation;
    if (spec.format == "masks") {
      segmentation.images = spec.images;
      segmentation.masks = spec.masks;
      segmentation.validation_images = spec.validation_images;
      segmentation.validation_masks = spec.validation_masks;
    } else {
      VT_CHECK(spec.format == "csv" || spec.format == "jsonl", "dataset: a segmentation model trains on format masks, or a csv/jsonl manifest with a mask column, not ", spec.format);
      segmentation.manifest = spec.path;
      segmentation.validation_manifest = spec.validation_path;
      segmentation.root = spec.root;
      segmentation.image_column = spec.image_column;
      segmentation.mask_column = spec.mask_column;
    }
    segmentation.validation_split = spec.validation_split;
    segmentation.limit = spec.limit;
    segmentation.augment = spec.augment;
    std::tie(train_, validation_) = SegmentationDataset::open(segmentation, options.seed);
    const auto& extra = processor_->config().extra;
    reduce_labels_ = extra.value("do_reduce_labels", extra.value("reduce_labels", false));
  }

  const std::vector<std::string>& class_names() const override { return class_names_; }
  size_t batches_per_epoch() const override { return (train_->size() + options_.batch_size - 1) / options_.batch_size; }
  bool has_validation() const override { return validation_ != nullptr && validation_->size() > 0; }

  void start_epoch(int64_t epoch, size_t first_batch) override {
    epoch_ = epoch;
    order_.resize(train_->size());
    std::iota(order_.begin(), order_.end(), size_t{0});
    std::mt19937_64 rng(mix_seed(options_.seed, static_cast<uint64_t>(epoch)));
    seeded_shuffle(order_, rng);
    next_batch_ = first_batch;
  }

  std::optional<ModelInputs> next() override {
    const size_t begin = next_batch_ * options_.batch_size;
    if (begin >= order_.size()) return std::nullopt;
    ++next_batch_;
    std::vector<size_t> indices(order_.begin() + static_cast<std::ptrdiff_t>(begin),
                                order_.begin() + static_cast<std::ptrdiff_t>(std::min(order_.size(), begin + options_.batch_size)));
    SegmentationBatch batch = load_segmentation_batch(*train_, indices, *processor_, reduce_labels_, augment_, augment_.any(), options_.seed, epoch_);
    ModelInputs inputs;
    inputs.pixel_values = batch.pixel_values;
    inputs.labels = batch.labels;
    return inputs;
  }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    const auto& dataset = whole || !has_validation() ? *train_ : *validation_;
    const auto started = std::chrono::steady_clock::now();
    MeanIoU iou(static_cast<int64_t>(class_names_.size()));
    double loss_sum = 0.0;
    for (size_t begin = 0; begin < dataset.size(); begin += options_.batch_size) {
      std::vector<size_t> indices(std::min(options_.batch_size, dataset.size() - begin));
      std::iota(indices.begin(), indices.end(), begin);
      SegmentationBatch batch = load_segmentation_batch(dataset, indices, *processor_, reduce_labels_, augment_, false, options_.seed, 0);
      ModelInputs inputs;
      inputs.pixel_values = batch.pixel_values;
      inputs.labels = batch.labels;
      ModelOutputs outputs = forward(inputs);
      loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(indices.size());
      // Scored at the label maps' resolution, from logits upsampled to it (as the loss sees them).
      auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
      std::vector<torch::Tensor> predicted;
      for (int64_t i = 0; i < logits.size(0); ++i) {
        predicted.push_back(post_process_semantic_segmentation(logits[i], std::make_pair(static_cast<int>(batch.labels.size(1)),
                                                                                         static_cast<int>(batch.labels.size(2)))));
      }
      iou.add(torch::stack(predicted), batch.labels);
    }
    VT_CHECK(dataset.size() > 0, "evaluation: the dataset is empty");
    Metrics metrics{{"eval_loss", loss_sum / static_cast<double>(dataset.size())}};
    for (const auto& [name, value] : iou.compute(class_names_)) metrics["eval_" + name] = value;
    add_throughput(metrics, static_cast<double>(dataset.size()), seconds_since(started));
    return metrics;
  }

 private:
  DataOptions options_;
  std::shared_ptr<const ImageProcessor> processor_;
  std::vector<std::string> class_names_;
  AugmentSpec augment_;
  bool reduce_labels_ = false;
  std::shared_ptr<SegmentationDataset> train_, validation_;
  int64_t epoch_ = 0;
  std::vector<size_t> order_;
  size_t next_batch_ = 0;
};

}  // namespace

std::unique_ptr<TrainingData> open_training_data(Task task, const DatasetSpec& spec, const DataOptions& options,
                                                 std::shared_ptr<const ImageProcessor> processor,
                                                 const std::vector<std::string>& class_names) {
  if (task == Task::ObjectDetection) {
    VT_CHECK(spec.format == "coco", "dataset: an object detection model trains on format coco, not ", spec.format);
    return std::make_unique<DetectionData>(spec, options, std::move(processor));
  }
  if (task == Task::Segmentation) {
    VT_CHECK(!class_names.empty(), "dataset: a segmentation model needs its classes (numClasses or id2label)");
    return std::make_unique<SegmentationData>(spec, options, std::move(processor), class_names);
  }
  VT_CHECK(spec.format != "coco", "dataset: format coco holds detection annotations; a classification model trains on imagefolder, csv, jsonl or idx");
  return std::make_unique<ClassificationData>(spec, options, std::move(processor));
}

}  // namespace vt
