#include "train/training_data.h"

#include <chrono>
#include <cmath>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/augment.h"
#include "data/coco_panoptic.h"
#include "data/detection.h"
#include "data/loader.h"
#include "data/mask_targets.h"
#include "data/random.h"
#include "data/segmentation.h"
#include "eval/coco_eval.h"
#include "eval/mask_eval.h"
#include "tasks/universal_segmentation_post.h"

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

// Batches of every dataset kind come from one BatchLoader over one Sampler, built on the loader
// threads ahead of the trainer; each kind gives its batch builder and its evaluation.
class LoadedData : public TrainingData {
 public:
  size_t batches_per_epoch() const override { return loader_->batches_per_epoch(); }
  void start_epoch(int64_t epoch, size_t first_batch) override { loader_->start_epoch(epoch, first_batch); }
  std::optional<Batch> next() override { return loader_->next(); }

 protected:
  explicit LoadedData(const DataOptions& options) : options_(options) {}

  LoaderOptions loader_options() const {
    LoaderOptions loader;
    loader.batch_size = options_.batch_size;
    loader.seed = options_.seed;
    loader.num_workers = options_.num_workers;
    return loader;
  }
  // Training batches: `indices` in a fresh order each epoch (this rank's shard of it).
  void load_training(std::vector<size_t> indices, BatchBuilder build) {
    Sampler sampler(std::move(indices), /*shuffle=*/true, options_.seed);
    if (options_.replicas) sampler = sampler.shard(options_.replicas->rank(), options_.replicas->size(), options_.drop_last);
    LoaderOptions loader = loader_options();
    loader.drop_last = options_.drop_last;
    loader_ = std::make_unique<BatchLoader>(std::move(sampler), std::move(build), loader);
  }
  // An evaluation pass over `indices` in order (data-parallel: this rank's share, every sample
  // once over all ranks), each batch given to `visit`.
  void for_each_batch(std::vector<size_t> indices, BatchBuilder build, const std::function<void(const Batch&)>& visit) const {
    if (options_.replicas) {
      std::vector<size_t> share;
      for (size_t i = static_cast<size_t>(options_.replicas->rank()); i < indices.size();
           i += static_cast<size_t>(options_.replicas->size()))
        share.push_back(indices[i]);
      indices = std::move(share);
    }
    BatchLoader loader(Sampler(std::move(indices), /*shuffle=*/false, options_.seed), std::move(build), loader_options());
    loader.start_epoch(0);
    while (auto batch = loader.next()) visit(*batch);
  }
  // Sums of per-rank counts over all ranks (alone: as they are).
  void sum_over_ranks(std::vector<double>& values) const {
    if (options_.replicas) options_.replicas->sum(values);
  }

  DataOptions options_;

 private:
  std::unique_ptr<BatchLoader> loader_;
};

std::vector<size_t> all_indices(size_t count) { return Sampler::over(count, false, 0).indices(); }

class ClassificationData : public LoadedData {
 public:
  ClassificationData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor)
      : LoadedData(options), splits_(open_classification_dataset(spec, options.seed)), processor_(std::move(processor)) {
    const bool augment = spec.augment.any();
    if (augment) check_augment(spec.augment);
    load_training(all_indices(splits_.train->size()),
                  classification_batches(splits_.train, processor_, spec.augment, augment, options.seed));
  }

  const std::vector<std::string>& class_names() const override { return splits_.class_names; }
  bool has_validation() const override { return splits_.validation != nullptr; }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    auto dataset = whole || !splits_.validation ? splits_.train : splits_.validation;
    const auto started = std::chrono::steady_clock::now();
    double loss_sum = 0.0;
    int64_t samples = 0, correct = 0, correct_top5 = 0;
    const int64_t num_labels = static_cast<int64_t>(splits_.class_names.size());
    for_each_batch(all_indices(dataset->size()), classification_batches(dataset, processor_, AugmentSpec{}, false, options_.seed),
                   [&](const Batch& batch) {
                     ModelOutputs outputs = forward(batch);
                     const int64_t count = batch.labels.size(0);
                     loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(count);
                     auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
                     auto labels = batch.labels.to(torch::kCPU);
                     correct += logits.argmax(-1).eq(labels).sum().item<int64_t>();
                     if (num_labels >= 5)
                       correct_top5 += std::get<1>(logits.topk(5, -1)).eq(labels.unsqueeze(1)).any(1).sum().item<int64_t>();
                     samples += count;
                   });
    std::vector<double> totals{loss_sum, static_cast<double>(samples), static_cast<double>(correct), static_cast<double>(correct_top5)};
    sum_over_ranks(totals);
    const double n = totals[1];
    VT_CHECK(n > 0, "evaluation: the dataset is empty");
    Metrics metrics{{"eval_loss", totals[0] / n}, {"eval_accuracy", totals[2] / n}};
    if (num_labels >= 5) metrics["eval_top5_accuracy"] = totals[3] / n;
    add_throughput(metrics, n, seconds_since(started));
    return metrics;
  }

 private:
  DatasetSplits splits_;
  std::shared_ptr<const ImageProcessor> processor_;
};

