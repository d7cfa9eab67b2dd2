// Image decoding (JPEG through libjpeg-turbo, PNG through libpng, WebP through libwebp, the first
// frame of a GIF through giflib) into 8-bit interleaved pixels, and PIL-equivalent mode conversion, so preprocessing sees exactly what
// `PIL.Image.open(f).convert("RGB")` gives transformers' image processors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vt {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;             // 1 (L), 3 (RGB) or 4 (RGBA), interleaved, row-major
  std::vector<uint8_t> pixels;  // height * width * channels bytes

  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * width * channels; }
  const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * width * channels; }
};

// Decodes JPEG, PNG, WebP or GIF bytes (detected from the signature). `source` names the input in
// errors (a file path, or "image 3" for bytes). Grayscale stays 1 channel, palette and 16-bit PNGs
// become 8-bit like PIL's loader, alpha is kept (4 channels; gray+alpha becomes RGBA). WebP is RGB,
// or RGBA when the file has alpha; an animated WebP or GIF gives its first frame on the full canvas.
// A GIF is RGB (palette), 1 channel (a gray ramp palette, which Pillow opens as mode L), or RGBA when
// it has a transparency index. Truncated or corrupt data, unknown formats, and images over
// `max_pixels` (checked before the pixels are allocated) throw vt::Error naming `source`.
Image decode_image(const uint8_t* data, size_t size, const std::string& source,
                   int64_t max_pixels = 178956970 /* PIL's decompression-bomb limit x2 */);
Image read_image_file(const std::string& path);

// Decodes a segmentation label map to one channel, with the values np.array(PIL.Image.open(f))
// holds: a palette PNG gives its palette indices (not the colours decode_image expands them to),
// grayscale its values (1-bit: 0/1; 16-bit: values up to 255, larger ones are an error), a GIF its
// first frame's palette indices, and RGB/RGBA, JPEG and WebP included, is accepted through
// label_map_channel. Errors name `source`.
Image decode_label_map(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels = 178956970);
Image read_label_map_file(const std::string& path);

// One label channel from a decoded mask: 1 channel as is; RGB or RGBA whose colour channels are
// equal in every pixel gives that value (alpha is ignored); anything else throws vt::Error naming
// `source` and the first pixel whose channels differ.
Image label_map_channel(const Image& image, const std::string& source);

// Wraps raw pixels, validating the byte count against width x height x channels.
Image image_from_pixels(const uint8_t* data, size_t size, int width, int height, int channels, const std::string& source);

// PIL's Image.convert for the modes preprocessing needs: to 3 channels ("RGB": gray is
// replicated, alpha is dropped without compositing) or to 1 channel ("L": ITU-R 601-2 luma with
// PIL's integer rounding), or to 4 (alpha 255 when absent).
Image convert_channels(const Image& image, int channels);

// PNG encoding (8-bit, 1/3/4 channels), written atomically (temp file, fsync, rename).
void write_png(const Image& image, const std::string& path);
std::vector<uint8_t> encode_png(const Image& image);

}  // namespace vt
