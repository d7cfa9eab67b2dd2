#include "train/training_data.h"

#include <chrono>
#include <cmath>
#include <numeric>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/augment.h"
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

class DetectionData : public LoadedData {
 public:
  DetectionData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor)
      : LoadedData(options), processor_(std::move(processor)) {
    VT_CHECK(!spec.annotations.empty() && !spec.images.empty(),
             "dataset: format coco needs annotations (the instances JSON) and images (its directory)");
    train_ = std::make_shared<CocoDetectionDataset>(spec.annotations, spec.images);
    std::vector<size_t> all = all_indices(train_->size());
    if (!spec.validation_annotations.empty()) {
      VT_CHECK(!spec.validation_images.empty(), "dataset: validation_annotations needs validation_images (its directory)");
      validation_ = std::make_shared<CocoDetectionDataset>(spec.validation_annotations, spec.validation_images);
      VT_CHECK(validation_->class_names() == train_->class_names(), spec.validation_annotations, ": its categories differ from those of ",
               spec.annotations);
      train_indices_ = all;
      validation_indices_ = all_indices(validation_->size());
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

class SegmentationData : public LoadedData {
 public:
  SegmentationData(const DatasetSpec& spec, const DataOptions& options, std::shared_ptr<const ImageProcessor> processor,
                   std::vector<std::string> class_names)
      : LoadedData(options), processor_(std::move(processor)), class_names_(std::move(class_names)), augment_(spec.augment) {
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
    return std::make_unique<SegmentationData>(spec, options, std::move(processor), class_names);
  }
  VT_CHECK(spec.format != "coco",
           "dataset: format coco holds detection annotations; a classification model trains on imagefolder, csv, jsonl or idx");
  return std::make_unique<ClassificationData>(spec, options, std::move(processor));
}

}  // namespace vt
