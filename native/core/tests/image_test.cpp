// Decoding parity with Pillow, error handling, mode conversion and PNG encoding.
//
// Golden data: native/core/tests/data/decode_golden.json, written by
// native/core/tests/data/make_golden.py with Pillow 9.4 (see there): for each image, the
// FNV-1a hash of what the decoder must return, of Image.open(f).convert("RGB") and of
// .convert("L").
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "image_test_support.h"
#include "io/image.h"

using vt_image_test::expect_error;
using vt_image_test::fnv1a64;

namespace {

vt::Image decode_file_bytes(const std::string& path, const std::string& source) {
  const std::vector<uint8_t> bytes = vt_image_test::read_bytes(path);
  return vt::decode_image(bytes.data(), bytes.size(), source);
}

std::vector<uint8_t> cut(const std::vector<uint8_t>& bytes, size_t keep) {
  return std::vector<uint8_t>(bytes.begin(), bytes.begin() + std::min(keep, bytes.size()));
}

}  // namespace

TEST(ImageDecode, MatchesPillowOnEveryGoldenImage) {
  const nlohmann::json golden = vt_image_test::read_json(vt_image_test::test_data_path("decode_golden.json"));
  ASSERT_TRUE(golden.contains("images"));
  ASSERT_GE(golden["images"].size(), 56u);
  for (auto it = golden["images"].begin(); it != golden["images"].end(); ++it) {
    SCOPED_TRACE(it.key());
    const nlohmann::json& want = it.value();
    vt::Image image;
    ASSERT_NO_THROW(image = vt::read_image_file(vt_image_test::source_path(it.key())));
    EXPECT_EQ(image.width, want["width"].get<int>());
    EXPECT_EQ(image.height, want["height"].get<int>());
    EXPECT_EQ(image.channels, want["channels"].get<int>()) << "Pillow mode " << want["pil_mode"];
    EXPECT_EQ(image.pixels.size(), static_cast<size_t>(image.width) * image.height * image.channels);
    EXPECT_EQ(fnv1a64(image.pixels), want["native"].get<std::string>());
    EXPECT_EQ(fnv1a64(vt::convert_channels(image, 3).pixels), want["rgb"].get<std::string>())
        << "differs from Image.open(f).convert('RGB')";
    EXPECT_EQ(fnv1a64(vt::convert_channels(image, 1).pixels), want["l"].get<std::string>()) << "differs from Image.open(f).convert('L')";
    if (want.contains("label_map")) {
      vt::Image labels;
      ASSERT_NO_THROW(labels = vt::read_label_map_file(vt_image_test::source_path(it.key())));
      EXPECT_EQ(labels.channels, 1);
      EXPECT_EQ(labels.width, image.width);
      EXPECT_EQ(fnv1a64(labels.pixels), want["label_map"].get<std::string>()) << "differs from np.array(Image.open(f))";
    }
  }
}

TEST(ImageDecode, FixturePhotosMatchPillowAndBytesEqualFile) {
  // rocket.jpg (baseline JPEG, 4:2:0) and chelsea.png: the processor parity inputs.
  struct Case {
    const char* file;
    int width, height;
    const char* rgb_hash;
  };
  const nlohmann::json golden = vt_image_test::read_json(vt_image_test::test_data_path("decode_golden.json"));
  for (const char* file : {"images/rocket.jpg", "images/chelsea.png"}) {
    SCOPED_TRACE(file);
    const std::string path = vt_image_test::fixture_path(file);
    const vt::Image from_file = vt::read_image_file(path);
    const vt::Image from_bytes = decode_file_bytes(path, "image 0");
    EXPECT_EQ(from_file.pixels, from_bytes.pixels);
    EXPECT_EQ(from_file.channels, 3);
    const nlohmann::json& want = golden["images"][std::string("test/fixtures/") + file];
    EXPECT_EQ(from_file.width, want["width"].get<int>());
    EXPECT_EQ(from_file.height, want["height"].get<int>());
    EXPECT_EQ(fnv1a64(from_file.pixels), want["rgb"].get<std::string>());
  }
}

