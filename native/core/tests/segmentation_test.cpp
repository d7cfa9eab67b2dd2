// Semantic segmentation data: post-processing against transformers' reference maps, the label-map
// path (reduce_labels, NEAREST resize equal to PIL's), palette masks read as indices, mean IoU on
// a case worked out by hand, image/mask datasets (folders, manifests, split) and batches with and
// without augmentation.
#include <gtest/gtest.h>
#include <png.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/json_config.h"
#include "data/augment.h"
#include "data/image_processor.h"
#include "data/random.h"
#include "data/resample.h"
#include "data/segmentation.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using vt_test::expect_error;
using vt_test::fixture;
using vt_test::TempDir;

namespace {

vt::ImageProcessor segformer_processor() {
  return vt::ImageProcessor(
      vt::ImageProcessorConfig::from_json(vt::read_json_file(fixture("segformer-tiny-random/preprocessor_config.json"))), 3);
}

// A SegFormer processor to size x size with NEAREST and no rescale/normalize: pixel_values hold
// the uint8 pixel values, so image and label can be compared directly.
vt::ImageProcessor raw_nearest_processor(int size) {
  return vt::ImageProcessor(vt::ImageProcessorConfig::from_json({{"image_processor_type", "SegformerImageProcessor"},
                                                                 {"size", {{"height", size}, {"width", size}}},
                                                                 {"resample", 0},
                                                                 {"do_rescale", false},
                                                                 {"do_normalize", false}}),
                            3);
}

vt::Image gray(int width, int height, const std::function<uint8_t(int, int)>& value, int channels = 1) {
  vt::Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.resize(static_cast<size_t>(width) * height * channels);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) image.row(y)[x * channels + c] = value(x, y);
    }
  }
  return image;
}

torch::Tensor as_tensor(const vt::Image& image) {
  return torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, image.channels}, torch::kUInt8).clone();
}

// Writes a PNG from rows already packed at `bit_depth` (libpng directly, for the kinds
// vt::write_png does not write: palettes, 1-bit and 16-bit gray).
void write_raw_png(const std::string& path, int width, int height, int bit_depth, int color_type,
                   const std::vector<std::vector<uint8_t>>& rows, const std::vector<png_color>& palette = {}) {
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    FAIL() << "libpng could not write " << path;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, width, height, bit_depth, color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  png_write_info(png, info);
  for (const std::vector<uint8_t>& row : rows) png_write_row(png, row.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(file);
}

// ---------------------------------------------------------------------------------------------
// Post-processing

TEST(SegmentationPostProcess, MatchesTransformersReference) {
  const auto reference = vt::load_safetensors(fixture("segformer-tiny-random/reference.safetensors"));
  const torch::Tensor logits = reference.at("logits");
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 4, 16, 16}));
  // The target sizes of reference.json's postprocessing call.
  const std::pair<int, int> sizes[2] = {{60, 90}, {43, 64}};
  for (int i = 0; i < 2; ++i) {
    const torch::Tensor expected = reference.at("post." + std::to_string(i) + ".segmentation");
    const torch::Tensor got = vt::post_process_semantic_segmentation(logits[i], sizes[i]);
    EXPECT_EQ(got.scalar_type(), torch::kInt64);
    ASSERT_EQ(got.sizes(), expected.sizes()) << "image " << i;
    EXPECT_TRUE(torch::equal(got, expected)) << "image " << i << ": " << got.ne(expected).sum().item<int64_t>() << " pixels differ";

    const torch::Tensor expected_nosize = reference.at("post_nosize." + std::to_string(i) + ".segmentation");
    const torch::Tensor got_nosize = vt::post_process_semantic_segmentation(logits[i], std::nullopt);
    ASSERT_EQ(got_nosize.sizes(), (std::vector<int64_t>{16, 16}));
    EXPECT_TRUE(torch::equal(got_nosize, expected_nosize)) << "image " << i;
  }
}

TEST(SegmentationPostProcess, RejectsBadInput) {
  expect_error([] { vt::post_process_semantic_segmentation(torch::zeros({2, 4, 8, 8}), std::nullopt); }, {"[num_labels, height, width]"});
  expect_error([] { vt::post_process_semantic_segmentation(torch::zeros({4, 8, 8}, torch::kInt64), std::nullopt); }, {"floating point"});
  expect_error([] { vt::post_process_semantic_segmentation(torch::zeros({4, 8, 8}), std::make_pair(0, 5)); }, {"target size (0, 5)"});
}

// ---------------------------------------------------------------------------------------------
// Label maps