// COCO detection batches: DetrImageProcessor's padding and mask, the boxes moved with the augmentation.
BatchBuilder detection_batches(std::shared_ptr<const CocoDetectionDataset> dataset, std::shared_ptr<const ImageProcessor> processor,
                               DetectionAugment augment, bool apply_augment, uint64_t seed) {
  return [dataset = std::move(dataset), processor = std::move(processor), augment = std::move(augment), apply_augment, seed](
             const std::vector<size_t>& indices, int64_t epoch, const std::atomic<bool>&) -> std::optional<Batch> {
    DetectionBatch loaded = load_detection_batch(*dataset, indices, *processor, augment, apply_augment, seed, epoch);
    Batch batch;
    batch.pixel_values = loaded.pixel_values;
    batch.pixel_mask = loaded.pixel_mask;
    for (const auto& target : loaded.targets) batch.targets.push_back({target.class_labels, target.boxes, {}});
    batch.indices = indices;
    batch.original_sizes = std::move(loaded.original_sizes);
    return batch;
  };
}

// Every rank's images, boxes and detections, on every rank, in image order (COCO evaluation
// then scores the whole split, as one process would).
void gather_over_ranks(ReplicaGroup& replicas, double& loss_sum, std::vector<int64_t>& image_ids, std::vector<GroundTruthBox>& ground_truth,
                       std::vector<DetectionBox>& detections) {
  nlohmann::json mine{{"loss_sum", loss_sum}, {"image_ids", image_ids}};
  auto& truths = mine["ground_truth"] = nlohmann::json::array();
  for (const auto& g : ground_truth)
    truths.push_back({g.image_id, g.category_id, g.box.x, g.box.y, g.box.width, g.box.height, g.area, g.iscrowd});
  auto& found = mine["detections"] = nlohmann::json::array();
  for (const auto& d : detections) found.push_back({d.image_id, d.category_id, d.box.x, d.box.y, d.box.width, d.box.height, d.score});
  loss_sum = 0;
  image_ids.clear();
  ground_truth.clear();
  detections.clear();
  for (const auto& bytes : replicas.gather_bytes(mine.dump())) {
    const auto rank = nlohmann::json::parse(bytes);
    loss_sum += rank.at("loss_sum").get<double>();
    for (const auto& id : rank.at("image_ids")) image_ids.push_back(id.get<int64_t>());
    for (const auto& g : rank.at("ground_truth"))
      ground_truth.push_back({g[0].get<int64_t>(),
                              g[1].get<int64_t>(),
                              {g[2].get<double>(), g[3].get<double>(), g[4].get<double>(), g[5].get<double>()},
                              g[6].get<double>(),
                              g[7].get<bool>()});
    for (const auto& d : rank.at("detections"))
      detections.push_back({d[0].get<int64_t>(),
                            d[1].get<int64_t>(),
                            {d[2].get<double>(), d[3].get<double>(), d[4].get<double>(), d[5].get<double>()},
                            d[6].get<double>()});
  }
  std::stable_sort(image_ids.begin(), image_ids.end());
  std::stable_sort(ground_truth.begin(), ground_truth.end(), [](const auto& a, const auto& b) { return a.image_id < b.image_id; });
  std::stable_sort(detections.begin(), detections.end(), [](const auto& a, const auto& b) { return a.image_id < b.image_id; });
}

// A COCO instances file's images for training and validation: validation_annotations when
// given, else a seeded split of the images, as the classification datasets do.
struct CocoSplit {
  std::shared_ptr<CocoDetectionDataset> train, validation;  // validation may be train itself, or null
  std::vector<size_t> train_indices, validation_indices;
};