TEST(ImageDecode, TruncatedJpegIsRejectedNamingTheSource) {
  const std::vector<uint8_t> bytes = vt_image_test::read_bytes(vt_image_test::fixture_path("images/rocket.jpg"));
  ASSERT_GT(bytes.size(), 1000u);
  for (size_t keep : {bytes.size() / 2, bytes.size() - 100, bytes.size() - 2, size_t{200}, size_t{3}}) {
    SCOPED_TRACE(keep);
    const std::vector<uint8_t> part = cut(bytes, keep);
    expect_error([&] { vt::decode_image(part.data(), part.size(), "rocket-half.jpg"); }, {"rocket-half.jpg", "truncated"});
  }
  // A progressive JPEG reads all scans up front: truncation must be caught there too.
  const std::vector<uint8_t> progressive = vt_image_test::read_bytes(vt_image_test::test_data_path("images/jpeg_progressive.jpg"));
  const std::vector<uint8_t> part = cut(progressive, progressive.size() * 2 / 3);
  expect_error([&] { vt::decode_image(part.data(), part.size(), "image 7"); }, {"image 7", "truncated"});
}

TEST(ImageDecode, JpegWithMarkerInsideScanDataIsRejected) {
  std::vector<uint8_t> bytes = vt_image_test::read_bytes(vt_image_test::fixture_path("images/rocket.jpg"));
  // An EOI in the middle of the entropy-coded data: libjpeg would fill the rest with gray.
  const size_t middle = bytes.size() / 2;
  bytes[middle] = 0xFF;
  bytes[middle + 1] = 0xD9;
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "broken.jpg"); }, {"broken.jpg"});
}

TEST(ImageDecode, TruncatedPngIsRejectedButAMissingTrailerIsNot) {
  const std::vector<uint8_t> bytes = vt_image_test::read_bytes(vt_image_test::fixture_path("images/chelsea.png"));
  for (size_t keep : {bytes.size() / 2, size_t{40}, size_t{10}}) {
    SCOPED_TRACE(keep);
    const std::vector<uint8_t> part = cut(bytes, keep);
    expect_error([&] { vt::decode_image(part.data(), part.size(), "chelsea-half.png"); }, {"chelsea-half.png"});
  }
  const std::vector<uint8_t> half = cut(bytes, bytes.size() / 2);
  expect_error([&] { vt::decode_image(half.data(), half.size(), "x.png"); }, {"truncated"});

  // Pillow stops reading once every row is decoded, so a file without its IEND chunk (12
  // bytes), or also without the last IDAT CRC (16), still opens; the pixels are complete.
  const vt::Image full = vt::decode_image(bytes.data(), bytes.size(), "full");
  for (size_t missing : {size_t{12}, size_t{16}}) {
    SCOPED_TRACE(missing);
    const std::vector<uint8_t> part = cut(bytes, bytes.size() - missing);
    vt::Image image;
    ASSERT_NO_THROW(image = vt::decode_image(part.data(), part.size(), "no-iend.png"));
    EXPECT_EQ(image.pixels, full.pixels);
  }
  // The same for an interlaced file, where libpng finishes in pass 7.
  const std::vector<uint8_t> interlaced = vt_image_test::read_bytes(vt_image_test::test_data_path("images/png_rgb8_interlaced.png"));
  const vt::Image interlaced_full = vt::decode_image(interlaced.data(), interlaced.size(), "i");
  const std::vector<uint8_t> no_iend = cut(interlaced, interlaced.size() - 12);
  EXPECT_EQ(vt::decode_image(no_iend.data(), no_iend.size(), "i").pixels, interlaced_full.pixels);
  const std::vector<uint8_t> interlaced_half = cut(interlaced, interlaced.size() / 2);
  expect_error([&] { vt::decode_image(interlaced_half.data(), interlaced_half.size(), "i.png"); }, {"i.png", "truncated"});
}

TEST(ImageDecode, CorruptPngChunkIsRejected) {
  std::vector<uint8_t> bytes = vt_image_test::read_bytes(vt_image_test::test_data_path("images/png_rgb8.png"));
  // Flip a byte inside the first IDAT's data: its CRC no longer matches.
  const std::string text(bytes.begin(), bytes.end());
  const size_t idat = text.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  bytes[idat + 10] ^= 0x55;
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "crc.png"); }, {"crc.png", "PNG"});
}

