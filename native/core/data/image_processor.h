// HuggingFace image processors (preprocessor_config.json) in C++: the same steps and the same
// arithmetic as transformers, so that pixel_values match theirs. One implementation serves
// inference (VisionModel.preprocess / predict) and training data loading.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "data/resample.h"
#include "io/image.h"

namespace vt {

struct ImageProcessorConfig {
  std::string processor_type;  // "ViTImageProcessor", "ConvNextImageProcessor", ...
  bool do_resize = true;
  // size: either an exact {height, width} or a {shortest_edge[, longest_edge]} rule.
  std::optional<int> size_height, size_width, shortest_edge, longest_edge;
  Resample resample = Resample::Bilinear;
  bool do_center_crop = false;
  std::optional<int> crop_height, crop_width;
  std::optional<double> crop_pct;  // ConvNextImageProcessor
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::vector<double> image_mean{0.5, 0.5, 0.5};
  std::vector<double> image_std{0.5, 0.5, 0.5};
  // Mask2Former / MaskFormer / OneFormer: resized height and width are rounded up to a multiple
  // of this (0: off).
  int size_divisor = 0;
  // Every other field of the file (do_pad, format, reduce_labels, ...), written back unchanged.
  nlohmann::json extra = nlohmann::json::object();

  // Reads preprocessor_config.json's fields (legacy spellings included, e.g. an integer
  // "size", "feature_extractor_type"); throws vt::Error naming the bad field.
  static ImageProcessorConfig from_json(const nlohmann::json& json);
  nlohmann::json to_json() const;  // what save() writes back
};

class ImageProcessor {
 public:
  // `channels` is the model's num_channels: images are converted to it (1: L, 3: RGB, 4: RGBA).
  ImageProcessor(ImageProcessorConfig config, int channels);

  const ImageProcessorConfig& config() const { return config_; }
  int channels() const { return channels_; }
  // Whether a batch is padded to its largest image with a pixel_mask (DETR's and the MaskFormer
  // family's processors, whose resizing keeps each image's aspect ratio).
  bool pads_batches() const;

  // The (height, width) that process() produces for an input of the given size.
  std::pair<int, int> output_size(int height, int width) const;
  // The uint8 image after the geometric steps (channel conversion, resize, crop), before
  // rescaling and normalisation.
  Image prepare(const Image& image) const;
  // prepare()'s geometry alone (resize, then center crop), with `filter` for the resize and the
  // channels left as they are: segmentation maps take it with NEAREST, so that they stay
  // aligned with their image whatever the processor's steps.
  Image resize_and_crop(Image image, Resample filter) const;

  // Rescale and normalize an image that prepare() (or an augmentation producing the same kind
  // of uint8 image) already brought to the model's channels: -> [C, h, w] float32.
  torch::Tensor normalize(const Image& prepared) const;
  // The same values written planar (C, h, w) into `out`, which holds C * h * w floats; lets a
  // loader fill its batch tensor in place.
  void normalize_into(const Image& prepared, float* out) const;

  // One image -> [C, h, w] float32, the processor's steps in transformers' order:
  // normalize(prepare(image)).
  torch::Tensor process(const Image& image) const;
  // A batch -> [B, C, h, w]; images must come out the same size (they do for ViT-style fixed
  // sizes), otherwise vt::Error says which differ.
  torch::Tensor process_batch(const std::vector<Image>& images) const;

 private:
  ImageProcessorConfig config_;
  int channels_;
  // Rescaled and normalized value of every byte, per channel: the result depends only on the
  // byte, so the arithmetic runs once here.
  std::vector<std::array<float, 256>> tables_;
};

}  // namespace vt