CocoSplit open_coco_split(const DatasetSpec& spec, uint64_t seed) {
  VT_CHECK(!spec.annotations.empty() && !spec.images.empty(),
           "dataset: format coco needs annotations (the instances JSON) and images (its directory)");
  CocoSplit split;
  split.train = std::make_shared<CocoDetectionDataset>(spec.annotations, spec.images);
  std::vector<size_t> all = all_indices(split.train->size());
  if (!spec.validation_annotations.empty()) {
    VT_CHECK(!spec.validation_images.empty(), "dataset: validation_annotations needs validation_images (its directory)");
    split.validation = std::make_shared<CocoDetectionDataset>(spec.validation_annotations, spec.validation_images);
    VT_CHECK(split.validation->class_names() == split.train->class_names(), spec.validation_annotations,
             ": its categories differ from those of ", spec.annotations);
    split.train_indices = all;
    split.validation_indices = all_indices(split.validation->size());
  } else {
    const double fraction = spec.validation_split.value_or(0.1);
    std::mt19937_64 rng(mix_seed(seed, 0x5eed));
    seeded_shuffle(all, rng);
    const auto held_out = static_cast<size_t>(std::ceil(fraction * static_cast<double>(all.size())));
    split.validation_indices.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(std::min(held_out, all.size())));
    split.train_indices.assign(all.begin() + static_cast<std::ptrdiff_t>(split.validation_indices.size()), all.end());
    if (!split.validation_indices.empty()) split.validation = split.train;
  }
  if (spec.limit) {
    const auto limit = static_cast<size_t>(*spec.limit);
    if (split.train_indices.size() > limit) split.train_indices.resize(limit);
    if (split.validation_indices.size() > limit) split.validation_indices.resize(limit);
  }
  VT_CHECK(!split.train_indices.empty(), spec.annotations, ": no images to train on");
  return split;
}

class DetectionData : public LoadedData {
 public:
  DetectionData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor)
      : LoadedData(options), processor_(std::move(processor)) {
    CocoSplit split = open_coco_split(spec, options.seed);
    train_ = std::move(split.train);
    validation_ = std::move(split.validation);
    train_indices_ = std::move(split.train_indices);
    validation_indices_ = std::move(split.validation_indices);
    augment_.horizontal_flip = spec.augment.horizontal_flip;
    augment_.shortest_edges = spec.augment.scales;
    const bool apply_augment = augment_.horizontal_flip || !augment_.shortest_edges.empty();
    load_training(train_indices_, detection_batches(train_, processor_, augment_, apply_augment, options.seed));
  }

  const std::vector<std::string>& class_names() const override { return train_->class_names(); }
  bool has_validation() const override { return validation_ != nullptr && !validation_indices_.empty(); }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    const auto& dataset = whole || !has_validation() ? train_ : validation_;
    const auto& indices = whole || !has_validation() ? train_indices_ : validation_indices_;
    const auto started = std::chrono::steady_clock::now();
    std::vector<int64_t> image_ids;
    std::vector<GroundTruthBox> ground_truth;
    std::vector<DetectionBox> detections;
    double loss_sum = 0.0;
    for_each_batch(indices, detection_batches(dataset, processor_, augment_, false, options_.seed), [&](const Batch& batch) {
      ModelOutputs outputs = forward(batch);
      loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(batch.indices.size());
      auto results =
          post_process_object_detection(find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32),
                                        find_output(outputs, "pred_boxes").to(torch::kCPU, torch::kFloat32), 0.0, batch.original_sizes);
      for (size_t i = 0; i < batch.indices.size(); ++i) {
        const int64_t image_id = static_cast<int64_t>(batch.indices[i]);
        image_ids.push_back(image_id);
        for (const auto& annotation : dataset->annotations(batch.indices[i])) {
          ground_truth.push_back({image_id,
                                  dataset->category_to_label().at(annotation.category_id),
                                  {annotation.x, annotation.y, annotation.width, annotation.height},
                                  annotation.area,
                                  annotation.iscrowd});
        }
        for (const auto& d : results[i]) {
          detections.push_back({image_id, d.label, {d.xmin, d.ymin, d.xmax - d.xmin, d.ymax - d.ymin}, d.score});
        }
      }
    });
    if (options_.replicas) gather_over_ranks(*options_.replicas, loss_sum, image_ids, ground_truth, detections);
    VT_CHECK(!image_ids.empty(), "evaluation: the dataset is empty");
    Metrics metrics{{"eval_loss", loss_sum / static_cast<double>(image_ids.size())}};
    for (const auto& [name, value] : coco_evaluate(image_ids, ground_truth, detections).as_map()) metrics["eval_" + name] = value;
    add_throughput(metrics, static_cast<double>(image_ids.size()), seconds_since(started));
    return metrics;
  }

 private:
  std::shared_ptr<const ImageProcessor> processor_;
  std::shared_ptr<CocoDetectionDataset> train_, validation_;
  std::vector<size_t> train_indices_, validation_indices_;
  DetectionAugment augment_;
};

