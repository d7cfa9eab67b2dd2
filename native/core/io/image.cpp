// JPEG (libjpeg-turbo) and PNG (libpng) decoding with the pixel semantics of Pillow's loaders,
// the dispatch to the WebP and GIF decoders (webp_decode.cpp, gif_decode.cpp), PIL-compatible
// mode conversion, and PNG encoding.
//
// Both libraries report fatal errors by longjmp. Every function that calls into them and arms
// setjmp ("phase" functions below) holds only trivially destructible locals, and every object
// with a destructor lives in its caller, so a longjmp never skips a C++ destructor; no C++
// exception ever crosses a library frame (callbacks record failures and return or longjmp).
#include "io/image.h"

#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

// jpeglib.h needs size_t and FILE declared first.
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "common/error.h"
#include "io/image_codecs.h"

namespace vt {

void image_detail::check_dimensions(int64_t width, int64_t height, int64_t max_pixels, const std::string& source, const char* format) {
  VT_CHECK(width > 0 && height > 0, source, ": ", format, " image has invalid dimensions ", width, "x", height);
  VT_CHECK(width * height <= max_pixels, source, ": ", format, " image is ", width, "x", height, " = ", width * height,
           " pixels, over the limit of ", max_pixels, " (possible decompression bomb)");
}

namespace {

using image_detail::check_dimensions;

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

bool is_jpeg(const uint8_t* data, size_t size) { return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF; }

bool is_png(const uint8_t* data, size_t size) { return size >= 8 && std::memcmp(data, kPngSignature, 8) == 0; }

// (a * b) / 255 rounded, Pillow's MULDIV255.
inline uint8_t muldiv255(unsigned a, unsigned b) {
  const unsigned t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

// ---------------------------------------------------------------------------------------------
// JPEG

struct JpegErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  bool truncated;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void jpeg_on_message(j_common_ptr cinfo, int msg_level) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  if (msg_level >= 0) return;  // trace messages
  const int code = cinfo->err->msg_code;
  // Running out of data (libjpeg then pads with a fake EOI and would return gray garbage), even
  // if only the EOI marker is missing, or hitting a marker inside entropy-coded data: the image
  // is incomplete, which Pillow reports as "image file is truncated". Other warnings (e.g.
  // extraneous bytes before a marker) are ignored, as Pillow ignores them.
  if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER) {
    err->truncated = true;
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
  }
  cinfo->err->num_warnings++;
}

struct JpegDecoder {
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  bool created = false;
  ~JpegDecoder() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// Header phase: creates the decompressor, reads the header, picks the output color space.
bool jpeg_header_phase(JpegDecoder* d, const uint8_t* data, size_t size) {
  std::memset(&d->cinfo, 0, sizeof(d->cinfo));
  d->cinfo.err = jpeg_std_error(&d->err.pub);
  d->err.pub.error_exit = jpeg_on_error;
  d->err.pub.emit_message = jpeg_on_message;
  d->err.truncated = false;
  d->err.message[0] = '\0';
  if (setjmp(d->err.jump)) return false;
  jpeg_create_decompress(&d->cinfo);
  d->created = true;
  jpeg_mem_src(&d->cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&d->cinfo, TRUE);
  // libjpeg's defaults (JDCT_ISLOW, fancy upsampling, full scale), which Pillow keeps.
  switch (d->cinfo.num_components) {
    case 1: d->cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: d->cinfo.out_color_space = JCS_RGB; break;
    case 4: d->cinfo.out_color_space = JCS_CMYK; break;  // YCCK is converted to CMYK
    default: break;                                      // rejected by the caller
  }
  jpeg_calc_output_dimensions(&d->cinfo);
  return true;
}

// Pixel phase: decodes every scanline into `out` (rows of `stride` bytes).
bool jpeg_pixel_phase(JpegDecoder* d, uint8_t* out, size_t stride) {
  if (setjmp(d->err.jump)) return false;
  jpeg_start_decompress(&d->cinfo);
  while (d->cinfo.output_scanline < d->cinfo.output_height) {
    JSAMPROW row = out + static_cast<size_t>(d->cinfo.output_scanline) * stride;
    if (jpeg_read_scanlines(&d->cinfo, &row, 1) != 1) {
      std::snprintf(d->err.message, sizeof(d->err.message), "decoder returned no scanline");
      return false;
    }
  }
  jpeg_finish_decompress(&d->cinfo);
  return true;
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels) {
  auto d = std::make_unique<JpegDecoder>();
  if (!jpeg_header_phase(d.get(), data, size)) {
    if (d->err.truncated) fail(source, ": JPEG image file is truncated (", d->err.message, ")");
    fail(source, ": cannot decode JPEG header: ", d->err.message);
  }
  const int components = d->cinfo.num_components;
  VT_CHECK(components == 1 || components == 3 || components == 4, source, ": JPEG with ", components,
           " components is not supported (expected 1, 3 or 4)");
  const int64_t width = d->cinfo.output_width;
  const int64_t height = d->cinfo.output_height;
  check_dimensions(width, height, max_pixels, source, "JPEG");
  const int out_components = d->cinfo.out_color_components;
  VT_CHECK(out_components == components, source, ": unexpected JPEG output components ", out_components);

  const size_t stride = static_cast<size_t>(width) * out_components;
  std::vector<uint8_t> raw(stride * static_cast<size_t>(height));
  if (!jpeg_pixel_phase(d.get(), raw.data(), stride)) {
    if (d->err.truncated) fail(source, ": JPEG image file is truncated (", d->err.message, ")");
    fail(source, ": corrupt JPEG data: ", d->err.message);
  }

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  if (components != 4) {
    image.channels = components;
    image.pixels = std::move(raw);
    return image;
  }
  // Pillow reads 4-component JPEGs as "CMYK;I" (Adobe's inverted polarity, always assumed) and
  // .convert("RGB") then computes  nk = 255 - K,  R = nk - C * nk / 255  (rounded MULDIV255).
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  const size_t n = static_cast<size_t>(width) * height;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* in = &raw[i * 4];
    const unsigned nk = in[3];  // 255 - (255 - raw K)
    for (int b = 0; b < 3; ++b) {
      const unsigned c = 255u - in[b];
      image.pixels[i * 3 + b] = static_cast<uint8_t>(nk - muldiv255(c, nk));
    }
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// PNG decoding

struct PngDecoder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  bool truncated = false;
  char message[256] = {0};
  // Header information (set by the header phase).
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  int channels = 0;
  size_t rowbytes = 0;
  // Label-map mode (decode_label_map): the sample values as PIL's np.array gives them.
  bool label_map = false;
  bool gray16 = false;  // 16-bit gray label map, read at full depth (rows of big-endian pairs)

  ~PngDecoder() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void png_on_error(png_structp png, png_const_charp message) {
  auto* d = static_cast<PngDecoder*>(png_get_error_ptr(png));
  if (d && !d->truncated) std::snprintf(d->message, sizeof(d->message), "%s", message);
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

void png_read_from_memory(png_structp png, png_bytep out, size_t length) {
  auto* d = static_cast<PngDecoder*>(png_get_io_ptr(png));
  if (d->size - d->pos < length) {
    d->truncated = true;
    std::snprintf(d->message, sizeof(d->message), "unexpected end of data");
    png_error(png, "unexpected end of data");
  }
  std::memcpy(out, d->data + d->pos, length);
  d->pos += length;
}

bool png_header_phase(PngDecoder* d) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  png_set_read_fn(d->png, d, png_read_from_memory);
  // No per-side limit beyond PNG's own 2^31-1: the caller applies the pixel-count limit.
  png_set_user_limits(d->png, 0x7fffffff, 0x7fffffff);
  // The chunks whose size is theirs to say (text, ICC profile, EXIF, ...) are passed over, not kept: none
  // changes the pixels, and libpng 1.6 allocates and zeroes whatever length such a chunk claims,
  // up to 2 GiB, its own length limit being only a warning.
  static const png_byte kUnusedChunks[] = "tEXt\0zTXt\0iTXt\0iCCP\0eXIf\0sPLT\0pCAL\0sCAL";
  png_set_keep_unknown_chunks(d->png, PNG_HANDLE_CHUNK_NEVER, kUnusedChunks, 8);
  png_read_info(d->png, d->info);
  png_get_IHDR(d->png, d->info, &d->width, &d->height, &d->bit_depth, &d->color_type, &d->interlace, nullptr, nullptr);
  if (d->label_map) {
    // np.array of what Pillow loads: a palette image (mode P) gives its indices, 1-bit gray
    // (mode 1) 0/1, 2/4-bit gray is scaled like the image path (L;2, L;4), 16-bit gray (mode I)
    // its full values; transparency stays out of the samples. Gray+alpha and RGBA lose alpha
    // (their colour channels carry the labels, if anything does); other 16-bit data keeps its
    // most significant byte, as Pillow's 8-bit modes do.
    const int type = d->color_type;
    d->gray16 = type == PNG_COLOR_TYPE_GRAY && d->bit_depth == 16;
    if (d->bit_depth == 16 && !d->gray16) png_set_strip_16(d->png);
    if (d->bit_depth < 8) {
      if (type == PNG_COLOR_TYPE_GRAY && d->bit_depth > 1) {
        png_set_expand_gray_1_2_4_to_8(d->png);
      } else {
        png_set_packing(d->png);
      }
    }
    if (type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(d->png);
    png_set_interlace_handling(d->png);
    png_read_update_info(d->png, d->info);
    d->channels = png_get_channels(d->png, d->info);
    d->rowbytes = png_get_rowbytes(d->png, d->info);
    return true;
  }
  // Pillow's PNG modes, reduced to 8 bits: 16-bit samples keep their most significant byte,
  // 1/2/4-bit gray is scaled to 0..255, palettes are expanded, tRNS becomes alpha, gray+alpha
  // becomes RGBA. No gamma, background or sBIT transformation.
  if (d->bit_depth == 16) png_set_strip_16(d->png);
  if (d->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(d->png);
  if (d->color_type == PNG_COLOR_TYPE_GRAY && d->bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(d->png);
  }
  const bool has_trns = png_get_valid(d->png, d->info, PNG_INFO_tRNS) != 0;
  if (has_trns) png_set_tRNS_to_alpha(d->png);
  if (d->color_type == PNG_COLOR_TYPE_GRAY_ALPHA || (d->color_type == PNG_COLOR_TYPE_GRAY && has_trns)) {
    png_set_gray_to_rgb(d->png);
  }
  png_set_interlace_handling(d->png);
  png_read_update_info(d->png, d->info);
  d->channels = png_get_channels(d->png, d->info);
  d->rowbytes = png_get_rowbytes(d->png, d->info);
  return true;
}

bool png_pixel_phase(PngDecoder* d, png_bytepp rows) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  png_read_image(d->png, rows);
  return true;
}

// Whether libpng had delivered every row when the data ran out: it then only wanted the end of
// the zlib stream or the last IDAT's CRC. Pillow accepts such files (it stops reading once all
// rows are decoded), so we do too. libpng's row counter equals the row count once the last row
// of a non-interlaced image is finished; for interlaced images the pass counter reaches 7.
bool png_rows_complete(PngDecoder* d) {
  if (d->interlace == PNG_INTERLACE_NONE) return png_get_current_row_number(d->png) >= d->height;
  return png_get_current_pass_number(d->png) >= 7;
}

// Reads the chunks after the image data. Like Pillow, a problem there (e.g. a missing IEND)
// does not invalidate the pixels, so the result is only informational.
bool png_end_phase(PngDecoder* d) {
  if (setjmp(png_jmpbuf(d->png))) return false;
  png_read_end(d->png, nullptr);
  return true;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels, bool label_map = false) {
  auto d = std::make_unique<PngDecoder>();
  d->data = data;
  d->size = size;
  d->label_map = label_map;
  d->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, d.get(), png_on_error, png_on_warning);
  VT_CHECK(d->png != nullptr, source, ": cannot create PNG decoder");
  d->info = png_create_info_struct(d->png);
  VT_CHECK(d->info != nullptr, source, ": cannot create PNG decoder");

  if (!png_header_phase(d.get())) {
    if (d->truncated) fail(source, ": PNG image file is truncated (", d->message, ")");
    fail(source, ": corrupt PNG header: ", d->message);
  }
  check_dimensions(d->width, d->height, max_pixels, source, "PNG");
  VT_CHECK(d->channels == 1 || d->channels == 3 || d->channels == 4, source, ": unexpected PNG channel count ", d->channels);
  const size_t sample_bytes = d->gray16 ? 2 : 1;
  const size_t stride = static_cast<size_t>(d->width) * d->channels * sample_bytes;
  VT_CHECK(d->rowbytes == stride, source, ": unexpected PNG row size ", d->rowbytes);

  Image image;
  image.width = static_cast<int>(d->width);
  image.height = static_cast<int>(d->height);
  image.channels = d->channels;
  std::vector<uint8_t> wide;  // 16-bit samples, narrowed below
  if (d->gray16) {
    wide.resize(stride * image.height);
  } else {
    image.pixels.resize(stride * image.height);
  }
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) {
    rows[y] = d->gray16 ? wide.data() + stride * y : image.row(y);
  }
  if (!png_pixel_phase(d.get(), rows.data()) && !(d->truncated && png_rows_complete(d.get()))) {
    if (d->truncated) fail(source, ": PNG image file is truncated (", d->message, ")");
    fail(source, ": corrupt PNG data: ", d->message);
  }
  png_end_phase(d.get());
  if (d->gray16) {
    // Labels are bytes downstream (reduce_labels and the ignore index 255 are uint8 arithmetic).
    const size_t n = static_cast<size_t>(image.width) * image.height;
    image.pixels.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const unsigned v = (static_cast<unsigned>(wide[2 * i]) << 8) | wide[2 * i + 1];
      VT_CHECK(v <= 255, source, ": 16-bit label map holds the value ", v, " at (x ", i % image.width, ", y ", i / image.width,
               "); labels above 255 are not supported");
      image.pixels[i] = static_cast<uint8_t>(v);
    }
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// PNG encoding

struct PngEncoder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  std::vector<uint8_t>* out = nullptr;
  char message[256] = {0};
  ~PngEncoder() {
    if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
  }
};

void png_encode_on_error(png_structp png, png_const_charp message) {
  auto* e = static_cast<PngEncoder*>(png_get_error_ptr(png));
  if (e) std::snprintf(e->message, sizeof(e->message), "%s", message);
  png_longjmp(png, 1);
}

bool append_bytes(std::vector<uint8_t>* out, const uint8_t* data, size_t length) noexcept {
  try {
    out->insert(out->end(), data, data + length);
    return true;
  } catch (...) {
    return false;
  }
}

void png_write_to_memory(png_structp png, png_bytep data, size_t length) {
  auto* e = static_cast<PngEncoder*>(png_get_io_ptr(png));
  if (!append_bytes(e->out, data, length)) png_error(png, "out of memory");
}

void png_flush_nothing(png_structp) {}

bool png_encode_phase(PngEncoder* e, int width, int height, int color_type, png_bytepp rows) {
  if (setjmp(png_jmpbuf(e->png))) return false;
  png_set_write_fn(e->png, e, png_write_to_memory, png_flush_nothing);
  png_set_IHDR(e->png, e->info, width, height, 8, color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(e->png, e->info);
  png_write_image(e->png, rows);
  png_write_end(e->png, nullptr);
  return true;
}

void check_image(const Image& image, const char* what) {
  VT_CHECK(image.channels == 1 || image.channels == 3 || image.channels == 4, what, ": unsupported channel count ", image.channels,
           " (expected 1, 3 or 4)");
  VT_CHECK(image.width > 0 && image.height > 0, what, ": empty image (", image.width, "x", image.height, ")");
  const size_t expected = static_cast<size_t>(image.width) * image.height * image.channels;
  VT_CHECK(image.pixels.size() == expected, what, ": pixel buffer holds ", image.pixels.size(), " bytes, expected ", expected);
}

std::string errno_text(int code) { return std::strerror(code); }

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels) {
  ErrorScope errors(ErrorCode::Image);
  VT_CHECK(data != nullptr && size > 0, source, ": empty input (0 bytes), not an image");
  if (is_jpeg(data, size)) return decode_jpeg(data, size, source, max_pixels);
  if (is_png(data, size)) return decode_png(data, size, source, max_pixels);
  if (image_detail::is_webp(data, size)) return image_detail::decode_webp(data, size, source, max_pixels);
  if (image_detail::is_gif(data, size)) return image_detail::decode_gif(data, size, source, max_pixels, false);
  fail(source, ": not a JPEG, PNG, WebP or GIF image (unrecognised signature)");
}

namespace {

// Far beyond any photograph (an image file of 512 MiB): a device or pipe that never ends stops here.
constexpr size_t kMaxImageFileBytes = size_t{1} << 29;

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int code = errno;
    fail("cannot open image file '", path, "': ", errno_text(code));
  }
  std::vector<uint8_t> bytes;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    const int code = S_ISDIR(st.st_mode) ? EISDIR : errno;
    ::close(fd);
    fail("cannot read image file '", path, "': ", errno_text(code));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxImageFileBytes) {
    ::close(fd);
    fail("image file '", path, "' is ", static_cast<uint64_t>(st.st_size) >> 20, " MiB, more than the ", kMaxImageFileBytes >> 20,
         " MiB any image this library reads can take");
  }
  if (st.st_size > 0) bytes.reserve(static_cast<size_t>(st.st_size));
  uint8_t buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    // A device or pipe (/dev/zero) never ends: no image file is larger than this.
    if (n > 0 && bytes.size() + static_cast<size_t>(n) > kMaxImageFileBytes) {
      ::close(fd);
      fail("image file '", path, "' holds more than ", kMaxImageFileBytes >> 20, " MiB",
           S_ISREG(st.st_mode) ? "" : " (it is not a regular file)", "; not an image this library reads");
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      ::close(fd);
      fail("cannot read image file '", path, "': ", errno_text(code));
    }
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
  ::close(fd);
  return bytes;
}

}  // namespace

