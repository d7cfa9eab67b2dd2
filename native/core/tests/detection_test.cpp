// Detection data: DETR preprocessing and post-processing against transformers 4.31's tensors for
// the detr-tiny-random fixture, COCO annotations turned into DETR targets, the COCO dataset's
// validation errors, and augmentation (flip, multi-scale) with its determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/json_config.h"
#include "data/detection.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "test_util.h"

using nlohmann::json;
using vt_test::expect_error;
using vt_test::TempDir;

namespace {

vt::ImageProcessor processor_from(const json& config) { return vt::ImageProcessor(vt::ImageProcessorConfig::from_json(config), 3); }

// DetrImageProcessor, shortest_edge 64, longest_edge 96.
vt::ImageProcessor detr_processor() {
  return processor_from(vt::read_json_file(vt_test::fixture("detr-tiny-random/preprocessor_config.json")));
}

const vt::TensorMap& reference() {
  static const vt::TensorMap tensors = vt::load_safetensors(vt_test::fixture("detr-tiny-random/reference.safetensors"));
  return tensors;
}

torch::Tensor reference_tensor(const std::string& name) {
  const auto found = reference().find(name);
  if (found == reference().end()) {
    ADD_FAILURE() << "reference.safetensors lacks " << name;
    return torch::Tensor();
  }
  return found->second;
}

vt::Image photo(const std::string& file) { return vt::read_image_file(vt_test::fixture("images/" + file)); }

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// A deterministic RGB image with distinct pixels, of any size.
vt::Image pattern(int width, int height) {
  vt::Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>((i * 37 + i / 3) % 256);
  return image;
}

vt::Image mirrored(const vt::Image& image) {
  vt::Image out = image;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      for (int c = 0; c < image.channels; ++c) {
        out.row(y)[(image.width - 1 - x) * image.channels + c] = image.row(y)[x * image.channels + c];
      }
    }
  }
  return out;
}

std::string coco_dir() { return vt_test::fixture("coco-sample"); }
json coco_json() { return vt::read_json_file(vt_test::fixture("coco-sample/instances.json")); }

// Writes `j` as instances.json into `dir` and opens it against the sample's image directory.
vt::CocoDetectionDataset open_variant(const TempDir& dir, const json& j) {
  vt::write_json_file(dir.file("instances.json"), j);
  return vt::CocoDetectionDataset(dir.file("instances.json"), coco_dir());
}

json annotation(const std::vector<double>& bbox, int64_t category_id = 17, int iscrowd = 0) {
  return json{{"image_id", 39769}, {"category_id", category_id}, {"bbox", bbox}, {"area", 1.0}, {"iscrowd", iscrowd}};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Preprocessing parity with transformers

TEST(DetectionPreprocess, SingleImageMatchesTransformers) {
  const vt::ImageProcessor processor = detr_processor();
  for (const char* file : {"chelsea.png", "rocket.jpg"}) {
    SCOPED_TRACE(file);
    const vt::Image image = photo(file);
    const vt::DetectionBatch batch = vt::preprocess_detection({image}, processor);
    const torch::Tensor want = reference_tensor(std::string("processed.") + file);
    const torch::Tensor want_mask = reference_tensor(std::string("processed_pixel_mask.") + file);
    ASSERT_EQ(batch.pixel_values.sizes(), want.sizes());
    ASSERT_EQ(batch.pixel_mask.sizes(), want_mask.sizes());
    EXPECT_EQ(batch.pixel_mask.scalar_type(), torch::kInt64);
    const double diff = max_abs_diff(batch.pixel_values, want);
    EXPECT_LE(diff, 1e-4);
    EXPECT_EQ(diff, 0.0) << "the same PIL arithmetic should give the same floats";
    EXPECT_TRUE(torch::equal(batch.pixel_mask, want_mask));
    EXPECT_TRUE(batch.targets.empty());
    ASSERT_EQ(batch.original_sizes.size(), 1u);
    EXPECT_EQ(batch.original_sizes[0], (std::pair<int, int>(image.height, image.width)));
  }
}

TEST(DetectionPreprocess, BatchPadsToTheLargestImageWithZerosAndMask) {
  const vt::ImageProcessor processor = detr_processor();
  // chelsea comes out 64x96 (h x w); the portrait 200x100 comes out 96x48 (its long side capped at
  // 96), so the batch pads each image in a different dimension to 96x96.
  const std::vector<vt::Image> images = {photo("chelsea.png"), pattern(100, 200)};
  const vt::DetectionBatch batch = vt::preprocess_detection(images, processor);
  ASSERT_EQ(batch.pixel_values.sizes(), (std::vector<int64_t>{2, 3, 96, 96}));
  ASSERT_EQ(batch.pixel_mask.sizes(), (std::vector<int64_t>{2, 96, 96}));
  const std::pair<int64_t, int64_t> sizes[] = {{64, 96}, {96, 48}};
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const auto [h, w] = sizes[i];
    const torch::Tensor single = processor.process(images[i]);
    ASSERT_EQ(single.sizes(), (std::vector<int64_t>{3, h, w}));
    const torch::Tensor values = batch.pixel_values[i];
    EXPECT_TRUE(torch::equal(values.narrow(1, 0, h).narrow(2, 0, w), single));
    EXPECT_EQ(values.abs().sum().item<double>(), single.abs().sum().item<double>()) << "padding must be zeros";
    const torch::Tensor mask = batch.pixel_mask[i];
    EXPECT_EQ(mask.sum().item<int64_t>(), h * w);
    EXPECT_EQ(mask.narrow(0, 0, h).narrow(1, 0, w).min().item<int64_t>(), 1);
  }
  EXPECT_EQ(batch.original_sizes[1], (std::pair<int, int>(200, 100)));
}