// Image and label map pairs, augmented alike.
BatchBuilder segmentation_batches(std::shared_ptr<const SegmentationDataset> dataset, std::shared_ptr<const ImageProcessor> processor,
                                  bool reduce_labels, AugmentSpec augment, bool apply_augment, uint64_t seed) {
  return [dataset = std::move(dataset), processor = std::move(processor), reduce_labels, augment, apply_augment, seed](
             const std::vector<size_t>& indices, int64_t epoch, const std::atomic<bool>&) -> std::optional<Batch> {
    SegmentationBatch loaded = load_segmentation_batch(*dataset, indices, *processor, reduce_labels, augment, apply_augment, seed, epoch);
    Batch batch;
    batch.pixel_values = loaded.pixel_values;
    batch.labels = loaded.labels;
    batch.indices = indices;
    return batch;
  };
}

// Image and mask pairs: two folders matched by file name, or a manifest with a mask column.
SegmentationSpec segmentation_spec(const DatasetSpec& spec) {
  SegmentationSpec segmentation;
  if (spec.format == "masks") {
    segmentation.images = spec.images;
    segmentation.masks = spec.masks;
    segmentation.validation_images = spec.validation_images;
    segmentation.validation_masks = spec.validation_masks;
  } else {
    VT_CHECK(spec.format == "csv" || spec.format == "jsonl",
             "dataset: a segmentation model trains on format masks, or a csv/jsonl manifest with a mask column, not ", spec.format);
    segmentation.manifest = spec.path;
    segmentation.validation_manifest = spec.validation_path;
    segmentation.root = spec.root;
    segmentation.image_column = spec.image_column;
    segmentation.mask_column = spec.mask_column;
  }
  segmentation.validation_split = spec.validation_split;
  segmentation.limit = spec.limit;
  segmentation.augment = spec.augment;
  return segmentation;
}

class SegmentationData : public LoadedData {
 public:
  SegmentationData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor,
                   std::vector<std::string> class_names)
      : LoadedData(options), processor_(std::move(processor)), class_names_(std::move(class_names)), augment_(spec.augment) {
    SegmentationSpec segmentation = segmentation_spec(spec);
    std::tie(train_, validation_) = SegmentationDataset::open(segmentation, options.seed);
    const auto& extra = processor_->config().extra;
    reduce_labels_ = extra.value("do_reduce_labels", extra.value("reduce_labels", false));
    load_training(all_indices(train_->size()),
                  segmentation_batches(train_, processor_, reduce_labels_, augment_, augment_.any(), options.seed));
  }

  const std::vector<std::string>& class_names() const override { return class_names_; }
  bool has_validation() const override { return validation_ != nullptr && validation_->size() > 0; }

  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    const auto& dataset = whole || !has_validation() ? train_ : validation_;
    VT_CHECK(dataset->size() > 0, "evaluation: the dataset is empty");
    const auto started = std::chrono::steady_clock::now();
    MeanIoU iou(static_cast<int64_t>(class_names_.size()));
    double loss_sum = 0.0;
    for_each_batch(all_indices(dataset->size()), segmentation_batches(dataset, processor_, reduce_labels_, augment_, false, options_.seed),
                   [&](const Batch& batch) {
                     ModelOutputs outputs = forward(batch);
                     loss_sum +=
                         find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(batch.indices.size());
                     // Scored at the label maps' resolution, from logits upsampled to it (as the loss sees them).
                     auto logits = find_output(outputs, "logits").to(torch::kCPU, torch::kFloat32);
                     const auto label_size = std::make_pair(static_cast<int>(batch.labels.size(1)), static_cast<int>(batch.labels.size(2)));
                     std::vector<torch::Tensor> predicted;
                     for (int64_t i = 0; i < logits.size(0); ++i)
                       predicted.push_back(post_process_semantic_segmentation(logits[i], label_size));
                     iou.add(torch::stack(predicted), batch.labels);
                   });
    std::vector<double> totals{loss_sum};
    sum_over_ranks(totals);
    if (options_.replicas) iou.sum_over(*options_.replicas);
    Metrics metrics{{"eval_loss", totals[0] / static_cast<double>(dataset->size())}};
    for (const auto& [name, value] : iou.compute(class_names_)) metrics["eval_" + name] = value;
    add_throughput(metrics, static_cast<double>(dataset->size()), seconds_since(started));
    return metrics;
  }

 private:
  std::shared_ptr<const ImageProcessor> processor_;
  std::vector<std::string> class_names_;
  AugmentSpec augment_;
  bool reduce_labels_ = false;
  std::shared_ptr<SegmentationDataset> train_, validation_;
};

