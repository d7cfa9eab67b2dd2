// libFuzzer target: bytes as an image file (JPEG, PNG, WebP or GIF), decoded as images are for
// preprocessing, and as segmentation label maps are.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>

#include "io/image.h"

namespace {

// Far below the decoders' default limit (PIL's, 179 million pixels): a header may ask for any
// size up to the limit and the decoder allocates it before it finds the data short, which at the
// default would make every such input a slow one. The limit's own check is the same code.
constexpr int64_t kMaxPixels = int64_t{1} << 22;

void check(const vt::Image& image) {
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != static_cast<size_t>(image.width) * image.height * image.channels) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Refusing bad bytes is the decoders' job: only crashes and sanitizer reports are findings.
  try {
    const vt::Image image = vt::decode_image(data, size, "fuzz image", kMaxPixels);
    check(image);
    for (int channels : {1, 3, 4}) check(vt::convert_channels(image, channels));
  } catch (const std::exception&) {}
  try {
    const vt::Image labels = vt::decode_label_map(data, size, "fuzz label map", kMaxPixels);
    check(labels);
    if (labels.channels != 1) std::abort();
  } catch (const std::exception&) {}
  return 0;
}