// Golden from Debian's Python 3 with Pillow 9.4 (what SegformerImageProcessor's NEAREST resize
// runs on), for the 640x480 COCO mask:
//   a = np.array(Image.open("000000039769_mask.png").resize((64, 64), Image.Resampling.NEAREST))
//   zlib.crc32(a.tobytes()), np.unique(a, return_counts=True), a[32].tolist()
// and for reduce_labels the same after a[a == 0] = 255; a = a - 1; a[a == 254] = 255 on the
// full-size uint8 array.
TEST(SegmentationLabelMap, CocoMaskNearestResizeMatchesPillow) {
  const vt::ImageProcessor processor = segformer_processor();
  const std::string path = fixture("coco-sample/000000039769_mask.png");
  const vt::Image mask = vt::read_label_map_file(path);
  ASSERT_EQ(mask.channels, 1);
  ASSERT_EQ(mask.width, 640);
  ASSERT_EQ(mask.height, 480);

  const torch::Tensor labels = vt::preprocess_label_map(mask, processor, false, path);
  EXPECT_EQ(labels.scalar_type(), torch::kInt64);
  ASSERT_EQ(labels.sizes(), (std::vector<int64_t>{64, 64}));
  const torch::Tensor bytes = labels.to(torch::kUInt8).contiguous();
  EXPECT_EQ(crc32(0, bytes.data_ptr<uint8_t>(), 64 * 64), 1792941069u);
  const std::map<int64_t, int64_t> counts = {{0, 36}, {17, 1523}, {63, 2329}, {65, 125}, {75, 83}};
  for (const auto& [value, count] : counts) EXPECT_EQ(labels.eq(value).sum().item<int64_t>(), count) << value;
  const std::vector<int64_t> row32 = {63, 63, 63, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 63, 63, 63, 63, 63,
                                      63, 63, 63, 63, 63, 63, 63, 17, 63, 63, 63, 63, 63, 65, 17, 17, 17, 17, 17, 17, 17, 17,
                                      17, 17, 17, 17, 17, 17, 17, 17, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};
  EXPECT_TRUE(torch::equal(labels[32], torch::tensor(row32, torch::kInt64)));

  const torch::Tensor reduced = vt::preprocess_label_map(mask, processor, true, path);
  const torch::Tensor reduced_bytes = reduced.to(torch::kUInt8).contiguous();
  EXPECT_EQ(crc32(0, reduced_bytes.data_ptr<uint8_t>(), 64 * 64), 3616637775u);
  EXPECT_EQ(reduced.eq(255).sum().item<int64_t>(), 36);   // the background
  EXPECT_EQ(reduced.eq(16).sum().item<int64_t>(), 1523);  // cats, 17 - 1
}

TEST(SegmentationLabelMap, ReduceLabels) {
  // No resize: labels keep their values and size.
  const vt::ImageProcessor keep(
      vt::ImageProcessorConfig::from_json({{"image_processor_type", "SegformerImageProcessor"}, {"do_resize", false}}), 3);
  const std::vector<uint8_t> values = {0, 1, 2, 100, 254, 255};
  const vt::Image mask = gray(6, 1, [&](int x, int) { return values[x]; });
  EXPECT_TRUE(torch::equal(vt::preprocess_label_map(mask, keep, true, "hand-made"),
                           torch::tensor(std::vector<int64_t>{255, 0, 1, 99, 253, 255}).reshape({1, 6})));
  EXPECT_TRUE(torch::equal(vt::preprocess_label_map(mask, keep, false, "hand-made"),
                           torch::tensor(std::vector<int64_t>{0, 1, 2, 100, 254, 255}).reshape({1, 6})));
}

TEST(SegmentationLabelMap, ChannelsOfAMask) {
  const vt::ImageProcessor keep(
      vt::ImageProcessorConfig::from_json({{"image_processor_type", "SegformerImageProcessor"}, {"do_resize", false}}), 3);
  // RGB (and RGBA, whatever the alpha) with equal channels is one channel.
  const vt::Image rgb = gray(
      3, 2, [](int x, int y) { return static_cast<uint8_t>(x + 3 * y); }, 3);
  EXPECT_TRUE(torch::equal(vt::preprocess_label_map(rgb, keep, false, "rgb"), torch::arange(6, torch::kInt64).reshape({2, 3})));
  vt::Image rgba = gray(
      3, 2, [](int x, int y) { return static_cast<uint8_t>(x + 3 * y); }, 4);
  for (size_t i = 3; i < rgba.pixels.size(); i += 4) rgba.pixels[i] = 200;
  EXPECT_TRUE(torch::equal(vt::preprocess_label_map(rgba, keep, false, "rgba"), torch::arange(6, torch::kInt64).reshape({2, 3})));
  vt::Image colour = rgb;
  colour.row(1)[2 * 3 + 1] = 77;  // pixel (x 2, y 1): green differs
  expect_error([&] { vt::preprocess_label_map(colour, keep, false, "masks/colour.png"); },
               {"masks/colour.png", "(x 2, y 1)", "one channel"});
}

