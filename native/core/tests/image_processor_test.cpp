// HuggingFace image processors: parity with transformers 4.31's pixel_values for the fixtures,
// size rules, center crop, channel handling, preprocessor_config.json parsing and writing.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "data/image_processor.h"
#include "image_test_support.h"
#include "io/safetensors.h"

using nlohmann::json;
using vt_image_test::expect_error;

namespace {

vt::ImageProcessorConfig config_from(const json& j) { return vt::ImageProcessorConfig::from_json(j); }

vt::ImageProcessor fixture_processor(const std::string& fixture) {
  const json j = vt_image_test::read_json(vt_image_test::fixture_path(fixture + "/preprocessor_config.json"));
  return vt::ImageProcessor(config_from(j), 3);
}

vt::Image gradient(int w, int h, int c) {
  vt::Image image;
  image.width = w;
  image.height = h;
  image.channels = c;
  image.pixels.resize(static_cast<size_t>(w) * h * c);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>((i * 7) % 251);
  return image;
}

json vit_json() {
  return json::parse(R"({
    "image_processor_type": "ViTImageProcessor", "do_resize": true,
    "size": {"height": 8, "width": 6}, "resample": 2, "do_rescale": true,
    "rescale_factor": 0.00392156862745098, "do_normalize": true,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parity with the fixtures' processed.<image> tensors (transformers 4.31, PIL 9.4).

TEST(ImageProcessorParity, MatchesTransformersOnFixturePhotos) {
  // Tolerance of the fixtures' README is 1e-4; the arithmetic is the same, so we expect ~0.
  const char* fixtures[] = {"vit-tiny-random",         "resnet-tiny-random", "convnext-tiny-random",
                            "segformer-tiny-random",   "detr-tiny-random",   "table-transformer-tiny-random",
                            "mask2former-tiny-random", "swin-tiny-random"};
  double overall = 0.0;
  for (const char* fixture : fixtures) {
    const vt::TensorMap reference = vt::load_safetensors(vt_image_test::fixture_path(std::string(fixture) + "/reference.safetensors"));
    const vt::ImageProcessor processor = fixture_processor(fixture);
    for (const char* file : {"chelsea.png", "rocket.jpg"}) {
      SCOPED_TRACE(std::string(fixture) + " " + file);
      const auto found = reference.find(std::string("processed.") + file);
      ASSERT_NE(found, reference.end());
      const torch::Tensor want = found->second.to(torch::kFloat32);
      const vt::Image image = vt::read_image_file(vt_image_test::fixture_path(std::string("images/") + file));
      const torch::Tensor got = processor.process(image).unsqueeze(0);
      ASSERT_EQ(got.sizes(), want.sizes());
      const auto [h, w] = processor.output_size(image.height, image.width);
      EXPECT_EQ(h, want.size(2));
      EXPECT_EQ(w, want.size(3));
      const double diff = (got - want).abs().max().item<double>();
      overall = std::max(overall, diff);
      EXPECT_LE(diff, 1e-6) << "max abs diff " << diff;
      EXPECT_LE(diff, 1e-4);
    }
  }
  std::cout << "[ parity ] max abs diff vs transformers' processed tensors: " << overall << "\n";
}

TEST(ImageProcessorParity, BatchStacksSingleResults) {
  const vt::ImageProcessor processor = fixture_processor("vit-tiny-random");
  const vt::Image a = vt::read_image_file(vt_image_test::fixture_path("images/chelsea.png"));
  const vt::Image b = vt::read_image_file(vt_image_test::fixture_path("images/rocket.jpg"));
  const torch::Tensor batch = processor.process_batch({a, b, a});
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(batch[0], processor.process(a)));
  EXPECT_TRUE(torch::equal(batch[1], processor.process(b)));
  EXPECT_TRUE(torch::equal(batch[2], batch[0]));
}

// ---------------------------------------------------------------------------------------------
// Size rules

TEST(ImageProcessorSizes, ConvNextCropPctAndWarp) {
  const vt::ImageProcessor small = fixture_processor("convnext-tiny-random");
  // int(32 / 0.875) = 36 on the short side, int(36 * 451 / 300) = 54, then a 32x32 center crop.
  EXPECT_EQ(small.output_size(300, 451), (std::pair<int, int>(32, 32)));
  const vt::Image image = gradient(451, 300, 3);
  const vt::Image prepared = small.prepare(image);
  const vt::Image resized = vt::resize_image(image, 54, 36, vt::Resample::Bilinear);
  ASSERT_EQ(prepared.width, 32);
  ASSERT_EQ(prepared.height, 32);
  // top = (36 - 32) // 2 = 2, left = (54 - 32) // 2 = 11
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32 * 3; ++x) {
      ASSERT_EQ(prepared.row(y)[x], resized.row(y + 2)[11 * 3 + x]);
    }
  }

