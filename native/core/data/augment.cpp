#include "data/augment.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "data/random.h"

namespace vt {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) { return lo + (hi - lo) * uniform01(rng); }

}  // namespace

// Python's round() is round-half-even, which std::nearbyint gives in the default rounding mode.
CropBox random_resized_crop_box(int height, int width, const AugmentSpec& augment, std::mt19937_64& rng) {
  const double area = static_cast<double>(height) * width;
  const auto [scale_lo, scale_hi] = augment.scale;
  const auto [ratio_lo, ratio_hi] = augment.ratio;
  const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(rng, scale_lo, scale_hi);
    const double aspect = std::exp(uniform(rng, log_lo, log_hi));
    const double w = std::nearbyint(std::sqrt(target_area * aspect));
    const double h = std::nearbyint(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      CropBox box;
      box.height = static_cast<int>(h);
      box.width = static_cast<int>(w);
      box.top = static_cast<int>(uniform_below(rng, static_cast<uint64_t>(height - box.height + 1)));
      box.left = static_cast<int>(uniform_below(rng, static_cast<uint64_t>(width - box.width + 1)));
      return box;
    }
  }
  // Fallback: a center crop of the whole image, its aspect ratio clamped to the range.
  const double in_ratio = static_cast<double>(width) / height;
  CropBox box;
  box.width = width;
  box.height = height;
  if (in_ratio < ratio_lo) {
    box.height = static_cast<int>(std::nearbyint(width / ratio_lo));
  } else if (in_ratio > ratio_hi) {
    box.width = static_cast<int>(std::nearbyint(height * ratio_hi));
  }
  box.height = std::clamp(box.height, 1, height);
  box.width = std::clamp(box.width, 1, width);
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

void check_augment(const AugmentSpec& augment) {
  auto range_ok = [](const std::pair<double, double>& r) {
    return std::isfinite(r.first) && std::isfinite(r.second) && r.first > 0 && r.first <= r.second;
  };
  if (!augment.random_resized_crop) return;
  VT_CHECK(range_ok(augment.scale), "augment: random_resized_crop scale must be [min, max] with 0 < min <= max, got [", augment.scale.first,
           ", ", augment.scale.second, "]");
  VT_CHECK(range_ok(augment.ratio), "augment: random_resized_crop ratio must be [min, max] with 0 < min <= max, got [", augment.ratio.first,
           ", ", augment.ratio.second, "]");
}

AugmentDraw draw_augment(int height, int width, const AugmentSpec& augment, uint64_t seed, int64_t epoch, size_t index) {
  std::mt19937_64 rng(mix_seed(seed, static_cast<uint64_t>(epoch), index));
  AugmentDraw draw;
  if (augment.random_resized_crop) draw.crop = random_resized_crop_box(height, width, augment, rng);
  if (augment.horizontal_flip) draw.flip = uniform01(rng) < 0.5;
  return draw;
}

Image crop_image(const Image& image, const CropBox& box) {
  VT_CHECK(box.top >= 0 && box.left >= 0 && box.height > 0 && box.width > 0 && box.top + box.height <= image.height &&
               box.left + box.width <= image.width,
           "crop: box (top ", box.top, ", left ", box.left, ", ", box.width, "x", box.height, ") is outside the ", image.width, "x",
           image.height, " image");
  Image out;
  out.width = box.width;
  out.height = box.height;
  out.channels = image.channels;
  out.pixels.resize(static_cast<size_t>(box.width) * box.height * image.channels);
  const size_t row_bytes = static_cast<size_t>(box.width) * image.channels;
  for (int y = 0; y < box.height; ++y) {
    const uint8_t* src = image.row(box.top + y) + static_cast<size_t>(box.left) * image.channels;
    std::copy(src, src + row_bytes, out.row(y));
  }
  return out;
}

void flip_horizontal(Image& image) {
  const int ch = image.channels;
  for (int y = 0; y < image.height; ++y) {
    uint8_t* row = image.row(y);
    for (int l = 0, r = image.width - 1; l < r; ++l, --r) {
      std::swap_ranges(row + static_cast<size_t>(l) * ch, row + static_cast<size_t>(l + 1) * ch, row + static_cast<size_t>(r) * ch);
    }
  }
}

}  // namespace vt