TEST(ImageDecode, UnknownEmptyAndZeroSizedInputs) {
  const std::vector<uint8_t> garbage = {'B', 'M', '8', '9', 'a', 0, 1, 2, 3, 4, 5};
  expect_error([&] { vt::decode_image(garbage.data(), garbage.size(), "image 3"); }, {"image 3", "not a JPEG, PNG, WebP or GIF"});
  expect_error([&] { vt::decode_image(nullptr, 0, "image 4"); }, {"image 4", "empty"});
  const std::vector<uint8_t> jpeg_start = {0xFF, 0xD8};
  expect_error([&] { vt::decode_image(jpeg_start.data(), jpeg_start.size(), "tiny"); }, {"tiny", "not a JPEG, PNG, WebP or GIF"});
  // A RIFF file that is not WebP (a WAVE), and a WebP whose first chunk is none of VP8, VP8L, VP8X.
  const std::string wave = std::string("RIFF\x24\0\0\0WAVEfmt ", 16) + std::string(28, '\0');
  expect_error([&] { vt::decode_image(reinterpret_cast<const uint8_t*>(wave.data()), wave.size(), "a.wav"); }, {"a.wav", "unrecognised"});
  const std::string alph = std::string("RIFF\x14\0\0\0WEBPALPH", 16) + std::string(12, '\0');
  expect_error([&] { vt::decode_image(reinterpret_cast<const uint8_t*>(alph.data()), alph.size(), "b.webp"); }, {"b.webp", "unrecognised"});

  // A PNG whose IHDR says 0 x 5 (with a valid CRC).
  std::vector<uint8_t> png = vt_image_test::read_bytes(vt_image_test::test_data_path("images/png_gray8.png"));
  ASSERT_GT(png.size(), 33u);
  png[16] = png[17] = png[18] = png[19] = 0;  // width
  const uint32_t crc = [&] {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 12; i < 29; ++i) {  // "IHDR" + 13 data bytes
      c ^= png[i];
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
  }();
  png[29] = crc >> 24;
  png[30] = (crc >> 16) & 0xFF;
  png[31] = (crc >> 8) & 0xFF;
  png[32] = crc & 0xFF;
  expect_error([&] { vt::decode_image(png.data(), png.size(), "zero.png"); }, {"zero.png"});
}

TEST(ImageDecode, PixelLimitGuardsAgainstDecompressionBombs) {
  const std::vector<uint8_t> jpeg = vt_image_test::read_bytes(vt_image_test::fixture_path("images/rocket.jpg"));
  expect_error([&] { vt::decode_image(jpeg.data(), jpeg.size(), "bomb.jpg", 640 * 427 - 1); }, {"bomb.jpg", "273280 pixels", "limit"});
  EXPECT_NO_THROW(vt::decode_image(jpeg.data(), jpeg.size(), "ok.jpg", 640 * 427));
  const std::vector<uint8_t> png = vt_image_test::read_bytes(vt_image_test::fixture_path("images/chelsea.png"));
  expect_error([&] { vt::decode_image(png.data(), png.size(), "bomb.png", 1000); }, {"bomb.png", "limit"});
}

TEST(ImageDecode, FileErrorsNameThePath) {
  const std::filesystem::path dir = vt_image_test::make_temp_dir("image-files");
  const std::string missing = (dir / "missing.png").string();
  expect_error([&] { vt::read_image_file(missing); }, {missing, "No such file or directory"});
  expect_error([&] { vt::read_image_file(dir.string()); }, {dir.string(), "Is a directory"});
  const std::string empty = (dir / "empty.jpg").string();
  std::ofstream(empty).close();
  expect_error([&] { vt::read_image_file(empty); }, {empty, "empty"});
  std::filesystem::remove_all(dir);
}

TEST(ImageFromPixels, ValidatesTheByteCount) {
  const std::vector<uint8_t> bytes(2 * 3 * 3, 7);
  const vt::Image image = vt::image_from_pixels(bytes.data(), bytes.size(), 2, 3, 3, "image 1");
  EXPECT_EQ(image.width, 2);
  EXPECT_EQ(image.height, 3);
  EXPECT_EQ(image.channels, 3);
  EXPECT_EQ(image.pixels, bytes);
  expect_error([&] { vt::image_from_pixels(bytes.data(), bytes.size() - 1, 2, 3, 3, "image 2"); }, {"image 2", "17 bytes", "expected 18"});
  expect_error([&] { vt::image_from_pixels(bytes.data(), bytes.size(), 3, 3, 2, "image 5"); }, {"image 5", "channel"});
  expect_error([&] { vt::image_from_pixels(bytes.data(), 0, 0, 3, 3, "image 6"); }, {"image 6", "dimensions"});
}