  json j = vt_image_test::read_json(vt_image_test::fixture_path("convnext-tiny-random/preprocessor_config.json"));
  j["size"] = {{"shortest_edge", 384}};
  const vt::ImageProcessor large(config_from(j), 3);
  EXPECT_EQ(large.output_size(300, 451), (std::pair<int, int>(384, 384)));  // warped, no crop
  EXPECT_EQ(large.prepare(image).pixels, vt::resize_image(image, 384, 384, vt::Resample::Bilinear).pixels);

  j.erase("crop_pct");
  j["size"] = {{"shortest_edge", 224}};
  const vt::ImageProcessorConfig defaulted = config_from(j);
  ASSERT_TRUE(defaulted.crop_pct.has_value());
  EXPECT_DOUBLE_EQ(*defaulted.crop_pct, 224.0 / 256.0);
  // Portrait: the width is the short side; int(224 / 0.875) = 256, int(256 * 640 / 427) = 383.
  EXPECT_EQ(vt::ImageProcessor(defaulted, 3).output_size(640, 427), (std::pair<int, int>(224, 224)));
}

TEST(ImageProcessorSizes, ShortestEdgeDetrAndMaskFormerRules) {
  json clip = vit_json();
  clip["image_processor_type"] = "CLIPImageProcessor";
  clip["size"] = {{"shortest_edge", 20}};
  const vt::ImageProcessor p(config_from(clip), 3);
  EXPECT_EQ(p.output_size(30, 45), (std::pair<int, int>(20, 30)));
  EXPECT_EQ(p.output_size(45, 31), (std::pair<int, int>(29, 20)));  // int(20 * 45 / 31) = 29
  EXPECT_EQ(p.output_size(20, 20), (std::pair<int, int>(20, 20)));

  // transformers' get_resize_output_image_size with max_size (torchvision's rule).
  clip["size"] = {{"shortest_edge", 20}, {"longest_edge", 25}};
  EXPECT_EQ(vt::ImageProcessor(config_from(clip), 3).output_size(30, 45), (std::pair<int, int>(16, 25)));  // int(25 * 20 / 30) = 16

  const vt::ImageProcessor detr = fixture_processor("detr-tiny-random");
  EXPECT_EQ(detr.output_size(300, 451), (std::pair<int, int>(64, 96)));
  EXPECT_EQ(detr.output_size(427, 640), (std::pair<int, int>(64, 95)));
  // DETR's get_size_with_aspect_ratio: size = round(96 * 30 / 100) = 29 (half to even).
  EXPECT_EQ(detr.output_size(30, 100), (std::pair<int, int>(29, 96)));
  EXPECT_EQ(detr.output_size(100, 30), (std::pair<int, int>(96, 29)));

  const vt::ImageProcessor mask2former = fixture_processor("mask2former-tiny-random");
  EXPECT_EQ(mask2former.config().size_divisor, 32);
  EXPECT_EQ(mask2former.output_size(427, 640), (std::pair<int, int>(64, 96)));  // 95 -> 96
  EXPECT_EQ(mask2former.output_size(30, 100), (std::pair<int, int>(32, 96)));   // (28, 96) -> (32, 96)
}