// Per-image masks and their classes (universal segmentation: Mask2Former), padded batches.
BatchBuilder mask_target_batches(std::shared_ptr<const MaskedImageSource> source, std::shared_ptr<const ImageProcessor> processor,
                                 AugmentSpec augment, bool apply_augment, uint64_t seed) {
  return [source = std::move(source), processor = std::move(processor), augment, apply_augment, seed](
             const std::vector<size_t>& indices, int64_t epoch, const std::atomic<bool>&) -> std::optional<Batch> {
    MaskTargetsBatch loaded = load_mask_targets_batch(*source, indices, *processor, augment, apply_augment, seed, epoch);
    Batch batch;
    batch.pixel_values = loaded.pixel_values;
    batch.pixel_mask = loaded.pixel_mask;
    batch.targets = std::move(loaded.targets);
    batch.indices = indices;
    batch.original_sizes = std::move(loaded.original_sizes);
    batch.resized_sizes = std::move(loaded.resized_sizes);
    return batch;
  };
}

// Image `i`'s queries, their mask logits cut to the image's unpadded region (at the mask logits'
// scale), so that post-processing to its size does not stretch the batch's padding over it.
std::pair<torch::Tensor, torch::Tensor> unpadded_queries(const ModelOutputs& outputs, const Batch& batch, size_t i) {
  auto classes = find_output(outputs, "class_queries_logits").to(torch::kCPU, torch::kFloat32);
  auto masks = find_output(outputs, "masks_queries_logits").to(torch::kCPU, torch::kFloat32);
  VT_CHECK(classes.defined() && masks.defined(), "evaluation: the model gives no class_queries_logits and masks_queries_logits");
  const auto index = static_cast<int64_t>(i);
  const auto [height, width] = batch.resized_sizes[i];
  const int64_t padded_height = batch.pixel_values.size(2), padded_width = batch.pixel_values.size(3);
  const int64_t rows = (height * masks.size(2) + padded_height - 1) / padded_height;
  const int64_t cols = (width * masks.size(3) + padded_width - 1) / padded_width;
  return {classes.slice(0, index, index + 1), masks.slice(0, index, index + 1).slice(2, 0, rows).slice(3, 0, cols)};
}