Image read_image_file(const std::string& path) {
  ErrorScope errors(ErrorCode::Image);
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return decode_image(bytes.data(), bytes.size(), path);
}

Image decode_label_map(const uint8_t* data, size_t size, const std::string& source, int64_t max_pixels) {
  ErrorScope errors(ErrorCode::Image);
  VT_CHECK(data != nullptr && size > 0, source, ": empty input (0 bytes), not an image");
  if (is_png(data, size)) return label_map_channel(decode_png(data, size, source, max_pixels, true), source);
  if (image_detail::is_gif(data, size)) return image_detail::decode_gif(data, size, source, max_pixels, true);
  return label_map_channel(decode_image(data, size, source, max_pixels), source);
}

Image read_label_map_file(const std::string& path) {
  ErrorScope errors(ErrorCode::Image);
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return decode_label_map(bytes.data(), bytes.size(), path);
}

Image label_map_channel(const Image& image, const std::string& source) {
  check_image(image, source.c_str());
  if (image.channels == 1) return image;
  const size_t n = static_cast<size_t>(image.width) * image.height;
  const int ch = image.channels;
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = 1;
  out.pixels.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = image.pixels.data() + i * ch;
    if (p[0] != p[1] || p[0] != p[2]) {
      fail(source, ": a label map needs one channel, but this ", ch == 3 ? "RGB" : "RGBA", " image has different colour channels at (x ",
           i % image.width, ", y ", i / image.width, "): (", static_cast<int>(p[0]), ", ", static_cast<int>(p[1]), ", ",
           static_cast<int>(p[2]), "); save masks as 8-bit grayscale or palette PNGs whose values are class indices");
    }
    out.pixels[i] = p[0];
  }
  return out;
}

