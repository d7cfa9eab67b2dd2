// Object detection data: DetrImageProcessor's batch preprocessing (resize, rescale, normalize, pad
// to the batch's largest image with a pixel mask), COCO annotations converted to DETR targets,
// post_process_object_detection, and a COCO-format dataset with augmentation that moves the boxes
// with the image.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "data/image_processor.h"
#include "io/image.h"

namespace vt {

// One COCO annotation of an image, in pixels of that image.
struct CocoAnnotation {
  int64_t category_id = 0;
  double x = 0, y = 0, width = 0, height = 0;  // bbox
  double area = -1;
  bool iscrowd = false;
  nlohmann::json segmentation;  // as the file holds it (polygons or RLE; null when absent), decoded by data/coco_masks.h
};

// DETR's per-image target: class_labels [n] int64, boxes [n, 4] float32 (cx, cy, w, h)
// normalised by the resized (unpadded) image size, as DetrImageProcessor prepares labels.
struct DetectionTarget {
  torch::Tensor class_labels;
  torch::Tensor boxes;
};

struct DetectionBatch {
  torch::Tensor pixel_values;                       // [B, C, H, W] float32, zero-padded at the bottom and right
  torch::Tensor pixel_mask;                         // [B, H, W] int64, 1 on real pixels
  std::vector<DetectionTarget> targets;             // one per image when annotations were given
  std::vector<std::pair<int, int>> original_sizes;  // (height, width) of each input image
};

// DetrImageProcessor semantics (transformers 4.31) for a batch. `annotations`, when given, has
// one list per image, prepared as prepare_coco_detection_annotation does: crowd annotations
// dropped, boxes clipped to the image and degenerate ones dropped, then scaled with the resize,
// categories mapped through `category_to_label` (category id -> class index; an unknown id is an
// error naming it) and normalised to cx, cy, w, h.
DetectionBatch preprocess_detection(const std::vector<Image>& images, const ImageProcessor& processor,
                                    const std::vector<std::vector<CocoAnnotation>>* annotations = nullptr,
                                    const std::map<int64_t, int64_t>* category_to_label = nullptr);

struct Detection {
  double score = 0;
  int64_t label = 0;
  double xmin = 0, ymin = 0, xmax = 0, ymax = 0;  // pixels of the target size
};

// transformers' post_process_object_detection: softmax over classes, the no-object class (last)
// dropped, best class per query, cx,cy,w,h -> corners scaled to (height, width) of each target
// size, queries scoring above `threshold` kept (in query order). Empty `target_sizes`: boxes stay
// relative (0..1), as transformers leaves them without target sizes.
std::vector<std::vector<Detection>> post_process_object_detection(const torch::Tensor& logits, const torch::Tensor& pred_boxes,
                                                                  double threshold, const std::vector<std::pair<int, int>>& target_sizes);

// A COCO-format dataset: an instances JSON (images, annotations, categories) and the directory of
// its images. Classes are the categories sorted by id (class index = position), so id2label holds
// their names.
struct DetectionAugment {
  bool horizontal_flip = false;
  std::vector<int> shortest_edges;  // non-empty: a random shortest edge per sample (multi-scale)
};

class CocoDetectionDataset {
 public:
  // Validates the JSON (names the file and the offending entry), the image files' existence,
  // annotation image ids and category ids.
  CocoDetectionDataset(const std::string& annotations_file, const std::string& images_dir);
  size_t size() const;
  const std::vector<std::string>& class_names() const;
  const std::map<int64_t, int64_t>& category_to_label() const;
  int64_t image_id(size_t index) const;
  std::string describe(size_t index) const;  // the image file
  Image image(size_t index) const;
  const std::vector<CocoAnnotation>& annotations(size_t index) const;

 private:
  struct Entry {
    int64_t id = 0;
    std::string path;                  // images_dir / file_name
    std::string source;                // "<json>: images[i]", for errors
    std::optional<int> width, height;  // as the JSON states them, checked when decoding
    std::vector<CocoAnnotation> annotations;
  };
  const Entry& entry(size_t index) const;  // throws on an index out of range

  std::vector<Entry> entries_;
  std::vector<std::string> class_names_;
  std::map<int64_t, int64_t> category_to_label_;
};

// One training batch from `indices`: decode, augment with an RNG seeded by (seed, epoch, index)
// (flip moves boxes: x -> width - x - w), then preprocess_detection.
DetectionBatch load_detection_batch(const CocoDetectionDataset& dataset, const std::vector<size_t>& indices,
                                    const ImageProcessor& processor, const DetectionAugment& augment, bool apply_augment, uint64_t seed,
                                    int64_t epoch);

}  // namespace vt