class MaskTargetsData : public LoadedData {
 public:
  MaskTargetsData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor,
                  const std::vector<std::string>& class_names)
      : LoadedData(options), processor_(std::move(processor)), augment_(spec.augment) {
    VT_CHECK(spec.augment.scales.empty(), "dataset: augment.scales (multi-scale resizing) applies to detection; a segmentation model ",
             "takes random_resized_crop and horizontal_flip");
    if (spec.format == "coco") {
      CocoSplit split = open_coco_split(spec, options.seed);
      train_ = coco_instance_masks(split.train);
      if (split.validation) validation_ = split.validation == split.train ? train_ : coco_instance_masks(split.validation);
      train_indices_ = std::move(split.train_indices);
      validation_indices_ = std::move(split.validation_indices);
    } else if (spec.format == "coco_panoptic") {
      VT_CHECK(!spec.annotations.empty() && !spec.images.empty() && !spec.masks.empty(), "dataset: format coco_panoptic needs ",
               "annotations (the panoptic JSON), images (its directory) and masks (the directory of its PNGs)");
      train_ = std::make_shared<CocoPanopticDataset>(spec.annotations, spec.images, spec.masks);
      if (!spec.validation_annotations.empty()) {
        VT_CHECK(!spec.validation_images.empty() && !spec.validation_masks.empty(),
                 "dataset: validation_annotations needs validation_images and validation_masks");
        validation_ = std::make_shared<CocoPanopticDataset>(spec.validation_annotations, spec.validation_images, spec.validation_masks);
        VT_CHECK(validation_->class_names() == train_->class_names(), spec.validation_annotations, ": its categories differ from those of ",
                 spec.annotations);
        train_indices_ = all_indices(train_->size());
        validation_indices_ = all_indices(validation_->size());
      } else {
        // A seeded split of the images, as the other datasets do.
        SplitIndices split = seeded_split(train_->size(), spec.validation_split.value_or(0.1), mix_seed(options.seed, 0x5eed));
        train_indices_ = std::move(split.train);
        validation_indices_ = std::move(split.validation);
        if (!validation_indices_.empty()) validation_ = train_;
      }
      if (spec.limit) {
        const auto limit = static_cast<size_t>(*spec.limit);
        if (train_indices_.size() > limit) train_indices_.resize(limit);
        if (validation_indices_.size() > limit) validation_indices_.resize(limit);
      }
      VT_CHECK(!train_indices_.empty(), spec.annotations, ": no images to train on");
    } else {
      auto [train, validation] = SegmentationDataset::open(segmentation_spec(spec), options.seed);
      const auto& extra = processor_->config().extra;
      const bool reduce_labels = extra.value("do_reduce_labels", extra.value("reduce_labels", false));
      train_ = semantic_class_masks(train, class_names, reduce_labels);
      train_indices_ = all_indices(train->size());
      if (validation && validation->size() > 0) {
        validation_ = semantic_class_masks(validation, class_names, reduce_labels);
        validation_indices_ = all_indices(validation->size());
      }
    }
    if (augment_.any()) check_augment(augment_);
    load_training(train_indices_, mask_target_batches(train_, processor_, augment_, augment_.any(), options.seed));
  }

  const std::vector<std::string>& class_names() const override { return train_->class_names(); }
  bool has_validation() const override { return validation_ != nullptr && !validation_indices_.empty(); }

  // Loss, and mean IoU of the semantic maps (instances painted largest first, unlabelled pixels
  // ignored); for instances also mask mAP (pycocotools' segm) and the mean IoU of each annotated
  // instance with the best mask of a query predicting its class ("mask_iou"); for panoptic
  // segments PQ, SQ and RQ (panopticapi's).
  Metrics evaluate(const EvaluationForward& forward, bool whole) override {
    const auto& source = whole || !has_validation() ? train_ : validation_;
    const auto& indices = whole || !has_validation() ? train_indices_ : validation_indices_;
    VT_CHECK(!indices.empty(), "evaluation: the dataset is empty");
    const auto started = std::chrono::steady_clock::now();
    const auto& names = source->class_names();
    MeanIoU iou(static_cast<int64_t>(names.size()));
    double loss_sum = 0.0, instance_iou_sum = 0.0, instances = 0.0;
    std::vector<int64_t> image_ids;
    std::vector<GroundTruthMask> truths;
    std::vector<DetectionMask> detections;
    const std::vector<bool> things = source->things();
    std::vector<PanopticCategory> categories;
    UniversalPanopticOptions panoptic;
    for (size_t c = 0; c < things.size(); ++c) {
      categories.push_back({static_cast<int64_t>(c), things[c]});
      if (!things[c]) panoptic.label_ids_to_fuse.insert(static_cast<int64_t>(c));
    }
    PanopticQualityAccumulator quality(categories);
    for_each_batch(indices, mask_target_batches(source, processor_, augment_, false, options_.seed), [&](const Batch& batch) {
      ModelOutputs outputs = forward(batch);
      loss_sum += find_output(outputs, "loss").to(torch::kFloat32).item<double>() * static_cast<double>(batch.indices.size());
      for (size_t i = 0; i < batch.indices.size(); ++i) {
        const MaskedImage truth = source->sample(batch.indices[i]);
        const auto [height, width] = batch.original_sizes[i];
        const auto [classes, masks] = unpadded_queries(outputs, batch, i);
        const TargetSizes size{{height, width}};
        iou.add(post_process_universal_semantic(classes, masks, size).front(), semantic_map(truth));
        if (source->kind() == MaskedImageSource::Kind::Panoptic) {
          quality.add(panoptic_annotation(truth),
                      predicted_panoptic(post_process_universal_panoptic(classes, masks, panoptic, size).front()));
          continue;
        }
        if (source->kind() != MaskedImageSource::Kind::Instances) continue;
        const auto image_id = static_cast<int64_t>(batch.indices[i]);
        image_ids.push_back(image_id);
        UniversalInstanceOptions all_segments;
        all_segments.threshold = 0.0;
        const SegmentationResult found = post_process_universal_instance(classes, masks, all_segments, size).front();
        for (const auto& segment : found.segments) {
          detections.push_back({image_id, segment.label_id, rle_encode(found.segmentation.eq(segment.id)), segment.score});
        }
        // Each query's own mask (probability > 0.5 at the image's size) and its most likely class:
        // how close the masks come to the annotated ones, before segments compete for pixels.
        const auto query_classes = std::get<1>(classes[0].softmax(-1).slice(-1, 0, classes.size(2) - 1).max(-1));
        const auto query_masks = torch::nn::functional::interpolate(masks, torch::nn::functional::InterpolateFuncOptions()
                                                                               .size(std::vector<int64_t>{height, width})
                                                                               .mode(torch::kBilinear)
                                                                               .align_corners(false))[0]
                                     .sigmoid()
                                     .gt(0.5);
        std::vector<std::pair<int64_t, torch::Tensor>> predicted;  // (class, mask)
        for (int64_t q = 0; q < query_masks.size(0); ++q) predicted.emplace_back(query_classes[q].item<int64_t>(), query_masks[q]);
        for (int64_t t = 0; t < truth.masks.size(0); ++t) {
          const auto label = truth.class_labels[static_cast<size_t>(t)];
          const bool crowd = truth.crowd[static_cast<size_t>(t)];
          auto mask = truth.masks[t].to(torch::kBool);
          truths.push_back({image_id, label, rle_encode(mask), -1.0, crowd});
          if (crowd) continue;
          double best = 0.0;
          for (const auto& [predicted_label, predicted_mask] : predicted) {
            if (predicted_label != label) continue;
            const double intersection = predicted_mask.logical_and(mask).sum().item<double>();
            const double united = predicted_mask.logical_or(mask).sum().item<double>();
            if (united > 0) best = std::max(best, intersection / united);
          }
          instance_iou_sum += best;
          instances += 1;
        }
      }
    });
    std::vector<double> totals{loss_sum, instance_iou_sum, instances};
    sum_over_ranks(totals);
    if (options_.replicas) iou.sum_over(*options_.replicas);
    const auto evaluated = static_cast<double>(indices.size());
    Metrics metrics{{"eval_loss", totals[0] / evaluated}};
    for (const auto& [name, value] : iou.compute(names)) metrics["eval_" + name] = value;
    if (source->kind() == MaskedImageSource::Kind::Panoptic) {
      VT_CHECK(!options_.replicas, "evaluation: panoptic quality over several ranks is not supported yet; evaluate in one process");
      for (const auto& [name, value] : quality.compute().as_map()) metrics["eval_" + name] = value;
    }
    if (source->kind() == MaskedImageSource::Kind::Instances) {
      if (options_.replicas) gather_masks_over_ranks(*options_.replicas, image_ids, truths, detections);
      for (const auto& [name, value] : coco_evaluate_masks(image_ids, truths, detections).as_map()) metrics["eval_" + name] = value;
      metrics["eval_mask_iou"] = totals[2] > 0 ? totals[1] / totals[2] : 0.0;
    }
    add_throughput(metrics, evaluated, seconds_since(started));
    return metrics;
  }

 private:
  // The label map of a sample's segments: larger ones painted first, so smaller ones lie on top;
  // pixels of no segment (and crowds) are ignored.
  static torch::Tensor semantic_map(const MaskedImage& sample) {
    auto map = torch::full({sample.image.height, sample.image.width}, kIgnoreLabel, torch::kInt64);
    std::vector<int64_t> order(static_cast<size_t>(sample.masks.size(0)));
    std::iota(order.begin(), order.end(), 0);
    auto areas = sample.masks.flatten(1).sum(1);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return areas[a].item<int64_t>() > areas[b].item<int64_t>(); });
    for (const int64_t i : order) {
      map.masked_fill_(sample.masks[i].to(torch::kBool),
                       sample.crowd[static_cast<size_t>(i)] ? kIgnoreLabel : sample.class_labels[static_cast<size_t>(i)]);
    }
    return map;
  }

  // A sample's segments as panopticapi reads a ground truth PNG: segment k has id k + 1.
  static PanopticAnnotation panoptic_annotation(const MaskedImage& sample) {
    PanopticAnnotation annotation;
    annotation.segment_ids = torch::zeros({sample.image.height, sample.image.width}, torch::kInt64);
    for (int64_t k = 0; k < sample.masks.size(0); ++k) {
      annotation.segment_ids.masked_fill_(sample.masks[k].to(torch::kBool), k + 1);
      annotation.segments.push_back(
          {k + 1, sample.class_labels[static_cast<size_t>(k)], static_cast<bool>(sample.crowd[static_cast<size_t>(k)])});
    }
    return annotation;
  }

  static PanopticAnnotation predicted_panoptic(const SegmentationResult& result) {
    PanopticAnnotation annotation;
    annotation.segment_ids = result.segmentation;
    // Fused stuff classes list their id once per query that joined it: panopticapi takes it once.
    std::set<int64_t> seen;
    for (const auto& segment : result.segments) {
      if (seen.insert(segment.id).second) annotation.segments.push_back({segment.id, segment.label_id, false});
    }
    return annotation;
  }

  // Every rank's masks on every rank, in image order (mask mAP then scores the whole split).
  static void gather_masks_over_ranks(ReplicaGroup& replicas, std::vector<int64_t>& image_ids, std::vector<GroundTruthMask>& truths,
                                      std::vector<DetectionMask>& detections) {
    auto rle_json = [](const RleMask& rle) { return nlohmann::json{rle.height, rle.width, rle_to_string(rle)}; };
    auto rle_of = [](const nlohmann::json& j) {
      return rle_from_string(j[2].get<std::string>(), j[0].get<int64_t>(), j[1].get<int64_t>());
    };
    nlohmann::json mine{{"image_ids", image_ids}, {"truths", nlohmann::json::array()}, {"detections", nlohmann::json::array()}};
    for (const auto& t : truths) mine["truths"].push_back({t.image_id, t.category_id, rle_json(t.mask), t.area, t.iscrowd});
    for (const auto& d : detections) mine["detections"].push_back({d.image_id, d.category_id, rle_json(d.mask), d.score});
    image_ids.clear();
    truths.clear();
    detections.clear();
    for (const auto& bytes : replicas.gather_bytes(mine.dump())) {
      const auto rank = nlohmann::json::parse(bytes);
      for (const auto& id : rank.at("image_ids")) image_ids.push_back(id.get<int64_t>());
      for (const auto& t : rank.at("truths"))
        truths.push_back({t[0].get<int64_t>(), t[1].get<int64_t>(), rle_of(t[2]), t[3].get<double>(), t[4].get<bool>()});
      for (const auto& d : rank.at("detections"))
        detections.push_back({d[0].get<int64_t>(), d[1].get<int64_t>(), rle_of(d[2]), d[3].get<double>()});
    }
    std::stable_sort(image_ids.begin(), image_ids.end());
    std::stable_sort(truths.begin(), truths.end(), [](const auto& a, const auto& b) { return a.image_id < b.image_id; });
    std::stable_sort(detections.begin(), detections.end(), [](const auto& a, const auto& b) { return a.image_id < b.image_id; });
  }

  std::shared_ptr<const ImageProcessor> processor_;
  AugmentSpec augment_;
  std::shared_ptr<MaskedImageSource> train_, validation_;
  std::vector<size_t> train_indices_, validation_indices_;
};

}  // namespace