TEST(ConvertChannels, FollowsPillowModeConversions) {
  const std::vector<uint8_t> rgb = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 200, 77};
  const vt::Image image = vt::image_from_pixels(rgb.data(), rgb.size(), 4, 1, 3, "rgb");
  // Values from Pillow 9.4: Image.convert("L") of these pixels.
  EXPECT_EQ(vt::convert_channels(image, 1).pixels, (std::vector<uint8_t>{76, 150, 29, 129}));
  EXPECT_EQ(vt::convert_channels(image, 3).pixels, rgb);
  EXPECT_EQ(vt::convert_channels(image, 4).pixels,
            (std::vector<uint8_t>{255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 10, 200, 77, 255}));

  const std::vector<uint8_t> rgba = {10, 200, 77, 0, 1, 2, 3, 128};
  const vt::Image with_alpha = vt::image_from_pixels(rgba.data(), rgba.size(), 2, 1, 4, "rgba");
  // Alpha is dropped, not composited; luma ignores it (Pillow: [129, 2], [(10,200,77), (1,2,3)]).
  EXPECT_EQ(vt::convert_channels(with_alpha, 3).pixels, (std::vector<uint8_t>{10, 200, 77, 1, 2, 3}));
  EXPECT_EQ(vt::convert_channels(with_alpha, 1).pixels, (std::vector<uint8_t>{129, 2}));

  const std::vector<uint8_t> gray = {0, 128, 255};
  const vt::Image l = vt::image_from_pixels(gray.data(), gray.size(), 3, 1, 1, "l");
  EXPECT_EQ(vt::convert_channels(l, 3).pixels, (std::vector<uint8_t>{0, 0, 0, 128, 128, 128, 255, 255, 255}));
  EXPECT_EQ(vt::convert_channels(l, 4).pixels, (std::vector<uint8_t>{0, 0, 0, 255, 128, 128, 128, 255, 255, 255, 255, 255}));
  EXPECT_EQ(vt::convert_channels(l, 1).pixels, gray);
  expect_error([&] { vt::convert_channels(l, 2); }, {"channel"});
}

TEST(PngEncode, RoundTripsEveryChannelCount) {
  const std::filesystem::path dir = vt_image_test::make_temp_dir("png-encode");
  for (int channels : {1, 3, 4}) {
    SCOPED_TRACE(channels);
    vt::Image image;
    image.width = 29;
    image.height = 13;
    image.channels = channels;
    image.pixels.resize(static_cast<size_t>(29) * 13 * channels);
    for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>(i * 37 + i / 7);
    const std::vector<uint8_t> png = vt::encode_png(image);
    const vt::Image decoded = vt::decode_image(png.data(), png.size(), "encoded");
    EXPECT_EQ(decoded.width, image.width);
    EXPECT_EQ(decoded.height, image.height);
    EXPECT_EQ(decoded.channels, channels);
    EXPECT_EQ(decoded.pixels, image.pixels);

    const std::string path = (dir / ("out" + std::to_string(channels) + ".png")).string();
    vt::write_png(image, path);
    EXPECT_EQ(vt::read_image_file(path).pixels, image.pixels);
    EXPECT_EQ(vt_image_test::read_bytes(path), png);
  }
  // Overwriting replaces the file; no temporary file is left behind.
  const std::string path = (dir / "out3.png").string();
  vt::Image small;
  small.width = small.height = 1;
  small.channels = 3;
  small.pixels = {1, 2, 3};
  vt::write_png(small, path);
  EXPECT_EQ(vt::read_image_file(path).pixels, small.pixels);
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 3u);
  std::filesystem::remove_all(dir);
}

TEST(PngEncode, RejectsBadImagesAndUnwritablePaths) {
  vt::Image bad;
  bad.width = 2;
  bad.height = 2;
  bad.channels = 3;
  bad.pixels.resize(11);
  expect_error([&] { vt::encode_png(bad); }, {"encode_png", "11 bytes"});
  bad.pixels.resize(12);
  const std::string path = vt_image_test::make_temp_dir("png-write").string() + "/no/such/dir/x.png";
  expect_error([&] { vt::write_png(bad, path); }, {path, "No such file or directory"});
}

