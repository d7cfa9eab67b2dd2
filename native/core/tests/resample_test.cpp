// Pillow parity of resize_image for every filter, 1/3/4 channels, up- and downsampling (odd
// factors, 1-pixel results, non-square, one axis unchanged).
//
// Golden data: native/core/tests/data/resize_golden.json, written by
// native/core/tests/data/make_golden.py with Pillow 9.4: for each case, the FNV-1a hash of
// Image.frombytes(mode, (w, h), make_pixels(...)).resize((out_w, out_h), resample).tobytes().
// make_pixels is reimplemented below, byte for byte.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "data/resample.h"
#include "image_test_support.h"

using vt_image_test::expect_error;

namespace {

struct Lcg {
  uint64_t state;
  uint8_t byte() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint8_t>(state >> 56);
  }
};

vt::Image make_pixels(int w, int h, int c, int pattern, uint64_t seed) {
  Lcg rng{seed};
  vt::Image image;
  image.width = w;
  image.height = h;
  image.channels = c;
  image.pixels.reserve(static_cast<size_t>(w) * h * c);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int b = 0; b < c; ++b) {
        if (pattern == 0 || (pattern == 1 && c == 4 && b == 3)) {
          image.pixels.push_back(rng.byte());
        } else if (pattern == 1) {
          image.pixels.push_back((((x >> 1) + y / 3 + b) & 1) ? 255 : 0);
        } else {
          image.pixels.push_back(static_cast<uint8_t>((x * 7 + y * 5 + b * 60 + (rng.byte() & 15)) & 255));
        }
      }
    }
  }
  return image;
}

}  // namespace

TEST(Resample, MatchesPillowOnEveryGoldenCase) {
  const nlohmann::json golden = vt_image_test::read_json(vt_image_test::test_data_path("resize_golden.json"));
  ASSERT_TRUE(golden.contains("cases"));
  const nlohmann::json& cases = golden["cases"];
  ASSERT_GE(cases.size(), 500u);
  int failures = 0;
  std::vector<int> failures_by_filter(6, 0);
  for (const nlohmann::json& row : cases) {
    const int w = row[0], h = row[1], c = row[2], pattern = row[3];
    const uint64_t seed = row[4].get<uint64_t>();
    const int filter = row[5], ow = row[6], oh = row[7];
    const std::string want = row[8];
    const vt::Image input = make_pixels(w, h, c, pattern, seed);
    const vt::Image out = vt::resize_image(input, ow, oh, vt::resample_from_code(filter));
    ASSERT_EQ(out.width, ow);
    ASSERT_EQ(out.height, oh);
    ASSERT_EQ(out.channels, c);
    if (vt_image_test::fnv1a64(out.pixels) != want) {
      ++failures;
      ++failures_by_filter[filter];
      if (failures <= 10) {
        ADD_FAILURE() << "resize " << w << "x" << h << "x" << c << " (pattern " << pattern << ") -> " << ow << "x" << oh << " with filter "
                      << filter << " differs from Pillow";
      }
    }
  }
  EXPECT_EQ(failures, 0) << "by filter (nearest, lanczos, bilinear, bicubic, box, hamming): " << failures_by_filter[0] << " "
                         << failures_by_filter[1] << " " << failures_by_filter[2] << " " << failures_by_filter[3] << " "
                         << failures_by_filter[4] << " " << failures_by_filter[5];
}

TEST(Resample, MatchesPillowOnFixturePhotos) {
  // The processors' inputs at realistic sizes: decoded, converted to L / RGB / RGBA (with
  // alpha = (3x + y) % 256), resized to square, odd, upscaled and aspect-keeping sizes.
  const nlohmann::json golden = vt_image_test::read_json(vt_image_test::test_data_path("resize_golden.json"));
  ASSERT_TRUE(golden.contains("photo_cases"));
  ASSERT_GE(golden["photo_cases"].size(), 100u);
  std::map<std::pair<std::string, int>, vt::Image> inputs;
  int failures = 0;
  for (const nlohmann::json& row : golden["photo_cases"]) {
    const std::string file = row[0];
    const int c = row[1], filter = row[2], ow = row[3], oh = row[4];
    auto key = std::make_pair(file, c);
    if (!inputs.count(key)) {
      vt::Image image = vt::convert_channels(vt::read_image_file(vt_image_test::source_path(file)), c);
      if (c == 4) {
        for (int y = 0; y < image.height; ++y) {
          for (int x = 0; x < image.width; ++x) image.row(y)[x * 4 + 3] = static_cast<uint8_t>((x * 3 + y) % 256);
        }
      }
      inputs[key] = std::move(image);
    }
    const vt::Image out = vt::resize_image(inputs[key], ow, oh, vt::resample_from_code(filter));
    if (vt_image_test::fnv1a64(out.pixels) != row[5].get<std::string>()) {
      if (++failures <= 10) {
        ADD_FAILURE() << file << " (" << c << " channels) -> " << ow << "x" << oh << " with filter " << filter << " differs from Pillow";
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(Resample, SameSizeIsAnUntouchedCopy) {
  // Image.resize returns a copy for an unchanged size: no RGBa premultiplication round trip.
  const vt::Image rgba = make_pixels(9, 7, 4, 0, 99);
  for (int code = 0; code <= 5; ++code) {
    EXPECT_EQ(vt::resize_image(rgba, 9, 7, vt::resample_from_code(code)).pixels, rgba.pixels);
  }
}

TEST(Resample, KnownValues) {
  // Image.frombytes("L", (2, 1), bytes([0, 100])).resize(...) in Pillow 9.4.
  const std::vector<uint8_t> px = {0, 100};
  const vt::Image image = vt::image_from_pixels(px.data(), px.size(), 2, 1, 1, "t");
  EXPECT_EQ(vt::resize_image(image, 4, 1, vt::Resample::Nearest).pixels, (std::vector<uint8_t>{0, 0, 100, 100}));
  EXPECT_EQ(vt::resize_image(image, 4, 1, vt::Resample::Bilinear).pixels, (std::vector<uint8_t>{0, 25, 75, 100}));
  EXPECT_EQ(vt::resize_image(image, 1, 1, vt::Resample::Box).pixels, (std::vector<uint8_t>{50}));
}

TEST(Resample, CodesAndArgumentChecks) {
  EXPECT_EQ(vt::resample_from_code(0), vt::Resample::Nearest);
  EXPECT_EQ(vt::resample_from_code(1), vt::Resample::Lanczos);
  EXPECT_EQ(vt::resample_from_code(2), vt::Resample::Bilinear);
  EXPECT_EQ(vt::resample_from_code(3), vt::Resample::Bicubic);
  EXPECT_EQ(vt::resample_from_code(4), vt::Resample::Box);
  EXPECT_EQ(vt::resample_from_code(5), vt::Resample::Hamming);
  expect_error([] { vt::resample_from_code(6); }, {"resample", "6"});
  expect_error([] { vt::resample_from_code(-1); }, {"resample"});

  const vt::Image image = make_pixels(4, 4, 3, 0, 1);
  expect_error([&] { vt::resize_image(image, 0, 4, vt::Resample::Bilinear); }, {"positive"});
  vt::Image broken = image;
  broken.pixels.pop_back();
  expect_error([&] { vt::resize_image(broken, 2, 2, vt::Resample::Bilinear); }, {"bytes"});
  vt::Image two = image;
  two.channels = 2;
  expect_error([&] { vt::resize_image(two, 2, 2, vt::Resample::Bilinear); }, {"channel"});
}
