// GIF decoding through giflib: the first frame, with the pixels Pillow 9.4's GifImagePlugin gives.
//
// Pillow's rules for the first frame, reproduced here:
// - The canvas is the logical screen, grown to hold the frame's rectangle if that reaches past it.
//   Outside the rectangle it holds the transparency index if the frame has one, else index 0
//   (never the background colour).
// - The frame's colour table is its local one if present, else the global one. A table whose
//   every entry i is (i, i, i) is no palette at all: the image is mode L and its indices are the
//   gray values. Indices past the end of a shorter table are gray (i, i, i), as Pillow's palette
//   holds a gray ramp where the file gives no colours. (A local identity table over a global colour
//   table leaves Pillow inconsistent: mode L, yet convert("RGB") maps through the global table. The
//   indices are kept as gray here, what np.array and convert("L") give.)
// - The transparency index (graphic control extension before the frame) makes the image RGBA,
//   what Image.convert("RGBA") gives: alpha 0 where the index is the transparent one. Otherwise
//   mode P is RGB, mode L one channel.
// - Interlaced frames are stored in four passes (rows 0, 4, 2, 1 modulo 8, 8, 4, 2).
// Later frames are not read: the data after the first frame may be anything.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gif_lib.h>

#include "common/error.h"
#include "io/image_codecs.h"

namespace vt {
namespace image_detail {
namespace {

struct GifReader {
  const uint8_t* data;
  size_t size;
  size_t pos;
  bool truncated;
};

int gif_read_from_memory(GifFileType* gif, GifByteType* out, int length) {
  auto* reader = static_cast<GifReader*>(gif->UserData);
  if (length <= 0) return 0;
  const size_t available = reader->size - reader->pos;
  size_t n = static_cast<size_t>(length);
  if (n > available) {
    reader->truncated = true;
    n = available;
  }
  std::memcpy(out, reader->data + reader->pos, n);
  reader->pos += n;
  return static_cast<int>(n);
}

struct GifCloser {
  void operator()(GifFileType* gif) const {
    int error = 0;
    DGifCloseFile(gif, &error);
  }
};

[[noreturn]] void gif_fail(const GifReader& reader, int error, const std::string& source) {
  // giflib reports running out of data as a failed read.
  if (reader.truncated) fail(source, ": GIF image file is truncated (unexpected end of data)");
  const char* text = GifErrorString(error);
  fail(source, ": GIF image is corrupt: ", text ? text : "unknown error");
}

// Pillow's _is_palette_needed: a table of (i, i, i) entries only says "grayscale".
bool is_palette_needed(const ColorMapObject* map) {
  for (int i = 0; i < map->ColorCount; ++i) {
    const GifColorType& c = map->Colors[i];
    if (c.Red != i || c.Green != i || c.Blue != i) return true;
  }
  return false;
}

}  // namespace

bool is_gif(const uint8_t* data, size_t size) {
  return size >= 6 && (std::memcmp(data, "GIF87a", 6) == 0 || std::memcmp(data, "GIF89a", 6) == 0);
}

Image decode_gif(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels, bool label_map) {
  GifReader reader{data, size, 0, false};
  int error = 0;
  std::unique_ptr<GifFileType, GifCloser> gif(DGifOpen(&reader, gif_read_from_memory, &error));
  if (!gif) gif_fail(reader, error, source);

  // Records up to the first image descriptor; the last graphic control extension that sets a
  // transparency index gives the frame's.
  int transparency = -1;
  bool found_image = false;
  while (!found_image) {
    GifRecordType type = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(gif.get(), &type) == GIF_ERROR) gif_fail(reader, gif->Error, source);
    switch (type) {
      case EXTENSION_RECORD_TYPE: {
        int code = 0;
        GifByteType* block = nullptr;
        if (DGifGetExtension(gif.get(), &code, &block) == GIF_ERROR) gif_fail(reader, gif->Error, source);
        // block[0] is the sub-block's length: flags, delay (2 bytes), transparency index.
        if (code == GRAPHICS_EXT_FUNC_CODE && block != nullptr && block[0] >= 4 && (block[1] & 1)) transparency = block[4];
        while (block != nullptr) {
          if (DGifGetExtensionNext(gif.get(), &block) == GIF_ERROR) gif_fail(reader, gif->Error, source);
        }
        break;
      }
      case IMAGE_DESC_RECORD_TYPE:
        if (DGifGetImageDesc(gif.get()) == GIF_ERROR) gif_fail(reader, gif->Error, source);
        found_image = true;
        break;
      case TERMINATE_RECORD_TYPE: fail(source, ": GIF image is corrupt: no image in the file");
      default: fail(source, ": GIF image is corrupt: unexpected record");
    }
  }

