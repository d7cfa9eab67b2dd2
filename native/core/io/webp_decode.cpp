// WebP decoding through libwebp, byte for byte what Pillow 9.4 gives: Pillow decodes every WebP
// file, still or animated, through libwebp's WebPAnimDecoder into RGBA with the default options
// (fancy upsampling, no dithering), and keeps alpha only when the file declares it.
#include <cstring>
#include <memory>
#include <string>

#include <webp/decode.h>
#include <webp/demux.h>

#include "common/error.h"
#include "io/image_codecs.h"

namespace vt {
namespace image_detail {
namespace {

const char* webp_status_text(VP8StatusCode status) {
  switch (status) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data";
  }
  return "unknown error";
}

uint32_t read_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

struct AnimDecoderDeleter {
  void operator()(WebPAnimDecoder* decoder) const { WebPAnimDecoderDelete(decoder); }
};

}  // namespace

bool is_webp(const uint8_t* data, size_t size) {
  if (size < 16 || std::memcmp(data, "RIFF", 4) != 0 || std::memcmp(data + 8, "WEBP", 4) != 0) return false;
  return std::memcmp(data + 12, "VP8 ", 4) == 0 || std::memcmp(data + 12, "VP8L", 4) == 0 || std::memcmp(data + 12, "VP8X", 4) == 0;
}

Image decode_webp(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels) {
  // The RIFF header states the file's length: a shorter buffer lost its end.
  const uint64_t riff_size = uint64_t{read_le32(data + 4)} + 8;
  if (size < riff_size) fail(source, ": WebP image file is truncated (", size, " of ", riff_size, " bytes)");

  WebPBitstreamFeatures features;
  const VP8StatusCode status = WebPGetFeatures(data, size, &features);
  if (status == VP8_STATUS_NOT_ENOUGH_DATA) fail(source, ": WebP image file is truncated (", webp_status_text(status), ")");
  if (status != VP8_STATUS_OK) fail(source, ": WebP image is corrupt: ", webp_status_text(status));
  // For an animation these are the canvas's sides, which the decoder allocates twice over.
  check_dimensions(features.width, features.height, max_pixels, source, "WebP");

  WebPAnimDecoderOptions options;
  VT_CHECK(WebPAnimDecoderOptionsInit(&options), source, ": cannot create WebP decoder (libwebp version mismatch)");
  options.color_mode = MODE_RGBA;  // not premultiplied, as Pillow asks
  options.use_threads = 0;
  WebPData webp_data;
  webp_data.bytes = data;
  webp_data.size = size;
  std::unique_ptr<WebPAnimDecoder, AnimDecoderDeleter> decoder(WebPAnimDecoderNew(&webp_data, &options));
  if (!decoder) fail(source, ": WebP image is corrupt: invalid container or chunk layout");
  WebPAnimInfo info;
  if (!WebPAnimDecoderGetInfo(decoder.get(), &info)) fail(source, ": WebP image is corrupt: no image information");
  VT_CHECK(static_cast<int64_t>(info.canvas_width) == features.width && static_cast<int64_t>(info.canvas_height) == features.height, source,
           ": WebP image is corrupt: canvas ", info.canvas_width, "x", info.canvas_height, " differs from the header's ", features.width,
           "x", features.height);
  VT_CHECK(info.frame_count >= 1, source, ": WebP image is corrupt: no frames");
  uint8_t* rgba = nullptr;
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(decoder.get(), &rgba, &timestamp) || rgba == nullptr) {
    fail(source, ": WebP image is corrupt: the first frame does not decode");
  }

  Image image;
  image.width = features.width;
  image.height = features.height;
  image.channels = features.has_alpha ? 4 : 3;
  const size_t n = static_cast<size_t>(image.width) * image.height;
  if (image.channels == 4) {
    image.pixels.assign(rgba, rgba + n * 4);
    return image;
  }
  image.pixels.resize(n * 3);
  for (size_t i = 0; i < n; ++i) std::memcpy(&image.pixels[i * 3], rgba + i * 4, 3);
  return image;
}

}  // namespace image_detail
}  // namespace vt