// np.array(PIL.Image.open(f)) of a palette PNG holds the indices, not the colours; 1-bit gray
// gives 0/1 and 16-bit gray its values (checked with Pillow 9.4 on files of these kinds).
TEST(SegmentationLabelMap, PaletteAndOtherPngKinds) {
  TempDir dir;
  const std::vector<png_color> palette = {{10, 20, 30}, {200, 10, 10}, {0, 255, 0}, {1, 2, 3}};
  // 8-bit palette: one index a byte.
  write_raw_png(dir.file("p8.png"), 3, 2, 8, PNG_COLOR_TYPE_PALETTE, {{0, 1, 2}, {3, 2, 1}}, palette);
  // 2-bit palette: indices 0 1 2 / 3 2 1 packed four a byte, most significant first.
  write_raw_png(dir.file("p2.png"), 3, 2, 2, PNG_COLOR_TYPE_PALETTE, {{0x18}, {0xE4}}, palette);
  const torch::Tensor indices = torch::tensor(std::vector<int64_t>{0, 1, 2, 3, 2, 1}, torch::kInt64).reshape({2, 3});
  for (const char* name : {"p8.png", "p2.png"}) {
    const vt::Image mask = vt::read_label_map_file(dir.file(name));
    ASSERT_EQ(mask.channels, 1) << name;
    EXPECT_TRUE(torch::equal(as_tensor(mask).reshape({2, 3}).to(torch::kInt64), indices)) << name;
    // The image decoder gives the colours, as PIL's convert("RGB") does.
    const vt::Image image = vt::read_image_file(dir.file(name));
    ASSERT_EQ(image.channels, 3) << name;
    EXPECT_EQ(image.row(0)[3], 200) << name;
  }

  write_raw_png(dir.file("g1.png"), 4, 1, 1, PNG_COLOR_TYPE_GRAY, {{0xA0}});  // 1 0 1 0
  EXPECT_EQ(vt::read_label_map_file(dir.file("g1.png")).pixels, (std::vector<uint8_t>{1, 0, 1, 0}));

  write_raw_png(dir.file("g16.png"), 2, 1, 16, PNG_COLOR_TYPE_GRAY, {{0x00, 0x05, 0x00, 0xFF}});
  EXPECT_EQ(vt::read_label_map_file(dir.file("g16.png")).pixels, (std::vector<uint8_t>{5, 255}));
  write_raw_png(dir.file("g16big.png"), 2, 1, 16, PNG_COLOR_TYPE_GRAY, {{0x00, 0x05, 0x01, 0x2C}});
  expect_error([&] { vt::read_label_map_file(dir.file("g16big.png")); }, {"g16big.png", "300", "above 255"});

  write_raw_png(dir.file("rgb.png"), 2, 1, 8, PNG_COLOR_TYPE_RGB, {{1, 1, 1, 9, 8, 9}});
  expect_error([&] { vt::read_label_map_file(dir.file("rgb.png")); }, {"rgb.png", "(x 1, y 0)"});
}

// ---------------------------------------------------------------------------------------------
// Mean IoU

