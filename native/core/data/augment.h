// Augmentation shared by the training loaders: torchvision's RandomResizedCrop box, cropping and
// mirroring of uint8 images, and the random choices of one sample. Classification and
// segmentation draw the same choices for the same (seed, epoch, index), so a segmentation mask
// gets exactly the crop and flip its image gets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>

#include "data/dataset.h"
#include "io/image.h"

namespace vt {

// The region RandomResizedCrop cuts from a height x width image.
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};

// torchvision's RandomResizedCrop.get_params: up to 10 tries of a random area and aspect ratio,
// else a center crop with the ratio clamped, drawing from `rng`.
CropBox random_resized_crop_box(int height, int width, const AugmentSpec& augment, std::mt19937_64& rng);

// Throws vt::Error when the scale or ratio range of an enabled RandomResizedCrop is unusable.
void check_augment(const AugmentSpec& augment);

// One sample's random choices, from an RNG seeded by (seed, epoch, index): the crop box (when
// random_resized_crop is on), then the flip (when horizontal_flip is on, p = 0.5).
struct AugmentDraw {
  std::optional<CropBox> crop;
  bool flip = false;
};
AugmentDraw draw_augment(int height, int width, const AugmentSpec& augment, uint64_t seed, int64_t epoch, size_t index);

Image crop_image(const Image& image, const CropBox& box);  // box must lie inside the image
void flip_horizontal(Image& image);                        // in place, any channel count

}  // namespace vt
