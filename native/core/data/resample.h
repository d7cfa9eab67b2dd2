// Pillow's resampling, reproduced to the bit: separable two-pass convolution (horizontal, then
// vertical) with 8-bit intermediate rounding and 22-bit fixed-point coefficients, so that
// resized pixels equal `PIL.Image.resize(size, resample)` exactly.
#pragma once

#include "io/image.h"

namespace vt {

// PIL's Image.Resampling codes, as preprocessor_config.json's "resample" stores them.
enum class Resample : int { Nearest = 0, Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

Resample resample_from_code(int code);  // throws vt::Error for unknown codes
Image resize_image(const Image& image, int width, int height, Resample filter);

}  // namespace vt