TEST(SegmentationMeanIoU, HandWorkedExample) {
  // 4 classes, class 3 never appears; 255 is ignored. Two 2x3 images:
  //   labels A  0 0 1    pred A  0 1 1      labels B  0   0 0    pred B  0 0 2
  //             1 X 2            1 0 0                X   1 1            1 1 2     (X = 255)
  // Counted pixels (label, pred): A (0,0) (0,1) (1,1) (1,1) (2,0); B (0,0) (0,0) (0,2) (1,1) (1,2).
  //   class 0: label 5, pred 4 (A: x0,y0 and x2,y1; B: x0,x1 of y0), intersect 3 -> union 6
  //            IoU 3/6 = 0.5, accuracy 3/5 = 0.6
  //   class 1: label 4, pred 4 (A: 3; B: 1, the prediction under B's X is not counted),
  //            intersect 3 -> union 5, IoU 0.6, accuracy 0.75
  //   class 2: label 1, pred 2, intersect 0 -> union 3, IoU 0, accuracy 0
  //   class 3: union 0 and label 0: IoU and accuracy NaN, left out of the means
  // mean_iou = (0.5 + 0.6 + 0) / 3, mean_accuracy = (0.6 + 0.75 + 0) / 3,
  // overall_accuracy = (3 + 3 + 0) / (5 + 4 + 1) = 0.6.
  const torch::Tensor labels_a = torch::tensor(std::vector<int64_t>{0, 0, 1, 1, 255, 2}).reshape({2, 3});
  const torch::Tensor pred_a = torch::tensor(std::vector<int64_t>{0, 1, 1, 1, 0, 0}).reshape({2, 3});
  const torch::Tensor labels_b = torch::tensor(std::vector<int64_t>{0, 0, 0, 255, 1, 1}).reshape({2, 3});
  const torch::Tensor pred_b = torch::tensor(std::vector<int64_t>{0, 0, 2, 1, 1, 2}).reshape({2, 3});
  const std::vector<std::string> names = {"bg", "cat", "rocket", "sky"};

  auto check = [&](const std::map<std::string, double>& m) {
    EXPECT_EQ(m.at("iou_bg"), 0.5);
    EXPECT_EQ(m.at("iou_cat"), 0.6);
    EXPECT_EQ(m.at("iou_rocket"), 0.0);
    EXPECT_TRUE(std::isnan(m.at("iou_sky")));
    EXPECT_EQ(m.at("accuracy_bg"), 0.6);
    EXPECT_EQ(m.at("accuracy_cat"), 0.75);
    EXPECT_EQ(m.at("accuracy_rocket"), 0.0);
    EXPECT_TRUE(std::isnan(m.at("accuracy_sky")));
    EXPECT_DOUBLE_EQ(m.at("mean_iou"), (0.5 + 0.6 + 0.0) / 3);
    EXPECT_DOUBLE_EQ(m.at("mean_accuracy"), (0.6 + 0.75 + 0.0) / 3);
    EXPECT_EQ(m.at("overall_accuracy"), 0.6);
    EXPECT_EQ(m.size(), 3u + 2 * names.size());
  };
  // One image at a time, or both as a batch (int32 labels too): the same totals.
  vt::MeanIoU one_by_one(4);
  one_by_one.add(pred_a, labels_a);
  one_by_one.add(pred_b.to(torch::kInt32), labels_b.to(torch::kUInt8));
  check(one_by_one.compute(names));
  vt::MeanIoU batched(4);
  batched.add(torch::stack({pred_a, pred_b}), torch::stack({labels_a, labels_b}).to(torch::kInt32));
  check(batched.compute(names));

  // A class only predicted, never labelled: IoU 0, accuracy NaN.
  vt::MeanIoU predicted_only(2);
  predicted_only.add(torch::tensor(std::vector<int64_t>{0, 1}).reshape({1, 2}), torch::tensor(std::vector<int64_t>{0, 0}).reshape({1, 2}));
  const auto m = predicted_only.compute({});
  EXPECT_EQ(m.at("iou_1"), 0.0);
  EXPECT_TRUE(std::isnan(m.at("accuracy_1")));
  EXPECT_EQ(m.at("mean_accuracy"), 0.5);
  EXPECT_EQ(m.at("mean_iou"), 0.25);  // (1/2 + 0) / 2
}

