// Semantic segmentation data: SegformerImageProcessor's label-map preprocessing
// (do_reduce_labels, nearest-neighbour resize), image/mask pair datasets (two folders matched by
// file name, or a CSV/JSONL manifest), augmentation applied to image and mask alike,
// post_process_semantic_segmentation, and the mean-IoU metric.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/replica_group.h"
#include "data/dataset.h"
#include "data/image_processor.h"
#include "io/image.h"

namespace vt {

constexpr int64_t kIgnoreLabel = 255;

// SegformerImageProcessor's segmentation map path (transformers 4.31): reduce_labels (0 -> 255,
// then v - 1, and 254 -> 255) when `reduce_labels`, then the processor's resize with NEAREST
// (PIL; followed by its center crop for processors that crop, as BEiT's does), no rescale or
// normalisation; [H, W] int64, the size ImageProcessor::process gives the image. `mask` must have one channel (an RGB or RGBA
// mask whose channels are all equal is taken as one; anything else is an error naming `source`).
torch::Tensor preprocess_label_map(const Image& mask, const ImageProcessor& processor, bool reduce_labels, const std::string& source);

// transformers' post_process_semantic_segmentation for one image: logits [num_labels, h, w]
// resized bilinearly (align_corners=False) to (height, width) when given, then argmax over
// classes; [height, width] int64.
torch::Tensor post_process_semantic_segmentation(const torch::Tensor& logits, std::optional<std::pair<int, int>> target_size);

// Accumulates per-class intersection and union over a dataset, as the `evaluate` library's
// mean_iou (which transformers' segmentation examples use): pixels labelled `ignore_index` are
// skipped; a class's IoU is NaN when it is absent from both prediction and label (union 0), its
// accuracy NaN when it is absent from the labels, and NaN values are left out of the means.
// Labels outside [0, num_labels) other than ignore_index, and predictions outside it, are errors.
class MeanIoU {
 public:
  MeanIoU(int64_t num_labels, int64_t ignore_index = kIgnoreLabel);
  // `predicted`, `labels`: [B, H, W] or [H, W] integer tensors of the same shape.
  void add(const torch::Tensor& predicted, const torch::Tensor& labels);
  // mean_iou, mean_accuracy, overall_accuracy, and iou_<class> / accuracy_<class> per class name.
  std::map<std::string, double> compute(const std::vector<std::string>& class_names) const;
  // Adds up the areas of every rank's images (data-parallel evaluation), on every rank.
  void sum_over(ReplicaGroup& replicas);

 private:
  int64_t num_labels_, ignore_index_;
  std::vector<double> intersection_, union_, label_area_;
};

struct SegmentationSpec {
  // Two folders: each image in `images` has a mask in `masks` with the same file stem (.png).
  std::string images, masks, validation_images, validation_masks;
  // Or a manifest (csv/jsonl) with `image_column` and `mask_column` paths relative to `root`.
  std::string manifest, validation_manifest, root;
  std::string image_column = "image", mask_column = "mask";
  std::optional<double> validation_split;  // default 0.1 without a validation set
  std::optional<int64_t> limit;
  AugmentSpec augment;  // random_resized_crop and horizontal_flip, applied to image and mask
};

struct SegmentationBatch {
  torch::Tensor pixel_values;  // [B, C, H, W] float32
  torch::Tensor labels;        // [B, H, W] int64, kIgnoreLabel where ignored
};

class SegmentationDataset {
 public:
  // Pairs up images and masks; errors name the unmatched files, missing directories, bad manifests.
  SegmentationDataset(std::vector<std::string> images, std::vector<std::string> masks);
  static std::pair<std::shared_ptr<SegmentationDataset>, std::shared_ptr<SegmentationDataset>> open(
      const SegmentationSpec& spec, uint64_t seed);  // (train, validation or null)
  size_t size() const;
  std::string describe(size_t index) const;  // the image file
  Image image(size_t index) const;
  Image mask(size_t index) const;  // 1 channel, checked to have the image's size

 private:
  // The mask of sample `index`, checked against its already decoded image (batches decode each
  // image once).
  Image mask_for(size_t index, const Image& image) const;
  friend SegmentationBatch load_segmentation_batch(const SegmentationDataset&, const std::vector<size_t>&, const ImageProcessor&, bool,
                                                   const AugmentSpec&, bool, uint64_t, int64_t);

  std::vector<std::string> images_, masks_;
};

// One batch from `indices`: decode, augment image and mask together with an RNG seeded by
// (seed, epoch, index) (RandomResizedCrop with the same box for both, resized with the
// processor's filter for the image and NEAREST for the mask; horizontal flip of both), then the
// processor's steps for the image and preprocess_label_map for the mask. Without augmentation the
// image equals ImageProcessor::process and the mask preprocess_label_map.
SegmentationBatch load_segmentation_batch(const SegmentationDataset& dataset, const std::vector<size_t>& indices,
                                          const ImageProcessor& processor, bool reduce_labels, const AugmentSpec& augment,
                                          bool apply_augment, uint64_t seed, int64_t epoch);

}  // namespace vt