TEST(ImageProcessorSizes, CenterCropPadsWithZerosLikeTransformers) {
  json j = vit_json();
  j["image_processor_type"] = "DeiTImageProcessor";
  j["size"] = {{"height", 4}, {"width", 5}};
  j["do_center_crop"] = true;
  j["crop_size"] = {{"height", 7}, {"width", 2}};
  j["do_normalize"] = false;
  j["do_rescale"] = false;
  const vt::ImageProcessor p(config_from(j), 1);
  const vt::Image image = gradient(5, 4, 1);
  const torch::Tensor out = p.process(image);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 7, 2}));
  // Height 4 -> 7: top = (4 - 7) // 2 = -2, so rows 0, 1 and 6 are padding. Width 5 -> 2:
  // left = (5 - 2) // 2 = 1.
  for (int y = 0; y < 7; ++y) {
    for (int x = 0; x < 2; ++x) {
      const int sy = y - 2;
      const float want = (sy < 0 || sy >= 4) ? 0.0f : static_cast<float>(image.row(sy)[x + 1]);
      EXPECT_EQ(out[0][y][x].item<float>(), want) << y << "," << x;
    }
  }
  EXPECT_EQ(p.output_size(100, 100), (std::pair<int, int>(7, 2)));
}

// ---------------------------------------------------------------------------------------------
// Arithmetic and channels

TEST(ImageProcessorMath, RescaleInDoubleThenNormalizeInFloat) {
  json j = vit_json();
  j["image_mean"] = {0.485, 0.456, 0.406};
  j["image_std"] = {0.229, 0.224, 0.225};
  j["do_resize"] = false;
  const vt::ImageProcessor p(config_from(j), 3);
  const vt::Image image = gradient(7, 5, 3);
  const torch::Tensor out = p.process(image);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 5, 7}));
  const double means[3] = {0.485, 0.456, 0.406};
  const double stds[3] = {0.229, 0.224, 0.225};
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 5; ++y) {
      for (int x = 0; x < 7; ++x) {
        const uint8_t v = image.row(y)[x * 3 + c];
        // numpy: (uint8 * float) is float64, cast to float32; mean/std cast to float32.
        const float rescaled = static_cast<float>(v * 0.00392156862745098);
        const float want = (rescaled - static_cast<float>(means[c])) / static_cast<float>(stds[c]);
        ASSERT_EQ(out[c][y][x].item<float>(), want);
      }
    }
  }
}

TEST(ImageProcessorMath, ConvertsToTheModelsChannels) {
  json j = vit_json();
  j["image_mean"] = 0.5;  // a single number is broadcast
  j["image_std"] = 0.25;
  const vt::Image rgb = gradient(12, 9, 3);
  const vt::ImageProcessor gray(config_from(j), 1);
  const torch::Tensor out = gray.process(rgb);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 8, 6}));
  const vt::Image l = vt::resize_image(vt::convert_channels(rgb, 1), 6, 8, vt::Resample::Bilinear);
  EXPECT_EQ(out[0][3][2].item<float>(), (static_cast<float>(l.row(3)[2] * (1 / 255.0)) - 0.5f) / 0.25f);

  // RGBA input to an RGB model: alpha dropped before resizing (as .convert("RGB")).
  const vt::Image rgba = gradient(12, 9, 4);
  const vt::ImageProcessor rgb_model(config_from(vit_json()), 3);
  EXPECT_TRUE(torch::equal(rgb_model.process(rgba), rgb_model.process(vt::convert_channels(rgba, 3))));

  // Three means for a one-channel model: rejected, as transformers rejects it.
  expect_error([&] { vt::ImageProcessor(config_from(vit_json()), 1); }, {"image_mean", "3 entries", "1 channel"});
  expect_error([&] { vt::ImageProcessor(config_from(vit_json()), 2); }, {"num_channels"});

  // Classes with preprocessing steps that are not implemented are refused, not approximated.
  json levit = vit_json();
  levit["image_processor_type"] = "LevitImageProcessor";
  expect_error([&] { vt::ImageProcessor(config_from(levit), 3); }, {"LevitImageProcessor", "not supported"});
}

TEST(ImageProcessorMath, BatchOfDifferentSizesIsRejectedNamingTheImages) {
  json j = vit_json();
  j["image_processor_type"] = "CLIPImageProcessor";
  j["size"] = {{"shortest_edge", 10}};
  const vt::ImageProcessor p(config_from(j), 3);
  const std::vector<vt::Image> images = {gradient(20, 20, 3), gradient(20, 20, 3), gradient(30, 20, 3)};
  expect_error([&] { p.process_batch(images); }, {"image 2", "image 0", "3x10x15"});
  expect_error([&] { p.process_batch({}); }, {"empty"});
}

// ---------------------------------------------------------------------------------------------
// preprocessor_config.json