TEST(SegmentationMeanIoU, Errors) {
  vt::MeanIoU metric(3);
  const torch::Tensor ok = torch::zeros({2, 2}, torch::kInt64);
  expect_error(
      [&] {
        metric.add(ok, torch::tensor(std::vector<int64_t>{0, 7, 255, 1}).reshape({2, 2}));
      },
      {"label value 7", "[0, 3)", "ignore index 255"});
  expect_error([&] { metric.add(torch::tensor(std::vector<int64_t>{0, 5, 1, 1}).reshape({2, 2}), ok); }, {"predicted class 5"});
  expect_error([&] { metric.add(ok, torch::zeros({2, 3}, torch::kInt64)); }, {"differ in shape"});
  expect_error([&] { metric.add(ok.to(torch::kFloat32), ok); }, {"integer tensors"});
  expect_error([&] { metric.compute({"a", "b"}); }, {"2 class names for 3 labels"});
  // A custom ignore index.
  vt::MeanIoU ignore_minus(2, -100);
  ignore_minus.add(torch::tensor(std::vector<int64_t>{1, 1}).reshape({1, 2}), torch::tensor(std::vector<int64_t>{-100, 1}).reshape({1, 2}));
  EXPECT_EQ(ignore_minus.compute({}).at("overall_accuracy"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Datasets

// A small image whose every pixel encodes its sample number (red) and position (green, blue).
vt::Image sample_image(int id, int width = 8, int height = 6) {
  vt::Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = image.row(y) + x * 3;
      p[0] = static_cast<uint8_t>(id);
      p[1] = static_cast<uint8_t>(x * 20);
      p[2] = static_cast<uint8_t>(y * 30);
    }
  }
  return image;
}

void write_pair(const TempDir& dir, const std::string& stem, int id) {
  vt::write_png(sample_image(id), dir.file("images/" + stem + ".png"));
  vt::write_png(gray(8, 6, [id](int x, int) { return static_cast<uint8_t>((id + x) % 4); }), dir.file("masks/" + stem + ".png"));
}

TEST(SegmentationDataset, PairsFoldersByStem) {
  TempDir dir;
  fs::create_directories(dir.path() / "images");
  fs::create_directories(dir.path() / "masks");
  write_pair(dir, "b", 2);
  write_pair(dir, "a", 1);
  vt::write_png(gray(8, 6, [](int, int) { return 0; }), dir.file("masks/unused.png"));  // no image: ignored
  vt_test::write_bytes(dir.file("images/notes.txt"), "not an image");
  vt::write_png(sample_image(9), dir.file("images/.hidden.png"));

  vt::SegmentationSpec spec;
  spec.images = dir.file("images");
  spec.masks = dir.file("masks");
  spec.validation_split = 0.0;
  const auto [train, validation] = vt::SegmentationDataset::open(spec, 1);
  ASSERT_NE(train, nullptr);
  EXPECT_EQ(validation, nullptr);
  ASSERT_EQ(train->size(), 2u);
  EXPECT_EQ(train->describe(0), dir.file("images/a.png"));
  EXPECT_EQ(train->describe(1), dir.file("images/b.png"));
  EXPECT_EQ(train->image(1).pixels, sample_image(2).pixels);
  const vt::Image mask = train->mask(1);
  EXPECT_EQ(mask.channels, 1);
  EXPECT_EQ(mask.pixels[3], (2 + 3) % 4);

  // An image without a mask.
  vt::write_png(sample_image(3), dir.file("images/c.png"));
  expect_error([&] { vt::SegmentationDataset::open(spec, 1); }, {dir.file("images/c.png"), "has no mask", dir.file("masks/c.png")});
  fs::remove(dir.file("images/c.png"));

  // A mask of another size: named with its image when read.
  vt::write_png(gray(7, 6, [](int, int) { return 1; }), dir.file("masks/b.png"));
  const auto [train2, unused] = vt::SegmentationDataset::open(spec, 1);
  expect_error([&] { train2->mask(1); }, {dir.file("masks/b.png"), "7x6", dir.file("images/b.png"), "8x6"});

  spec.masks = dir.file("nowhere");
  expect_error([&] { vt::SegmentationDataset::open(spec, 1); }, {"masks", dir.file("nowhere"), "does not exist"});
  vt::SegmentationSpec both = spec;
  both.manifest = dir.file("m.csv");
  expect_error([&] { vt::SegmentationDataset::open(both, 1); }, {"not both"});
}

TEST(SegmentationDataset, Manifests) {
  TempDir dir;
  fs::create_directories(dir.path() / "images");
  fs::create_directories(dir.path() / "masks");
  write_pair(dir, "a", 1);
  write_pair(dir, "b", 2);
  vt_test::write_bytes(dir.file("train.csv"), "pixels,labels\nimages/b.png,masks/b.png\nimages/a.png,masks/a.png\n");
  vt_test::write_bytes(dir.file("val.jsonl"), "{\"pixels\": \"images/a.png\", \"labels\": \"masks/a.png\"}\n");

  vt::SegmentationSpec spec;
  spec.manifest = dir.file("train.csv");
  spec.validation_manifest = dir.file("val.jsonl");
  spec.image_column = "pixels";
  spec.mask_column = "labels";
  const auto [train, validation] = vt::SegmentationDataset::open(spec, 7);
  ASSERT_EQ(train->size(), 2u);  // no split with a validation set: the manifest's order
  EXPECT_EQ(train->describe(0), (dir.path() / "images/b.png").string());
  EXPECT_EQ(train->mask(0).pixels, vt::read_label_map_file(dir.file("masks/b.png")).pixels);
  ASSERT_NE(validation, nullptr);
  ASSERT_EQ(validation->size(), 1u);
  EXPECT_EQ(validation->describe(0), (dir.path() / "images/a.png").string());

  // `root` replaces the manifest's directory as the base of relative paths.
  fs::create_directories(dir.path() / "lists");
  vt_test::write_bytes(dir.file("lists/train.csv"), "image,mask\nimages/a.png,masks/a.png\n");
  vt::SegmentationSpec rooted;
  rooted.manifest = dir.file("lists/train.csv");
  rooted.root = dir.path().string();
  rooted.validation_split = 0.0;
  EXPECT_EQ(vt::SegmentationDataset::open(rooted, 7).first->describe(0), (dir.path() / "images/a.png").string());

  vt_test::write_bytes(dir.file("bad.csv"), "image,mask\nimages/a.png,masks/a.png\nimages/b.png,masks/zz.png\n");
  rooted.manifest = dir.file("bad.csv");
  rooted.root.clear();
  expect_error([&] { vt::SegmentationDataset::open(rooted, 7); }, {dir.file("bad.csv") + ":3", "\"mask\"", "zz.png", "not found"});
  vt_test::write_bytes(dir.file("cols.csv"), "image,label\nimages/a.png,masks/a.png\n");
  rooted.manifest = dir.file("cols.csv");
  expect_error([&] { vt::SegmentationDataset::open(rooted, 7); }, {"cols.csv", "no column \"mask\""});
  rooted.manifest = dir.file("list.txt");
  expect_error([&] { vt::SegmentationDataset::open(rooted, 7); }, {"list.txt", ".csv or .jsonl"});
}

TEST(SegmentationDataset, SeededSplitAndLimit) {
  TempDir dir;
  fs::create_directories(dir.path() / "images");
  fs::create_directories(dir.path() / "masks");
  for (int i = 0; i < 10; ++i) write_pair(dir, "s" + std::to_string(i), i);
  vt::SegmentationSpec spec;
  spec.images = dir.file("images");
  spec.masks = dir.file("masks");

  auto names = [](const std::shared_ptr<vt::SegmentationDataset>& d) {
    std::vector<std::string> out;
    for (size_t i = 0; i < d->size(); ++i) out.push_back(fs::path(d->describe(i)).filename().string());
    return out;
  };
  const auto [train, validation] = vt::SegmentationDataset::open(spec, 42);  // default split 0.1
  ASSERT_EQ(train->size(), 9u);
  ASSERT_NE(validation, nullptr);
  ASSERT_EQ(validation->size(), 1u);
  const auto again = vt::SegmentationDataset::open(spec, 42);
  EXPECT_EQ(names(again.first), names(train));
  EXPECT_EQ(names(again.second), names(validation));
  // The classification datasets' split: the same permutation of the sorted files.
  const vt::SplitIndices parts = vt::seeded_split(10, 0.1, 42);
  EXPECT_EQ(names(validation), std::vector<std::string>{"s" + std::to_string(parts.validation[0]) + ".png"});
  EXPECT_EQ(names(train)[0], "s" + std::to_string(parts.train[0]) + ".png");
  const std::vector<std::string> train_names = names(train);
  std::set<std::string> all(train_names.begin(), train_names.end());
  all.insert(names(validation)[0]);
  EXPECT_EQ(all.size(), 10u);
  // Another seed, another permutation.
  EXPECT_NE(names(vt::SegmentationDataset::open(spec, 43).first), names(train));

  // `limit` keeps the first samples of each (shuffled) part.
  spec.validation_split = 0.5;
  spec.limit = 3;
  const auto limited = vt::SegmentationDataset::open(spec, 42);
  const auto unlimited = [&] {
    vt::SegmentationSpec copy = spec;
    copy.limit.reset();
    return vt::SegmentationDataset::open(copy, 42);
  }();
  ASSERT_EQ(limited.first->size(), 3u);
  ASSERT_EQ(limited.second->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(limited.first->describe(i), unlimited.first->describe(i));
    EXPECT_EQ(limited.second->describe(i), unlimited.second->describe(i));
  }
  spec.validation_split = 1.0;
  expect_error([&] { vt::SegmentationDataset::open(spec, 42); }, {"validation_split must be in [0, 1)"});
  spec.validation_split = 0.99;
  expect_error([&] { vt::SegmentationDataset::open(spec, 42); }, {"leaves none for training"});
}

// ---------------------------------------------------------------------------------------------
// Batches

TEST(SegmentationBatch, WithoutAugmentationEqualsProcessorAndLabelMap) {
  TempDir dir;
  fs::create_directories(dir.path() / "images");
  fs::create_directories(dir.path() / "masks");
  // The fixture photo (whose processed pixels transformers recorded) with a made-up mask.
  fs::copy_file(fixture("images/chelsea.png"), dir.file("images/chelsea.png"));
  const vt::Image photo = vt::read_image_file(dir.file("images/chelsea.png"));
  vt::write_png(gray(photo.width, photo.height, [](int x, int y) { return static_cast<uint8_t>((x / 50 + y / 40) % 5); }),
                dir.file("masks/chelsea.png"));
  write_pair(dir, "z", 1);
  vt::SegmentationSpec spec;
  spec.images = dir.file("images");
  spec.masks = dir.file("masks");
  spec.validation_split = 0.0;
  const auto dataset = vt::SegmentationDataset::open(spec, 0).first;
  ASSERT_EQ(dataset->size(), 2u);

  const vt::ImageProcessor processor = segformer_processor();
  vt::AugmentSpec augment;
  augment.random_resized_crop = true;
  augment.horizontal_flip = true;
  for (bool reduce : {false, true}) {
    // apply_augment false: the augmentation spec is not used.
    const vt::SegmentationBatch batch = vt::load_segmentation_batch(*dataset, {1, 0}, processor, reduce, augment, false, 5, 0);
    ASSERT_EQ(batch.pixel_values.sizes(), (std::vector<int64_t>{2, 3, 64, 64}));
    ASSERT_EQ(batch.labels.sizes(), (std::vector<int64_t>{2, 64, 64}));
    EXPECT_EQ(batch.labels.scalar_type(), torch::kInt64);
    for (int k = 0; k < 2; ++k) {
      const size_t index = k == 0 ? 1 : 0;
      EXPECT_TRUE(torch::equal(batch.pixel_values[k], processor.process(dataset->image(index))));
      EXPECT_TRUE(
          torch::equal(batch.labels[k], vt::preprocess_label_map(dataset->mask(index), processor, reduce, dataset->describe(index))));
    }
    // transformers' pixel_values for the same photo.
    const auto reference = vt::load_safetensors(fixture("segformer-tiny-random/reference.safetensors"));
    EXPECT_TRUE(torch::equal(batch.pixel_values[1], reference.at("processed.chelsea.png")[0]));
  }
}

// Image pixel = 10 x label (with gray channels), labels varying along x and y, and an ignored
// (255) region where the image holds 7: after any crop, resize (NEAREST) and flip, wherever the
// label is not ignored the raw image value is 10 x label.
struct AlignedData {
  TempDir dir;
  std::shared_ptr<vt::SegmentationDataset> dataset;
  AlignedData() {
    fs::create_directories(dir.path() / "images");
    fs::create_directories(dir.path() / "masks");
    for (int i = 0; i < 6; ++i) {
      const int w = 40 + 7 * i, h = 30 + 5 * i;
      auto label = [i](int x, int y) -> uint8_t {
        if (y < 4 && x < 6) return 255;
        return static_cast<uint8_t>((x / 3 + y / 5 + i) % 12);
      };
      vt::write_png(gray(
                        w, h, [&](int x, int y) { return static_cast<uint8_t>(label(x, y) == 255 ? 7 : 10 * label(x, y)); }, 3),
                    dir.file("images/" + std::to_string(i) + ".png"));
      vt::write_png(gray(w, h, label), dir.file("masks/" + std::to_string(i) + ".png"));
    }
    vt::SegmentationSpec spec;
    spec.images = dir.file("images");
    spec.masks = dir.file("masks");
    spec.validation_split = 0.0;
    dataset = vt::SegmentationDataset::open(spec, 0).first;
  }
};

TEST(SegmentationBatch, AugmentationIsReproducibleAndAligned) {
  AlignedData data;
  const vt::ImageProcessor processor = raw_nearest_processor(24);
  vt::AugmentSpec augment;
  augment.random_resized_crop = true;
  augment.scale = {0.2, 1.0};
  augment.horizontal_flip = true;
  const std::vector<size_t> indices = {0, 1, 2, 3, 4, 5};
  const vt::SegmentationBatch a = vt::load_segmentation_batch(*data.dataset, indices, processor, false, augment, true, 11, 3);
  const vt::SegmentationBatch b = vt::load_segmentation_batch(*data.dataset, indices, processor, false, augment, true, 11, 3);
  EXPECT_TRUE(torch::equal(a.pixel_values, b.pixel_values));
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  // A sample's augmentation depends on (seed, epoch, index) only, not on its batch.
  const vt::SegmentationBatch single = vt::load_segmentation_batch(*data.dataset, {4}, processor, false, augment, true, 11, 3);
  EXPECT_TRUE(torch::equal(single.labels[0], a.labels[4]));
  const vt::SegmentationBatch other_epoch = vt::load_segmentation_batch(*data.dataset, indices, processor, false, augment, true, 11, 4);
  EXPECT_FALSE(torch::equal(other_epoch.labels, a.labels));

  ASSERT_EQ(a.pixel_values.sizes(), (std::vector<int64_t>{6, 3, 24, 24}));
  ASSERT_EQ(a.labels.sizes(), (std::vector<int64_t>{6, 24, 24}));
  for (const bool reduce : {false, true}) {
    const vt::SegmentationBatch batch = vt::load_segmentation_batch(*data.dataset, indices, processor, reduce, augment, true, 11, 3);
    const torch::Tensor labels = batch.labels;
    const torch::Tensor kept = labels.ne(255);
    // reduce_labels: 0 -> 255 and v -> v - 1, so the image value is 10 x (label + 1).
    const torch::Tensor expected = (reduce ? labels + 1 : labels).to(torch::kFloat32) * 10;
    for (int c = 0; c < 3; ++c) {
      const torch::Tensor channel = batch.pixel_values.select(1, c);
      EXPECT_TRUE(torch::equal(channel.masked_select(kept), expected.masked_select(kept))) << "reduce " << reduce;
    }
    if (!reduce) {
      // Where the label is ignored the image holds 7 (the 255 region) and nothing else.
      EXPECT_TRUE(batch.pixel_values.select(1, 0).masked_select(~kept).eq(7).all().item<bool>());
    }
  }

  // The crop is the drawn box, resized with NEAREST to the processor's size, flipped when drawn.
  for (size_t index : indices) {
    const vt::AugmentDraw draw =
        vt::draw_augment(data.dataset->image(index).height, data.dataset->image(index).width, augment, 11, 3, index);
    ASSERT_TRUE(draw.crop.has_value());
    vt::Image expected = vt::resize_image(vt::crop_image(data.dataset->mask(index), *draw.crop), 24, 24, vt::Resample::Nearest);
    if (draw.flip) vt::flip_horizontal(expected);
    EXPECT_TRUE(torch::equal(a.labels[index], as_tensor(expected).reshape({24, 24}).to(torch::kInt64))) << index;
  }
}

TEST(SegmentationBatch, FlipMovesImageAndMask) {
  AlignedData data;
  const vt::ImageProcessor processor = raw_nearest_processor(24);
  vt::AugmentSpec flip_only;
  flip_only.horizontal_flip = true;
  std::set<bool> seen;
  for (size_t index = 0; index < data.dataset->size(); ++index) {
    const vt::Image image = data.dataset->image(index);
    const bool flipped = vt::draw_augment(image.height, image.width, flip_only, 11, 0, index).flip;
    seen.insert(flipped);
    const vt::SegmentationBatch batch = vt::load_segmentation_batch(*data.dataset, {index}, processor, false, flip_only, true, 11, 0);
    torch::Tensor pixels = processor.process(image);
    torch::Tensor labels = vt::preprocess_label_map(data.dataset->mask(index), processor, false, "mask");
    if (flipped) {
      pixels = pixels.flip({2});
      labels = labels.flip({1});
    }
    EXPECT_TRUE(torch::equal(batch.pixel_values[0], pixels)) << index;
    EXPECT_TRUE(torch::equal(batch.labels[0], labels)) << index;
    // The picture is not symmetric, so a flip shows.
    EXPECT_FALSE(torch::equal(labels, labels.flip({1}))) << index;
  }
  EXPECT_EQ(seen.size(), 2u) << "the 6 samples should include flipped and unflipped ones";
}

TEST(SegmentationBatch, Errors) {
  AlignedData data;
  // A shortest-edge processor gives each image its own size: such samples cannot share a batch.
  // (40x30 -> 26x20, 54x40 -> 27x20)
  const vt::ImageProcessor varying(
      vt::ImageProcessorConfig::from_json({{"image_processor_type", "CLIPImageProcessor"}, {"size", {{"shortest_edge", 20}}}}), 3);
  expect_error(
      [&] {
        vt::load_segmentation_batch(*data.dataset, {0, 2}, varying, false, {}, false, 0, 0);
      },
      {"cannot share a batch", data.dataset->describe(2)});
  expect_error([&] { vt::load_segmentation_batch(*data.dataset, {9}, raw_nearest_processor(8), false, {}, false, 0, 0); },
               {"index 9 is out of range"});
  vt::AugmentSpec bad;
  bad.random_resized_crop = true;
  bad.scale = {0.5, 0.1};
  expect_error([&] { vt::load_segmentation_batch(*data.dataset, {0}, raw_nearest_processor(8), false, bad, true, 0, 0); }, {"scale"});
}

}  // namespace