  const GifImageDesc& frame = gif->Image;
  VT_CHECK(frame.Width > 0 && frame.Height > 0, source, ": GIF image is corrupt: its first frame is ", frame.Width, "x", frame.Height);
  const int64_t x0 = frame.Left, y0 = frame.Top;
  const int64_t width = std::max<int64_t>(gif->SWidth, x0 + frame.Width);
  const int64_t height = std::max<int64_t>(gif->SHeight, y0 + frame.Height);
  check_dimensions(width, height, max_pixels, source, "GIF");

  const ColorMapObject* colours = nullptr;
  if (frame.ColorMap != nullptr) {
    if (is_palette_needed(frame.ColorMap)) colours = frame.ColorMap;
  } else if (gif->SColorMap != nullptr && is_palette_needed(gif->SColorMap)) {
    colours = gif->SColorMap;
  }

  // The palette indices on the canvas.
  const size_t stride = static_cast<size_t>(width);
  std::vector<uint8_t> indices(stride * static_cast<size_t>(height), static_cast<uint8_t>(transparency >= 0 ? transparency : 0));
  std::vector<GifPixelType> line(static_cast<size_t>(frame.Width));
  static const int kPassStart[4] = {0, 4, 2, 1};
  static const int kPassStep[4] = {8, 8, 4, 2};
  int pass = 0;
  int row = 0;
  for (int i = 0; i < frame.Height; ++i) {
    if (frame.Interlace) {
      while (row >= frame.Height) {
        ++pass;
        row = kPassStart[pass];
      }
    } else {
      row = i;
    }
    if (DGifGetLine(gif.get(), line.data(), frame.Width) == GIF_ERROR) gif_fail(reader, gif->Error, source);
    std::memcpy(&indices[static_cast<size_t>(y0 + row) * stride + x0], line.data(), line.size());
    if (frame.Interlace) row += kPassStep[pass];
  }

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  if (label_map) {
    image.channels = 1;
    image.pixels = std::move(indices);
    return image;
  }
  if (colours == nullptr && transparency < 0) {
    image.channels = 1;
    image.pixels = std::move(indices);
    return image;
  }
  // Pillow's palette: the file's colours, a gray ramp after them, the transparent entry's alpha 0.
  uint8_t lookup[256][4];
  for (int i = 0; i < 256; ++i) {
    const bool listed = colours != nullptr && i < colours->ColorCount;
    lookup[i][0] = listed ? colours->Colors[i].Red : static_cast<uint8_t>(i);
    lookup[i][1] = listed ? colours->Colors[i].Green : static_cast<uint8_t>(i);
    lookup[i][2] = listed ? colours->Colors[i].Blue : static_cast<uint8_t>(i);
    lookup[i][3] = i == transparency ? 0 : 255;
  }
  image.channels = transparency >= 0 ? 4 : 3;
  const size_t n = indices.size();
  image.pixels.resize(n * image.channels);
  uint8_t* out = image.pixels.data();
  for (size_t i = 0; i < n; ++i, out += image.channels) std::memcpy(out, lookup[indices[i]], image.channels);
  return image;
}

}  // namespace image_detail
}  // namespace vt