TEST(ImageProcessorConfig, RoundTripsEveryFixtureConfig) {
  const char* configs[] = {"vit-tiny-random",         "resnet-tiny-random",        "convnext-tiny-random",
                           "segformer-tiny-random",   "detr-tiny-random",          "table-transformer-tiny-random",
                           "mask2former-tiny-random", "vit-tiny-random-pt",        "configs/vit-base-patch16-224",
                           "configs/resnet-50",       "configs/convnext-tiny-224", "configs/segformer-b0-512",
                           "configs/detr-resnet-50",  "swin-tiny-random",          "configs/swin-tiny-patch4-window7-224"};
  for (const char* name : configs) {
    SCOPED_TRACE(name);
    const json original = vt_image_test::read_json(vt_image_test::fixture_path(std::string(name) + "/preprocessor_config.json"));
    const vt::ImageProcessorConfig config = config_from(original);
    // What transformers wrote comes back unchanged (every field known or kept as extra).
    EXPECT_EQ(config.to_json(), original) << config.to_json().dump(1);
    EXPECT_EQ(config_from(config.to_json()).to_json(), original);
  }
}

TEST(ImageProcessorConfig, WritesValuesThatDifferFromClassDefaults) {
  // DeiT's do_center_crop defaults to true and Mask2Former's size_divisor to 32 in
  // transformers: explicit false / 0 must survive to_json.
  json deit = vit_json();
  deit["image_processor_type"] = "DeiTImageProcessor";
  deit["do_center_crop"] = false;
  EXPECT_EQ(config_from(deit).to_json()["do_center_crop"], false);
  json m2f = vt_image_test::read_json(vt_image_test::fixture_path("mask2former-tiny-random/preprocessor_config.json"));
  m2f["size_divisor"] = 0;
  EXPECT_EQ(config_from(m2f).to_json()["size_divisor"], 0);
  EXPECT_EQ(vt::ImageProcessor(config_from(m2f), 3).output_size(427, 640), (std::pair<int, int>(64, 95)));
}

TEST(ImageProcessorConfig, ReadsFields) {
  const vt::ImageProcessorConfig vit =
      config_from(vt_image_test::read_json(vt_image_test::fixture_path("vit-tiny-random/preprocessor_config.json")));
  EXPECT_EQ(vit.processor_type, "ViTImageProcessor");
  EXPECT_EQ(vit.size_height, 32);
  EXPECT_EQ(vit.size_width, 32);
  EXPECT_FALSE(vit.shortest_edge.has_value());
  EXPECT_EQ(vit.resample, vt::Resample::Bilinear);
  EXPECT_EQ(vit.rescale_factor, 1.0 / 255.0);
  EXPECT_EQ(vit.image_mean, (std::vector<double>{0.5, 0.5, 0.5}));

  const vt::ImageProcessorConfig detr =
      config_from(vt_image_test::read_json(vt_image_test::fixture_path("detr-tiny-random/preprocessor_config.json")));
  EXPECT_EQ(detr.shortest_edge, 64);
  EXPECT_EQ(detr.longest_edge, 96);
  EXPECT_EQ(detr.extra["format"], "coco_detection");
  EXPECT_EQ(detr.extra["do_pad"], true);
}

TEST(ImageProcessorConfig, LegacyFeatureExtractorSpellings) {
  // An integer size is square for ViT-style processors, the shortest edge for ConvNeXt-style
  // ones (get_size_dict's default_to_square).
  json vit = json::parse(R"({"feature_extractor_type": "ViTFeatureExtractor", "size": 224,
                             "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})");
  const vt::ImageProcessorConfig a = config_from(vit);
  EXPECT_EQ(a.processor_type, "ViTImageProcessor");
  EXPECT_EQ(a.size_height, 224);
  EXPECT_EQ(a.size_width, 224);
  EXPECT_EQ(a.to_json()["size"], (json{{"height", 224}, {"width", 224}}));
  EXPECT_FALSE(a.to_json().contains("feature_extractor_type"));

  json convnext = vit;
  convnext["feature_extractor_type"] = "ConvNextFeatureExtractor";
  const vt::ImageProcessorConfig b = config_from(convnext);
  EXPECT_EQ(b.processor_type, "ConvNextImageProcessor");
  EXPECT_EQ(b.shortest_edge, 224);
  EXPECT_FALSE(b.size_height.has_value());

  json detr = vit;
  detr["feature_extractor_type"] = "DetrFeatureExtractor";
  detr["size"] = 800;
  detr["max_size"] = 1333;
  const vt::ImageProcessorConfig c = config_from(detr);
  EXPECT_EQ(c.shortest_edge, 800);
  EXPECT_EQ(c.longest_edge, 1333);

  json listed = vit;
  listed["size"] = {30, 40};  // (height, width)
  listed["crop_size"] = 24;
  listed["do_center_crop"] = true;
  const vt::ImageProcessorConfig d = config_from(listed);
  EXPECT_EQ(d.size_height, 30);
  EXPECT_EQ(d.size_width, 40);
  EXPECT_EQ(d.crop_height, 24);
  EXPECT_EQ(d.crop_width, 24);
  EXPECT_EQ(d.to_json()["crop_size"], (json{{"height", 24}, {"width", 24}}));
  EXPECT_EQ(d.to_json()["do_center_crop"], true);
}