// ---------------------------------------------------------------------------------------------
// Post-processing parity with transformers

TEST(DetectionPostProcess, MatchesTransformers) {
  const torch::Tensor logits = reference_tensor("logits");
  const torch::Tensor pred_boxes = reference_tensor("pred_boxes");
  const auto results = vt::post_process_object_detection(logits, pred_boxes, 0.0, {{300, 451}, {427, 640}});
  ASSERT_EQ(results.size(), 2u);
  double worst = 0.0;
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const std::string prefix = "post." + std::to_string(i) + ".";
    const torch::Tensor scores = reference_tensor(prefix + "scores");
    const torch::Tensor labels = reference_tensor(prefix + "labels");
    const torch::Tensor boxes = reference_tensor(prefix + "boxes");
    ASSERT_EQ(static_cast<int64_t>(results[i].size()), scores.size(0));
    for (size_t q = 0; q < results[i].size(); ++q) {
      const vt::Detection& d = results[i][q];
      const int64_t k = static_cast<int64_t>(q);
      EXPECT_NEAR(d.score, scores[k].item<double>(), 1e-3 + 1e-4 * std::abs(scores[k].item<double>()));
      worst = std::max(worst, std::abs(d.score - scores[k].item<double>()));
      EXPECT_EQ(d.label, labels[k].item<int64_t>());
      const double got[4] = {d.xmin, d.ymin, d.xmax, d.ymax};
      for (int c = 0; c < 4; ++c) {
        const double want = boxes[k][c].item<double>();
        EXPECT_NEAR(got[c], want, 1e-3 + 1e-4 * std::abs(want)) << "query " << q << " coordinate " << c;
        worst = std::max(worst, std::abs(got[c] - want));
      }
    }
  }
  std::cout << "[ parity ] max abs diff vs transformers' post_process_object_detection: " << worst << "\n";
}

TEST(DetectionPostProcess, ThresholdAndRelativeBoxes) {
  const torch::Tensor logits = reference_tensor("logits");
  const torch::Tensor pred_boxes = reference_tensor("pred_boxes");
  const auto all = vt::post_process_object_detection(logits, pred_boxes, 0.0, {});
  ASSERT_EQ(all.size(), 2u);
  ASSERT_FALSE(all[0].empty());
  // Without target sizes the boxes stay relative: corners of the predicted (cx, cy, w, h).
  const torch::Tensor b = pred_boxes[0][0];
  EXPECT_NEAR(all[0][0].xmin, b[0].item<double>() - 0.5 * b[2].item<double>(), 1e-6);
  EXPECT_NEAR(all[0][0].ymax, b[1].item<double>() + 0.5 * b[3].item<double>(), 1e-6);
  // A threshold keeps exactly the queries scoring above it, in query order.
  const double threshold = all[0][all[0].size() / 2].score;
  const auto some = vt::post_process_object_detection(logits, pred_boxes, threshold, {});
  size_t expected = 0;
  for (const vt::Detection& d : all[0]) expected += d.score > threshold ? 1 : 0;
  EXPECT_EQ(some[0].size(), expected);
  for (const vt::Detection& d : some[0]) EXPECT_GT(d.score, threshold);
}