namespace {

// Found by fuzzing: a 90-byte PNG whose text chunk claims 1.18 GB made libpng allocate (and
// zero) that much before failing. Chunks that never change the pixels are skipped unread now.
TEST(ImageDecode, AHugeTextChunkIsSkippedNotAllocated) {
  const std::vector<uint8_t> bytes =
      vt_image_test::read_bytes(std::string(VISIONTORCH_SOURCE_DIR) + "/native/core/fuzz/corpus/image/regression-huge-itxt-chunk.png");
  struct rusage before {};
  ::getrusage(RUSAGE_SELF, &before);
  try {
    vt::decode_image(bytes.data(), bytes.size(), "huge-itxt.png");
  } catch (const vt::Error& error) {
    EXPECT_NE(std::string(error.what()).find("huge-itxt.png"), std::string::npos) << error.what();
  }
  struct rusage after {};
  ::getrusage(RUSAGE_SELF, &after);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 256 * 1024)
      << "peak resident memory grew by " << (after.ru_maxrss - before.ru_maxrss) << " KiB";
}

}  // namespace

namespace {

std::vector<uint8_t> test_image(const char* name) {
  return vt_image_test::read_bytes(vt_image_test::test_data_path(std::string("images/") + name));
}

void put_le16(std::vector<uint8_t>& bytes, size_t at, unsigned value) {
  bytes[at] = value & 0xFF;
  bytes[at + 1] = (value >> 8) & 0xFF;
}

}  // namespace

TEST(ImageDecode, TruncatedWebpIsRejectedNamingTheSourceAndFormat) {
  for (const char* name : {"webp_lossy_rgb.webp", "webp_lossless_rgba.webp", "webp_animated.webp", "webp_lossy_rgba.webp"}) {
    const std::vector<uint8_t> bytes = test_image(name);
    for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{40}, size_t{16}}) {
      SCOPED_TRACE(std::string(name) + " cut to " + std::to_string(keep));
      const std::vector<uint8_t> part = cut(bytes, keep);
      expect_error([&] { vt::decode_image(part.data(), part.size(), "cut.webp"); }, {"cut.webp", "WebP image file is truncated"});
    }
  }
}

TEST(ImageDecode, CorruptWebpIsRejected) {
  // The lossy bitstream's start code (9d 01 2a) damaged.
  std::vector<uint8_t> lossy = test_image("webp_lossy_rgb.webp");
  const std::string text(lossy.begin(), lossy.end());
  const size_t start_code = text.find("\x9d\x01\x2a");
  ASSERT_NE(start_code, std::string::npos);
  lossy[start_code + 1] = 0x77;
  expect_error([&] { vt::decode_image(lossy.data(), lossy.size(), "bad.webp"); }, {"bad.webp", "WebP image is corrupt"});
  // Entropy-coded data overwritten, the container intact.
  std::vector<uint8_t> lossless = test_image("webp_lossless_rgb.webp");
  for (size_t i = 30; i < lossless.size(); ++i) lossless[i] = 0xFF;
  expect_error([&] { vt::decode_image(lossless.data(), lossless.size(), "noise.webp"); }, {"noise.webp", "WebP image is corrupt"});
}

TEST(ImageDecode, WebpOverThePixelLimitIsRejectedBeforeDecoding) {
  const std::vector<uint8_t> bytes = test_image("webp_lossless_rgb.webp");
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "bomb.webp", 37 * 23 - 1); },
               {"bomb.webp", "WebP", "851 pixels", "limit"});
  EXPECT_NO_THROW(vt::decode_image(bytes.data(), bytes.size(), "ok.webp", 37 * 23));
  // A 30-byte lossless WebP whose header claims 16384 x 16384: refused from the header alone.
  std::vector<uint8_t> huge = {'R', 'I', 'F', 'F', 22, 0,    0,    0,    'W',  'E',  'B',  'P', 'V', 'P', '8',
                               'L', 10,  0,   0,   0,  0x2f, 0xff, 0xff, 0xff, 0x0f, 0x00, 0,   0,   0,   0};
  expect_error([&] { vt::decode_image(huge.data(), huge.size(), "huge.webp"); }, {"huge.webp", "WebP image is 16384x16384", "limit"});
}

