// Pillow-compatible resampling of 8-bit images.
//
// The arithmetic follows Pillow's libImaging (Resample.c for the convolution filters, the affine
// scaling path of Geometry.c for NEAREST, Convert.c for the RGBA <-> RGBa premultiplication that
// Image.resize wraps around 4-band images) step by step, because every rounding decision shows in
// the output bytes: double-precision filter weights normalised by their sum, converted to 22-bit
// fixed point, integer accumulation with a half-unit bias, clamping after each pass.
#include "data/resample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace vt {
namespace {

// 32 bits of accumulator, 8 for the result, 2 spare for filters whose partial sums leave [0, 1].
constexpr int kPrecisionBits = 32 - 8 - 2;

double box_weight(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_weight(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_weight(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  // Pillow writes these two constants as float literals; keep their float values.
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_weight(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_weight(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

Filter filter_for(Resample filter) {
  switch (filter) {
    case Resample::Box: return {box_weight, 0.5};
    case Resample::Bilinear: return {bilinear_weight, 1.0};
    case Resample::Hamming: return {hamming_weight, 1.0};
    case Resample::Bicubic: return {bicubic_weight, 2.0};
    case Resample::Lanczos: return {lanczos_weight, 3.0};
    case Resample::Nearest: break;
  }
  fail("resize: no convolution filter for resample code ", static_cast<int>(filter));
}

// For each output index along one axis: the first input index, the number of inputs, and their
// fixed-point weights (ksize slots per output, unused ones zero).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

Coefficients compute_coefficients(int in_size, int out_size, const Filter& filter) {
  // The source box is (0, in_size), held as floats as Pillow does.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;

  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);

  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // Truncating casts after +0.5, then clamping: the bounds rounding of Pillow.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;

    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    int32_t* out = &c.weights[static_cast<size_t>(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      double w = k[x];
      if (ww != 0.0) w /= ww;
      const double scaled = w * (1 << kPrecisionBits);
      out[x] = static_cast<int32_t>(w < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int64_t acc) {
  const int64_t v = acc >> kPrecisionBits;  // arithmetic shift: floor, as Pillow's table lookup
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over rows [row0, row0 + rows) of `in`.
Image resample_horizontal(const Image& in, int out_width, int row0, int rows, const Coefficients& c) {
  const int ch = in.channels;
  Image out;
  out.width = out_width;
  out.height = rows;
  out.channels = ch;
  out.pixels.resize(static_cast<size_t>(out_width) * rows * ch);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.row(row0 + y);
    uint8_t* dst = out.row(y);
    for (int xx = 0; xx < out_width; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      const uint8_t* s = src + static_cast<size_t>(c.first[xx]) * ch;
      const int n = c.count[xx];
      for (int b = 0; b < ch; ++b) {
        int64_t acc = int64_t{1} << (kPrecisionBits - 1);
        for (int x = 0; x < n; ++x) acc += static_cast<int64_t>(s[x * ch + b]) * k[x];
        dst[xx * ch + b] = clip8(acc);
      }
    }
  }
  return out;
}

// Vertical pass; `offset` is subtracted from the coefficient bounds (rows the horizontal pass
// skipped).
Image resample_vertical(const Image& in, int out_height, int offset, const Coefficients& c) {
  const int ch = in.channels;
  const size_t row_bytes = static_cast<size_t>(in.width) * ch;
  Image out;
  out.width = in.width;
  out.height = out_height;
  out.channels = ch;
  out.pixels.resize(row_bytes * out_height);
  std::vector<int64_t> acc(row_bytes);
  for (int yy = 0; yy < out_height; ++yy) {
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    const int ymin = c.first[yy] - offset;
    const int n = c.count[yy];
    std::fill(acc.begin(), acc.end(), int64_t{1} << (kPrecisionBits - 1));
    for (int y = 0; y < n; ++y) {
      const uint8_t* src = in.row(ymin + y);
      const int64_t w = k[y];
      for (size_t i = 0; i < row_bytes; ++i) acc[i] += src[i] * w;
    }
    uint8_t* dst = out.row(yy);
    for (size_t i = 0; i < row_bytes; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

Image resample_convolution(const Image& in, int width, int height, Resample resample) {
  const Filter filter = filter_for(resample);
  const bool need_horizontal = width != in.width;
  const bool need_vertical = height != in.height;

  const Coefficients vert = compute_coefficients(in.height, height, filter);
  // Rows of the source that the vertical pass reads.
  const int ybox_first = vert.first[0];
  const int ybox_last = vert.first[height - 1] + vert.count[height - 1];

  Image current;
  const Image* src = &in;
  int offset = 0;
  if (need_horizontal) {
    const Coefficients horiz = compute_coefficients(in.width, width, filter);
    current = resample_horizontal(in, width, ybox_first, ybox_last - ybox_first, horiz);
    src = &current;
    offset = ybox_first;
  }
  if (need_vertical) return resample_vertical(*src, height, offset, vert);
  if (need_horizontal) return current;
  return in;
}

// Image.resize(..., NEAREST): an affine scale with the pixel-centre convention, positions
// accumulated by repeated addition in double precision (ImagingScaleAffine).
Image resample_nearest(const Image& in, int width, int height) {
  const int ch = in.channels;
  const double ax = static_cast<double>(static_cast<float>(in.width)) / width;
  const double ay = static_cast<double>(static_cast<float>(in.height)) / height;
  auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };

  std::vector<int> xin(width, -1);
  double xo = ax * 0.5;
  for (int x = 0; x < width; ++x) {
    const int xi = coord(xo);
    if (xi >= 0 && xi < in.width) xin[x] = xi;
    xo += ax;
  }

  Image out;
  out.width = width;
  out.height = height;
  out.channels = ch;
  out.pixels.assign(static_cast<size_t>(width) * height * ch, 0);  // outside the source: 0
  double yo = ay * 0.5;
  for (int y = 0; y < height; ++y) {
    const int yi = coord(yo);
    if (yi >= 0 && yi < in.height) {
      const uint8_t* src = in.row(yi);
      uint8_t* dst = out.row(y);
      for (int x = 0; x < width; ++x) {
        if (xin[x] < 0) continue;
        std::memcpy(dst + static_cast<size_t>(x) * ch, src + static_cast<size_t>(xin[x]) * ch, ch);
      }
    }
    yo += ay;
  }
  return out;
}

// (a * b) / 255 rounded, Pillow's MULDIV255.
inline uint8_t muldiv255(unsigned a, unsigned b) {
  const unsigned t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

void premultiply_alpha(Image& image) {
  uint8_t* p = image.pixels.data();
  const size_t n = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < n; ++i, p += 4) {
    const unsigned alpha = p[3];
    p[0] = muldiv255(p[0], alpha);
    p[1] = muldiv255(p[1], alpha);
    p[2] = muldiv255(p[2], alpha);
  }
}

void unpremultiply_alpha(Image& image) {
  uint8_t* p = image.pixels.data();
  const size_t n = static_cast<size_t>(image.width) * image.height;
  for (size_t i = 0; i < n; ++i, p += 4) {
    const unsigned alpha = p[3];
    if (alpha == 255 || alpha == 0) continue;
    for (int b = 0; b < 3; ++b) {
      const unsigned v = (255u * p[b]) / alpha;
      p[b] = static_cast<uint8_t>(v > 255 ? 255 : v);
    }
  }
}

}  // namespace

Resample resample_from_code(int code) {
  switch (code) {
    case 0: return Resample::Nearest;
    case 1: return Resample::Lanczos;
    case 2: return Resample::Bilinear;
    case 3: return Resample::Bicubic;
    case 4: return Resample::Box;
    case 5: return Resample::Hamming;
    default: break;
  }
  fail("unknown resample code ", code, " (expected 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box or 5 hamming)");
}

Image resize_image(const Image& image, int width, int height, Resample filter) {
  VT_CHECK(width > 0 && height > 0, "resize: target size must be positive, got ", width, "x", height);
  VT_CHECK(image.width > 0 && image.height > 0, "resize: empty source image (", image.width, "x", image.height, ")");
  VT_CHECK(image.channels == 1 || image.channels == 3 || image.channels == 4, "resize: unsupported channel count ", image.channels,
           " (expected 1, 3 or 4)");
  VT_CHECK(image.pixels.size() == static_cast<size_t>(image.width) * image.height * image.channels, "resize: pixel buffer holds ",
           image.pixels.size(), " bytes, expected ", static_cast<size_t>(image.width) * image.height * image.channels);

  // Same size: Image.resize returns a copy, untouched (no premultiplication round trip).
  if (width == image.width && height == image.height) return image;
  if (filter == Resample::Nearest) return resample_nearest(image, width, height);
  if (image.channels == 4) {
    // Image.resize converts RGBA to premultiplied RGBa, resizes, and converts back.
    Image premultiplied = image;
    premultiply_alpha(premultiplied);
    Image out = resample_convolution(premultiplied, width, height, filter);
    unpremultiply_alpha(out);
    return out;
  }
  return resample_convolution(image, width, height, filter);
}

}  // namespace vt