Image image_from_pixels(const uint8_t* data, size_t size, int width, int height, int channels, const std::string& source) {
  ErrorScope errors(ErrorCode::Image);
  VT_CHECK(channels == 1 || channels == 3 || channels == 4, source, ": unsupported channel count ", channels, " (expected 1, 3 or 4)");
  VT_CHECK(width > 0 && height > 0, source, ": invalid dimensions ", width, "x", height);
  const size_t expected = static_cast<size_t>(width) * height * channels;
  VT_CHECK(size == expected, source, ": got ", size, " bytes of pixels, expected ", expected, " (", width, "x", height, "x", channels, ")");
  VT_CHECK(data != nullptr, source, ": null pixel data");
  Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.assign(data, data + size);
  return image;
}

Image convert_channels(const Image& image, int channels) {
  VT_CHECK(channels == 1 || channels == 3 || channels == 4, "convert_channels: unsupported target channel count ", channels,
           " (expected 1, 3 or 4)");
  check_image(image, "convert_channels");
  if (image.channels == channels) return image;

  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = channels;
  const size_t n = static_cast<size_t>(image.width) * image.height;
  out.pixels.resize(n * channels);
  const uint8_t* in = image.pixels.data();
  uint8_t* o = out.pixels.data();
  const int ic = image.channels;

  if (channels == 1) {
    // ITU-R 601-2 luma with Pillow's 16-bit fixed-point rounding (rgb2l); alpha is ignored.
    for (size_t i = 0; i < n; ++i, in += ic) {
      o[i] = static_cast<uint8_t>((in[0] * 19595u + in[1] * 38470u + in[2] * 7471u + 0x8000u) >> 16);
    }
    return out;
  }
  for (size_t i = 0; i < n; ++i, in += ic, o += channels) {
    if (ic == 1) {
      o[0] = o[1] = o[2] = in[0];
    } else {
      o[0] = in[0];
      o[1] = in[1];
      o[2] = in[2];
    }
    if (channels == 4) o[3] = 255;  // from 1 or 3 channels: opaque
  }
  return out;
}