TEST(ImageDecode, TruncatedGifIsRejectedButLaterFramesAreNotRead) {
  const std::vector<uint8_t> bytes = test_image("gif_interlaced.gif");
  for (size_t keep : {bytes.size() - 3, bytes.size() / 2, size_t{800}, size_t{13}, size_t{8}}) {
    SCOPED_TRACE(keep);
    const std::vector<uint8_t> part = cut(bytes, keep);
    expect_error([&] { vt::decode_image(part.data(), part.size(), "cut.gif"); }, {"cut.gif", "GIF image file is truncated"});
  }
  // Without its trailer the first frame is complete.
  const vt::Image full = vt::decode_image(bytes.data(), bytes.size(), "full.gif");
  const std::vector<uint8_t> no_trailer = cut(bytes, bytes.size() - 1);
  EXPECT_EQ(vt::decode_image(no_trailer.data(), no_trailer.size(), "x.gif").pixels, full.pixels);
  // An animation cut inside its second frame still gives its first.
  const std::vector<uint8_t> animated = test_image("gif_animated_offset.gif");
  const vt::Image first = vt::decode_image(animated.data(), animated.size(), "anim.gif");
  const std::vector<uint8_t> cut_animation = cut(animated, animated.size() - 100);
  EXPECT_EQ(vt::decode_image(cut_animation.data(), cut_animation.size(), "anim.gif").pixels, first.pixels);
}

TEST(ImageDecode, CorruptGifIsRejected) {
  // The image separator (',' after the 13-byte header and 16-entry table) replaced.
  std::vector<uint8_t> bytes = test_image("gif_interlaced.gif");
  ASSERT_EQ(bytes[13 + 48], ',');
  bytes[13 + 48] = 'x';
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "bad.gif"); }, {"bad.gif", "GIF image is corrupt"});
  // An LZW code size over 8 bits.
  bytes = test_image("gif_interlaced.gif");
  bytes[13 + 48 + 10] = 12;
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "lzw.gif"); }, {"lzw.gif", "GIF"});
  // A file with no frame at all.
  std::vector<uint8_t> empty = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0, 0, 0, ';'};
  expect_error([&] { vt::decode_image(empty.data(), empty.size(), "empty.gif"); }, {"empty.gif", "GIF", "no image"});
  // A first frame of zero width.
  bytes = test_image("gif_offset_frame.gif");
  ASSERT_EQ(bytes[13 + 48], ',');
  put_le16(bytes, 13 + 48 + 5, 0);
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "zero.gif"); }, {"zero.gif", "GIF"});
  // The old test's garbage: a GIF signature and too little else.
  const std::vector<uint8_t> garbage = {'G', 'I', 'F', '8', '9', 'a', 0, 1, 2, 3, 4, 5};
  expect_error([&] { vt::decode_image(garbage.data(), garbage.size(), "image 3"); }, {"image 3", "GIF", "truncated"});
}

TEST(ImageDecode, GifOverThePixelLimitIsRejectedBeforeAllocating) {
  std::vector<uint8_t> bytes = test_image("gif_offset_frame.gif");
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "bomb.gif", 37 * 23 - 1); }, {"bomb.gif", "GIF", "851 pixels", "limit"});
  // A logical screen of 65535 x 65535 around a small frame.
  put_le16(bytes, 6, 65535);
  put_le16(bytes, 8, 65535);
  expect_error([&] { vt::decode_image(bytes.data(), bytes.size(), "screen.gif"); }, {"screen.gif", "GIF image is 65535x65535", "limit"});
  // A frame placed far outside a small screen grows the canvas just as much.
  bytes = test_image("gif_offset_frame.gif");
  put_le16(bytes, 13 + 48 + 1, 60000);
  put_le16(bytes, 13 + 48 + 3, 60000);
  expect_error([&] { vt::decode_label_map(bytes.data(), bytes.size(), "offset.gif"); },
               {"offset.gif", "GIF image is 60020x60011", "limit"});
}

TEST(ImageDecode, GifAndWebpLabelMaps) {
  // A GIF gives its palette indices; a WebP is read through label_map_channel.
  const std::vector<uint8_t> gif = test_image("gif_transparency.gif");
  const vt::Image labels = vt::decode_label_map(gif.data(), gif.size(), "mask.gif");
  EXPECT_EQ(labels.channels, 1);
  EXPECT_EQ(labels.pixels[0], 5) << "outside the frame: the transparency index";
  const std::vector<uint8_t> webp = test_image("webp_lossless_rgb.webp");
  expect_error([&] { vt::decode_label_map(webp.data(), webp.size(), "mask.webp"); }, {"mask.webp", "different colour channels"});
}