std::unique_ptr<TrainingData> open_training_data(Task task, const DatasetSpec& spec, const DataOptions& options,
                                                 std::shared_ptr<const ImageProcessor> processor,
                                                 const std::vector<std::string>& class_names) {
  ErrorScope errors(ErrorCode::Dataset);
  if (task->dataset == DatasetKind::CocoDetection) {
    VT_CHECK(spec.format == "coco", "dataset: an object detection model trains on format coco, not ", spec.format);
    return std::make_unique<DetectionData>(spec, options, std::move(processor));
  }
  if (task->dataset == DatasetKind::SegmentationMasks) {
    VT_CHECK(!class_names.empty(), "dataset: a segmentation model needs its classes (num_classes or id2label)");
    if (options.mask_targets) return std::make_unique<MaskTargetsData>(spec, options, std::move(processor), class_names);
    VT_CHECK(spec.format != "coco", "dataset: format coco (instance masks) trains models that segment by mask queries (Mask2Former); ",
             "this segmentation model trains on label maps (format masks, csv or jsonl)");
    return std::make_unique<SegmentationData>(spec, options, std::move(processor), class_names);
  }
  VT_CHECK(spec.format != "coco",
           "dataset: format coco holds detection annotations; a classification model trains on imagefolder, csv, jsonl or idx");
  return std::make_unique<ClassificationData>(spec, options, std::move(processor));
}

}  // namespace vt
