// The decoders decode_image dispatches to besides JPEG and PNG, one file each; internal to io/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "io/image.h"

namespace vt {
namespace image_detail {

// Throws vt::Error naming `source` and `format` unless 0 < width x height <= max_pixels; called
// with the header's sizes before anything of that size is allocated.
void check_dimensions(int64_t width, int64_t height, int64_t max_pixels, const std::string& source, const char* format);

// "RIFF" <size> "WEBP" followed by a VP8, VP8L or VP8X chunk.
bool is_webp(const uint8_t* data, size_t size);
// "GIF87a" or "GIF89a".
bool is_gif(const uint8_t* data, size_t size);

// WebP, lossy or lossless, still or animated (the first frame on its canvas), as Pillow's
// WebPAnimDecoder path gives it: RGBA when the file declares alpha, else RGB.
Image decode_webp(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels);

// The first frame of a GIF, as Pillow 9.4 loads it (see gif_decode.cpp). With `label_map`, the
// palette indices (np.array of Pillow's mode P or L image) as one channel.
Image decode_gif(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels, bool label_map);

}  // namespace image_detail
}  // namespace vt