TEST(DetectionPostProcess, ShapeErrorsNameTheProblem) {
  const torch::Tensor logits = torch::zeros({2, 5, 3});
  const torch::Tensor boxes = torch::zeros({2, 5, 4});
  expect_error([&] { vt::post_process_object_detection(logits[0], boxes, 0.5, {}); }, {"logits must be"});
  expect_error([&] { vt::post_process_object_detection(logits, boxes.narrow(2, 0, 3), 0.5, {}); },
               {"pred_boxes must be [batch, queries, 4]"});
  expect_error([&] { vt::post_process_object_detection(logits, boxes.narrow(1, 0, 4), 0.5, {}); }, {"differ in batch or query count"});
  expect_error([&] { vt::post_process_object_detection(logits, boxes, 0.5, {{10, 10}}); }, {"2 images in the batch but 1 target sizes"});
  expect_error([&] { vt::post_process_object_detection(logits, boxes, 0.5, {{10, 10}, {0, 5}}); }, {"target_sizes[1]"});
}

// ---------------------------------------------------------------------------------------------
// Targets from COCO annotations

TEST(DetectionTargets, CocoSampleBoxesLabelsAndMapping) {
  const vt::CocoDetectionDataset dataset(vt_test::fixture("coco-sample/instances.json"), coco_dir());
  ASSERT_EQ(dataset.size(), 1u);
  EXPECT_EQ(dataset.image_id(0), 39769);
  EXPECT_EQ(dataset.class_names(), (std::vector<std::string>{"cat", "couch", "bed", "remote"}));
  EXPECT_EQ(dataset.category_to_label(), (std::map<int64_t, int64_t>{{17, 0}, {63, 1}, {65, 2}, {75, 3}}));
  ASSERT_EQ(dataset.annotations(0).size(), 6u);
  EXPECT_NE(dataset.describe(0).find("000000039769.jpg"), std::string::npos);

  const std::vector<std::vector<vt::CocoAnnotation>> annotations = {dataset.annotations(0)};
  const vt::DetectionBatch batch =
      vt::preprocess_detection({dataset.image(0)}, detr_processor(), &annotations, &dataset.category_to_label());
  // 640x480 -> 85x64 (shortest edge 64, int(64 * 640 / 480) = 85 within the longest edge 96).
  EXPECT_EQ(batch.pixel_values.sizes(), (std::vector<int64_t>{1, 3, 64, 85}));
  ASSERT_EQ(batch.targets.size(), 1u);
  const vt::DetectionTarget& t = batch.targets[0];
  EXPECT_EQ(t.class_labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(t.boxes.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(t.class_labels, torch::tensor({3, 3, 1, 2, 0, 0}, torch::kInt64)));
  ASSERT_EQ(t.boxes.sizes(), (std::vector<int64_t>{6, 4}));
  // Annotation 0 (a remote), bbox [332.89, 79.57, 38.65, 106.31] in the 640x480 photo:
  //   corners (332.89, 79.57) - (371.54, 185.88), inside the image so the clip changes nothing;
  //   scaled by (85 / 640, 64 / 480) to (44.212, 10.609) - (49.345, 24.784);
  //   cx = (44.212 + 49.345) / 2 / 85 = 352.215 / 640 = 0.5503359
  //   cy = (10.609 + 24.784) / 2 / 64 = 132.725 / 480 = 0.2765104
  //   w  = (49.345 - 44.212) / 85     =  38.65 / 640 = 0.0603906
  //   h  = (24.784 - 10.609) / 64     = 106.31 / 480 = 0.2214792
  // (the resize ratios cancel; only float32 rounding remains).
  const double want[4] = {352.215 / 640, 132.725 / 480, 38.65 / 640, 106.31 / 480};
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(t.boxes[0][c].item<double>(), want[c], 2e-6) << c;
  EXPECT_GE(t.boxes.min().item<double>(), 0.0);
  EXPECT_LE(t.boxes.max().item<double>(), 1.0);
}

TEST(DetectionTargets, CrowdDegenerateAndClippedBoxes) {
  TempDir dir;
  json j = coco_json();
  json& annotations = j["annotations"];
  annotations.push_back(annotation({10, 10, 50, 50}, 63, /*iscrowd=*/1));  // dropped: crowd
  annotations.push_back(annotation({100, 100, 0, 20}));                    // dropped: zero width
  annotations.push_back(annotation({700, 10, 30, 30}));                    // dropped: right of the image
  annotations.push_back(annotation({600, 400, 100, 200}, 65));             // clipped to (600,400)-(640,480)
  const vt::CocoDetectionDataset dataset = open_variant(dir, j);
  ASSERT_EQ(dataset.annotations(0).size(), 10u);
  EXPECT_TRUE(dataset.annotations(0)[6].iscrowd);
  const vt::DetectionBatch batch = vt::load_detection_batch(dataset, {0}, detr_processor(), {}, false, 0, 0);
  const vt::DetectionTarget& t = batch.targets.at(0);
  EXPECT_TRUE(torch::equal(t.class_labels, torch::tensor({3, 3, 1, 2, 0, 0, 2}, torch::kInt64)));
  ASSERT_EQ(t.boxes.size(0), 7);
  const double clipped[4] = {620.0 / 640, 440.0 / 480, 40.0 / 640, 80.0 / 480};
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(t.boxes[6][c].item<double>(), clipped[c], 2e-6) << c;
}

TEST(DetectionTargets, EmptyListsAndUnknownCategories) {
  const vt::ImageProcessor processor = detr_processor();
  const std::vector<vt::Image> images = {pattern(40, 30), pattern(30, 40)};
  const std::vector<std::vector<vt::CocoAnnotation>> none(2);
  const vt::DetectionBatch batch = vt::preprocess_detection(images, processor, &none);
  ASSERT_EQ(batch.targets.size(), 2u);
  for (const vt::DetectionTarget& t : batch.targets) {
    EXPECT_EQ(t.class_labels.sizes(), (std::vector<int64_t>{0}));
    EXPECT_EQ(t.boxes.sizes(), (std::vector<int64_t>{0, 4}));
  }

  std::vector<std::vector<vt::CocoAnnotation>> lists(2);
  vt::CocoAnnotation a;
  a.category_id = 99;
  a.x = a.y = 1;
  a.width = a.height = 5;
  lists[1].push_back(a);
  const std::map<int64_t, int64_t> mapping = {{17, 0}};
  expect_error([&] { vt::preprocess_detection(images, processor, &lists, &mapping); },
               {"image 1", "annotation 0", "unknown category_id 99"});
  // Without a mapping the category id is the label, as transformers leaves it.
  const vt::DetectionBatch raw = vt::preprocess_detection(images, processor, &lists);
  EXPECT_EQ(raw.targets[1].class_labels[0].item<int64_t>(), 99);
  expect_error([&] { vt::preprocess_detection({images[0]}, processor, &lists); }, {"1 images but 2 annotation lists"});

  // Boxes follow a resize but not a crop.
  const vt::ImageProcessor cropping = processor_from(json::parse(R"({
    "image_processor_type": "DeiTImageProcessor", "size": {"height": 40, "width": 40},
    "do_center_crop": true, "crop_size": {"height": 32, "width": 32}})"));
  expect_error([&] { vt::preprocess_detection(images, cropping, &none); }, {"DeiTImageProcessor", "crops"});
}

// ---------------------------------------------------------------------------------------------
// COCO dataset errors

TEST(CocoDetectionDataset, ErrorsNameTheFileEntryAndField) {
  TempDir dir;
  const json base = coco_json();
  struct Case {
    std::string what;
    std::function<void(json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"short bbox",
       [](json& j) {
         j["annotations"][3]["bbox"] = {1, 2, 3};
       },
       {"instances.json: annotations[3].bbox must be [x, y, width, height]"}},
      {"text in bbox",
       [](json& j) { j["annotations"][3]["bbox"][2] = "wide"; },
       {"instances.json: annotations[3].bbox must be [x, y, width, height]"}},
      {"negative width",
       [](json& j) { j["annotations"][2]["bbox"][2] = -4; },
       {"instances.json: annotations[2].bbox has a negative width or height"}},
      {"unknown image",
       [](json& j) { j["annotations"][1]["image_id"] = 5; },
       {"instances.json: annotations[1].image_id 5 is not the id of any image"}},
      {"unknown category",
       [](json& j) { j["annotations"][0]["category_id"] = 99; },
       {"instances.json: annotations[0].category_id 99 is not the id of any category"}},
      {"missing category",
       [](json& j) { j["annotations"][5].erase("category_id"); },
       {"instances.json: annotations[5].category_id is missing"}},
      {"bad iscrowd", [](json& j) { j["annotations"][4]["iscrowd"] = 2; }, {"instances.json: annotations[4].iscrowd must be 0 or 1"}},
      {"duplicate image id",
       [](json& j) { j["images"].push_back(j["images"][0]); },
       {"instances.json: images[1].id 39769 repeats images[0].id"}},
      {"non-integer image id", [](json& j) { j["images"][0]["id"] = "39769"; }, {"instances.json: images[0].id must be an integer"}},
      {"missing image file",
       [](json& j) { j["images"][0]["file_name"] = "missing.jpg"; },
       {"instances.json: images[0].file_name", "missing.jpg", "does not exist"}},
      {"bad width", [](json& j) { j["images"][0]["width"] = -640; }, {"instances.json: images[0].width must be a positive integer"}},
      {"duplicate category",
       [](json& j) { j["categories"][1]["id"] = 17; },
       {"instances.json: categories[1].id 17 repeats categories[0].id"}},
      {"nameless category", [](json& j) { j["categories"][2].erase("name"); }, {"instances.json: categories[2].name is missing"}},
      {"images not a list", [](json& j) { j["images"] = json::object(); }, {"instances.json: images must be a list"}},
      {"no annotations", [](json& j) { j.erase("annotations"); }, {"instances.json: annotations must be a list"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    json j = base;
    c.edit(j);
    expect_error([&] { open_variant(dir, j); }, c.parts);
  }
  vt_test::write_bytes(dir.file("instances.json"), "{\"images\": [");
  expect_error([&] { vt::CocoDetectionDataset(dir.file("instances.json"), coco_dir()); }, {"instances.json", "invalid JSON"});
}

TEST(CocoDetectionDataset, DecodedSizeMustMatchTheJson) {
  TempDir dir;
  json j = coco_json();
  j["images"][0]["height"] = 481;
  const vt::CocoDetectionDataset dataset = open_variant(dir, j);  // checked when decoding
  expect_error([&] { dataset.image(0); }, {"instances.json: images[0]", "640x481", "000000039769.jpg", "decodes to 640x480"});
  expect_error([&] { dataset.annotations(1); }, {"index 1 is out of range"});
  // Without width/height the decoded size is taken as it is.
  j["images"][0].erase("width");
  j["images"][0].erase("height");
  EXPECT_EQ(open_variant(dir, j).image(0).width, 640);
}

// ---------------------------------------------------------------------------------------------
// Augmentation

TEST(DetectionAugment, FlipMirrorsPixelsAndBoxes) {
  const vt::CocoDetectionDataset dataset(vt_test::fixture("coco-sample/instances.json"), coco_dir());
  const vt::ImageProcessor processor = detr_processor();
  vt::DetectionAugment augment;
  augment.horizontal_flip = true;
  const vt::DetectionBatch plain = vt::load_detection_batch(dataset, {0}, processor, augment, false, 7, 0);
  const torch::Tensor plain_boxes = plain.targets[0].boxes;
  const torch::Tensor flipped_pixels = vt::preprocess_detection({mirrored(dataset.image(0))}, processor).pixel_values;
  int flips = 0, keeps = 0;
  for (int64_t epoch = 0; epoch < 16; ++epoch) {
    SCOPED_TRACE(epoch);
    const vt::DetectionBatch batch = vt::load_detection_batch(dataset, {0}, processor, augment, true, 7, epoch);
    const torch::Tensor boxes = batch.targets[0].boxes;
    EXPECT_TRUE(torch::equal(batch.targets[0].class_labels, plain.targets[0].class_labels));
    if (torch::equal(batch.pixel_values, plain.pixel_values)) {
      ++keeps;
      EXPECT_TRUE(torch::equal(boxes, plain_boxes));
      continue;
    }
    ++flips;
    EXPECT_TRUE(torch::equal(batch.pixel_values, flipped_pixels));
    // x -> width - x - w moves each centre to 1 - cx; y, w and h stay.
    EXPECT_LE(max_abs_diff(boxes.select(1, 0), 1.0 - plain_boxes.select(1, 0)), 1e-6);
    EXPECT_LE(max_abs_diff(boxes.narrow(1, 1, 3), plain_boxes.narrow(1, 1, 3)), 1e-6);
  }
  EXPECT_GT(flips, 0);
  EXPECT_GT(keeps, 0);
}

TEST(DetectionAugment, SameSeedEpochIndexGivesTheSameBatch) {
  const vt::CocoDetectionDataset dataset(vt_test::fixture("coco-sample/instances.json"), coco_dir());
  const vt::ImageProcessor processor = detr_processor();
  vt::DetectionAugment augment;
  augment.horizontal_flip = true;
  augment.shortest_edges = {32, 40, 48, 56, 64};
  std::set<std::vector<int64_t>> shapes;
  for (int64_t epoch = 0; epoch < 6; ++epoch) {
    const vt::DetectionBatch a = vt::load_detection_batch(dataset, {0, 0}, processor, augment, true, 11, epoch);
    const vt::DetectionBatch b = vt::load_detection_batch(dataset, {0, 0}, processor, augment, true, 11, epoch);
    EXPECT_TRUE(torch::equal(a.pixel_values, b.pixel_values));
    EXPECT_TRUE(torch::equal(a.pixel_mask, b.pixel_mask));
    for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(a.targets[i].boxes, b.targets[i].boxes));
    shapes.insert(a.pixel_values.sizes().vec());
  }
  EXPECT_GT(shapes.size(), 1u) << "epochs should draw different scales";
}

TEST(DetectionAugment, MultiScalePicksFromTheListUnderTheLongestEdge) {
  const vt::CocoDetectionDataset dataset(vt_test::fixture("coco-sample/instances.json"), coco_dir());
  const vt::ImageProcessor processor = detr_processor();
  const vt::DetectionBatch plain = vt::load_detection_batch(dataset, {0}, processor, {}, false, 3, 0);
  EXPECT_EQ(plain.pixel_values.sizes(), (std::vector<int64_t>{1, 3, 64, 85}));
  vt::DetectionAugment augment;
  augment.shortest_edges = {32, 48, 90};
  // 640x480 with shortest edge 32: 32 x int(32 * 640 / 480) = 32x42; 48: 48x64; 90 would make the
  // long side 120 > 96, so the target becomes round(96 * 480 / 640) = 72: 72x96.
  const std::set<std::pair<int64_t, int64_t>> allowed = {{32, 42}, {48, 64}, {72, 96}};
  std::set<std::pair<int64_t, int64_t>> seen;
  for (int64_t epoch = 0; epoch < 24; ++epoch) {
    const vt::DetectionBatch batch = vt::load_detection_batch(dataset, {0}, processor, augment, true, 3, epoch);
    const std::pair<int64_t, int64_t> hw(batch.pixel_values.size(2), batch.pixel_values.size(3));
    EXPECT_TRUE(allowed.count(hw)) << hw.first << "x" << hw.second;
    seen.insert(hw);
    EXPECT_EQ(batch.pixel_mask.sum().item<int64_t>(), hw.first * hw.second);
    // Normalised boxes do not depend on the scale (up to float32 rounding).
    EXPECT_LE(max_abs_diff(batch.targets[0].boxes, plain.targets[0].boxes), 1e-5);
  }
  EXPECT_EQ(seen, allowed);

  json fixed = vt::read_json_file(vt_test::fixture("detr-tiny-random/preprocessor_config.json"));
  fixed["size"] = {{"height", 32}, {"width", 32}};
  expect_error([&] { vt::load_detection_batch(dataset, {0}, processor_from(fixed), augment, true, 3, 0); },
               {"multi-scale needs an image processor that resizes by shortest_edge"});
  // Turned off, the list is not used and such a processor is fine.
  EXPECT_EQ(vt::load_detection_batch(dataset, {0}, processor_from(fixed), augment, false, 3, 0).pixel_values.size(3), 32);
}