TEST(ImageProcessorConfig, RejectsBadFieldsNamingThem) {
  auto with = [](const char* key, json value) {
    json j = vit_json();
    j[key] = std::move(value);
    return j;
  };
  const std::string file = "preprocessor_config.json";
  expect_error([&] { config_from(with("image_mean", "0.5")); }, {file, "image_mean must be a list of numbers"});
  expect_error([&] { config_from(with("image_mean", json::array({0.5, "x", 0.5}))); }, {"image_mean must be a list of numbers"});
  expect_error([&] { config_from(with("image_std", json::array())); }, {"image_std"});
  expect_error([&] { config_from(with("image_std", json::array({0.5, 0.0, 0.5}))); }, {"image_std", "0"});
  expect_error([&] { config_from(with("do_resize", "yes")); }, {file, "do_resize must be a boolean"});
  expect_error([&] { config_from(with("do_normalize", 1)); }, {"do_normalize must be a boolean"});
  expect_error([&] { config_from(with("resample", 9)); }, {file, "resample"});
  expect_error([&] { config_from(with("resample", "bilinear")); }, {"resample must be an integer"});
  expect_error([&] { config_from(with("rescale_factor", "1/255")); }, {"rescale_factor must be a number"});
  expect_error([&] { config_from(with("size", json{{"height", 32}})); }, {file, "size must be"});
  expect_error([&] { config_from(with("size", json{{"height", 32}, {"width", -1}})); }, {"size.width must be a positive integer"});
  expect_error([&] { config_from(with("size", json{{"height", 32}, {"depth", 3}})); }, {"size"});
  expect_error([&] { config_from(with("size", 12.5)); }, {"size must be"});
  expect_error([&] { config_from(with("crop_pct", -0.5)); }, {"crop_pct must be a positive number"});
  expect_error([&] { config_from(with("crop_size", "big")); }, {"crop_size"});
  expect_error([&] { config_from(with("do_center_crop", true)); }, {"crop_size is missing"});
  expect_error([&] { config_from(with("image_processor_type", 7)); }, {"image_processor_type must be a string"});
  expect_error([&] { config_from(json::array()); }, {file, "JSON object"});
  json no_size = vit_json();
  no_size.erase("size");
  expect_error([&] { config_from(no_size); }, {"size is missing"});
  json convnext = vit_json();
  convnext["image_processor_type"] = "ConvNextImageProcessor";
  expect_error([&] { config_from(convnext); }, {"ConvNextImageProcessor", "shortest_edge"});
}

TEST(ImageProcessorConfig, DefaultsForMissingFields) {
  json j = json::parse(R"({"image_processor_type": "DeiTImageProcessor", "size": {"height": 4, "width": 4}})");
  const vt::ImageProcessorConfig c = config_from(j);
  EXPECT_TRUE(c.do_resize);
  EXPECT_TRUE(c.do_rescale);
  EXPECT_TRUE(c.do_normalize);
  EXPECT_FALSE(c.do_center_crop);
  EXPECT_EQ(c.resample, vt::Resample::Bicubic);  // DeiT's default
  EXPECT_EQ(config_from(vit_json()).resample, vt::Resample::Bilinear);
  // to_json writes every field, so transformers reads back the same processor.
  const json out = c.to_json();
  for (const char* key : {"image_processor_type", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
                          "image_mean", "image_std"}) {
    EXPECT_TRUE(out.contains(key)) << key;
  }
}
