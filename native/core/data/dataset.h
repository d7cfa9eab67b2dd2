// Classification datasets on disk: ImageFolder (root/<class>/<image>), CSV or JSONL manifests
// (image path, label) and MNIST-style IDX files (raw or gzipped), with a seeded
// train/validation split when no validation set is given. Mirrors the TypeScript DatasetConfig
// (src/schemas/dataset-config.ts), in snake_case.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/image.h"

namespace vt {

struct AugmentSpec {
  bool random_resized_crop = false;
  std::pair<double, double> scale{0.08, 1.0};  // torchvision's defaults
  std::pair<double, double> ratio{3.0 / 4.0, 4.0 / 3.0};
  bool horizontal_flip = false;
  std::vector<int> scales;  // detection: a random shortest edge per image (multi-scale)
  bool any() const { return random_resized_crop || horizontal_flip; }
};

struct DatasetSpec {
  std::string format;  // "imagefolder" | "csv" | "jsonl" | "idx"
  // imagefolder; for manifests `root` is the base of relative image paths (default: the
  // manifest's directory)
  std::string root, validation_root;
  // csv / jsonl
  std::string path, validation_path;
  std::string image_column = "image", label_column = "label";
  // idx (files); coco: images and validation_images are the image directories
  std::string images, labels, validation_images, validation_labels;
  // coco: the instances JSON files
  std::string annotations, validation_annotations;
  // masks (segmentation): the label-map folders; manifests name them in mask_column
  std::string masks, validation_masks;
  std::string mask_column = "mask";
  // common
  std::optional<double> validation_split;  // default 0.1 when no validation set is given, else 0
  std::optional<int64_t> limit;            // first N samples of each split
  std::vector<std::string> class_names;    // index -> name where the files do not name classes
  AugmentSpec augment;
};

class ImageDataset {
 public:
  virtual ~ImageDataset() = default;
  virtual size_t size() const = 0;
  // Decodes sample i (thread-safe; called from loader threads). Errors name the sample.
  virtual Image image(size_t index) const = 0;
  virtual int64_t label(size_t index) const = 0;
  // What sample i is, for messages: its file path, or "train-images-idx3-ubyte.gz[17]".
  virtual std::string describe(size_t index) const = 0;
};

struct DatasetSplits {
  std::shared_ptr<ImageDataset> train;
  std::shared_ptr<ImageDataset> validation;  // null when the split leaves none
  std::vector<std::string> class_names;      // index -> name, what id2label becomes
};

// Opens the dataset `spec` describes and splits it. Everything that can be checked without
// decoding every image is checked here, each failure a vt::Error naming the path or sample:
// missing files or directories, unreadable manifests, unknown columns, malformed IDX headers,
// labels outside class_names, empty datasets (after `limit` and the split).
DatasetSplits open_classification_dataset(const DatasetSpec& spec, uint64_t seed);

}  // namespace vt
