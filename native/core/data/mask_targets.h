// Training data of universal segmentation models (Mask2Former): each image with one binary mask
// per instance (COCO instances, COCO panoptic segments) or per class present (semantic label
// maps), as Mask2FormerImageProcessor's encode_inputs prepares `mask_labels` and `class_labels`.
// Masks follow their image through augmentation and resizing (NEAREST), and are padded with the
// batch (pixel_mask marks the real pixels).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "data/dataset.h"
#include "data/detection.h"
#include "data/image_processor.h"
#include "data/segmentation.h"
#include "io/image.h"
#include "nn/module.h"

namespace vt {

// One image and its segments: masks [n, height, width] uint8 (0/1) at the image's size, one class
// index each; `crowd` marks COCO crowd regions (kept out of training, ignored by evaluation).
struct MaskedImage {
  Image image;
  std::vector<int64_t> class_labels;
  torch::Tensor masks;
  std::vector<bool> crowd;
};

class MaskedImageSource {
 public:
  virtual ~MaskedImageSource() = default;
  virtual size_t size() const = 0;
  virtual std::string describe(size_t index) const = 0;  // the image file
  virtual MaskedImage sample(size_t index) const = 0;
  virtual const std::vector<std::string>& class_names() const = 0;
  // What the segments are, which decides the evaluation: instances (COCO instances: mask mAP),
  // panoptic segments (COCO panoptic: PQ), or one mask per class (label maps: mean IoU only).
  enum class Kind { Semantic, Instances, Panoptic };
  virtual Kind kind() const = 0;
  // Panoptic: whether each class counts objects ("things") or regions ("stuff"); others: all things.
  virtual std::vector<bool> things() const { return std::vector<bool>(class_names().size(), true); }
};

// COCO instances: every annotation's `segmentation` (polygons, RLE) decoded as pycocotools does,
// its category mapped to the class index (categories sorted by id).
std::shared_ptr<MaskedImageSource> coco_instance_masks(std::shared_ptr<const CocoDetectionDataset> dataset);

// Semantic label maps: one mask per class present, as convert_segmentation_map_to_binary_masks
// (with reduce_labels, 0 becomes the ignore index and the others move down by one). Pixels of
// `ignore_index` (255) belong to no mask; a class outside [0, num_labels) is an error naming it.
std::shared_ptr<MaskedImageSource> semantic_class_masks(std::shared_ptr<const SegmentationDataset> dataset,
                                                        std::vector<std::string> class_names, bool reduce_labels,
                                                        int64_t ignore_index = 255);

struct MaskTargetsBatch {
  torch::Tensor pixel_values;                       // [B, C, H, W] float32, zero-padded at the bottom and right
  torch::Tensor pixel_mask;                         // [B, H, W] int64, 1 on real pixels
  std::vector<Target> targets;                      // class_labels [n] int64, mask_labels [n, H, W] float32 (crowds left out)
  std::vector<std::pair<int, int>> original_sizes;  // (height, width) of each input image
  std::vector<std::pair<int, int>> resized_sizes;   // (height, width) after resizing, before padding
};

// A batch of `indices`: decode, augment image and masks alike with an RNG seeded by (seed, epoch,
// index) (RandomResizedCrop's box, horizontal flip), the processor's resize (NEAREST for masks),
// rescale and normalisation, then padding to the largest image. Segments that the crop leaves
// empty are dropped.
MaskTargetsBatch load_mask_targets_batch(const MaskedImageSource& source, const std::vector<size_t>& indices,
                                         const ImageProcessor& processor, const AugmentSpec& augment, bool apply_augment, uint64_t seed,
                                         int64_t epoch);

}  // namespace vt