std::vector<uint8_t> encode_png(const Image& image) {
  check_image(image, "encode_png");
  const int color_type = image.channels == 1 ? PNG_COLOR_TYPE_GRAY : image.channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGB_ALPHA;
  std::vector<uint8_t> out;
  out.reserve(image.pixels.size() / 2 + 1024);
  PngEncoder e;
  e.out = &out;
  e.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &e, png_encode_on_error, png_on_warning);
  VT_CHECK(e.png != nullptr, "encode_png: cannot create PNG encoder");
  e.info = png_create_info_struct(e.png);
  VT_CHECK(e.info != nullptr, "encode_png: cannot create PNG encoder");
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) rows[y] = const_cast<png_bytep>(image.row(y));
  if (!png_encode_phase(&e, image.width, image.height, color_type, rows.data())) {
    fail("encode_png: ", e.message);
  }
  return out;
}

void write_png(const Image& image, const std::string& path) {
  ErrorScope errors(ErrorCode::Io);
  const std::vector<uint8_t> bytes = encode_png(image);

  static std::atomic<unsigned> counter{0};
  const std::string tmp = str_cat(path, ".tmp-", ::getpid(), "-", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int code = errno;
    fail("cannot write PNG '", path, "': cannot create '", tmp, "': ", errno_text(code));
  }
  auto abandon = [&](const char* step, int code) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("cannot write PNG '", path, "': ", step, ": ", errno_text(code));
  };
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      abandon("write", errno);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) abandon("fsync", errno);
  if (::close(fd) != 0) {
    const int code = errno;
    ::unlink(tmp.c_str());
    fail("cannot write PNG '", path, "': close: ", errno_text(code));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int code = errno;
    ::unlink(tmp.c_str());
    fail("cannot write PNG '", path, "': rename: ", errno_text(code));
  }
  // Make the rename durable (best effort: some filesystems refuse fsync on directories).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace vt
