// Universal (Mask2Former) segmentation: post-processing against transformers 4.31's reference
// outputs, COCO mask decoding against hand-drawn masks and pycocotools, mask mAP against
// pycocotools' COCOeval(iouType='segm'), and panoptic quality on cases worked out by hand.
//
// Golden data: tests/data/mask_golden.json beside this file, written by
// tests/data/make_mask_golden.py (pycocotools 2.0.11): polygon decodings, random segm problems
// with COCOeval's 12 stats (which must come out bit for bit), the coco-sample annotations' RLE,
// and random panoptic problems with panopticapi's sums and averages.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "eval/mask_eval.h"
#include "io/coco_masks.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "tasks/universal_segmentation_post.h"
#include "test_util.h"

using nlohmann::json;
using vt_test::expect_error;
using vt_test::fixture;

namespace {

// ---------------------------------------------------------------------------------------------
// Post-processing
// ---------------------------------------------------------------------------------------------

const vt::TensorMap& mask2former_reference() {
  static const vt::TensorMap tensors = vt::load_safetensors(fixture("mask2former-tiny-random/reference.safetensors"));
  return tensors;
}

const json& mask2former_reference_json() {
  static const json reference = [] {
    std::ifstream in(fixture("mask2former-tiny-random/reference.json"));
    return json::parse(in);
  }();
  return reference;
}

// reference.json's target_sizes=[(40, 60), (33, 50)].
const vt::TargetSizes kFixtureSizes = {{40, 60}, {33, 50}};

void expect_segments(const std::vector<vt::SegmentInfo>& actual, const json& expected, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t s = 0; s < actual.size(); ++s) {
    EXPECT_EQ(actual[s].id, expected[s]["id"].get<int64_t>()) << what << " segment " << s;
    EXPECT_EQ(actual[s].label_id, expected[s]["label_id"].get<int64_t>()) << what << " segment " << s;
    EXPECT_EQ(actual[s].was_fused, expected[s]["was_fused"].get<bool>()) << what << " segment " << s;
    EXPECT_NEAR(actual[s].score, expected[s]["score"].get<double>(), 1e-4) << what << " segment " << s;
  }
}

TEST(UniversalSegmentationPost, SemanticMatchesTransformers) {
  const vt::TensorMap& reference = mask2former_reference();
  const auto maps =
      vt::post_process_universal_semantic(reference.at("class_queries_logits"), reference.at("masks_queries_logits"), kFixtureSizes);
  ASSERT_EQ(maps.size(), 2u);
  for (size_t i = 0; i < maps.size(); ++i) {
    const torch::Tensor expected = reference.at("post." + std::to_string(i) + ".segmentation");
    EXPECT_EQ(maps[i].scalar_type(), torch::kInt64);
    ASSERT_EQ(maps[i].sizes(), expected.sizes()) << "image " << i;
    EXPECT_TRUE(torch::equal(maps[i], expected)) << "image " << i;
  }
  // Without target sizes: 384 x 384, transformers' fixed size.
  const auto unresized = vt::post_process_universal_semantic(reference.at("class_queries_logits"), reference.at("masks_queries_logits"));
  EXPECT_EQ(unresized[0].sizes(), (std::vector<int64_t>{384, 384}));
}

TEST(UniversalSegmentationPost, InstanceMatchesTransformers) {
  const vt::TensorMap& reference = mask2former_reference();
  // image_processor.post_process_instance_segmentation(outputs, threshold=0.1, mask_threshold=0.4, target_sizes=...)
  vt::UniversalInstanceOptions options;
  options.threshold = 0.1;
  options.mask_threshold = 0.4;
  const auto results = vt::post_process_universal_instance(reference.at("class_queries_logits"), reference.at("masks_queries_logits"),
                                                           options, kFixtureSizes);
  const json& expected_segments = mask2former_reference_json()["postprocessing"]["segments_info"]["instance"];
  ASSERT_EQ(results.size(), 2u);
  for (size_t i = 0; i < results.size(); ++i) {
    const torch::Tensor expected = reference.at("post_instance." + std::to_string(i) + ".segmentation");
    ASSERT_EQ(results[i].segmentation.sizes(), expected.sizes()) << "image " << i;
    EXPECT_TRUE(torch::equal(results[i].segmentation, expected)) << "image " << i;
    expect_segments(results[i].segments, expected_segments[i], "instance image " + std::to_string(i));
  }
}

TEST(UniversalSegmentationPost, PanopticMatchesTransformers) {
  const vt::TensorMap& reference = mask2former_reference();
  // post_process_panoptic_segmentation(outputs, threshold=0.2, mask_threshold=0.1, target_sizes=..., label_ids_to_fuse={0})
  vt::UniversalPanopticOptions options;
  options.threshold = 0.2;
  options.mask_threshold = 0.1;
  options.label_ids_to_fuse = {0};
  const auto results = vt::post_process_universal_panoptic(reference.at("class_queries_logits"), reference.at("masks_queries_logits"),
                                                           options, kFixtureSizes);
  const json& expected_segments = mask2former_reference_json()["postprocessing"]["segments_info"]["panoptic"];
  ASSERT_EQ(results.size(), 2u);
  for (size_t i = 0; i < results.size(); ++i) {
    const torch::Tensor expected = reference.at("post_panoptic." + std::to_string(i) + ".segmentation");
    ASSERT_EQ(results[i].segmentation.sizes(), expected.sizes()) << "image " << i;
    EXPECT_TRUE(torch::equal(results[i].segmentation, expected)) << "image " << i;
    expect_segments(results[i].segments, expected_segments[i], "panoptic image " + std::to_string(i));
  }
}

// Two queries, two classes, 2x2 masks: hand-checkable panoptic rules.
TEST(UniversalSegmentationPost, PanopticRulesOnAHandMadeCase) {
  // Query 0: class 0 with p = e^3 / (e^3 + 1 + 1) = 0.909; mask logits +5 on the left column.
  // Query 1: class 1 with p = 0.909; mask logits +5 on the right column. Both pass threshold 0.5;
  // each wins its own column, so segments 1 and 2. A third query of the "no object" class drops out.
  const torch::Tensor classes = torch::tensor({3.f, 0.f, 0.f, 0.f, 3.f, 0.f, 0.f, 0.f, 3.f}).view({1, 3, 3});
  const torch::Tensor left = torch::tensor({5.f, -5.f, 5.f, -5.f}).view({2, 2});
  const torch::Tensor masks = torch::stack({left, left.flip(1), torch::zeros({2, 2})}).unsqueeze(0);
  vt::UniversalPanopticOptions options;
  const auto plain = vt::post_process_universal_panoptic(classes, masks, options, {{2, 2}});
  ASSERT_EQ(plain[0].segments.size(), 2u);
  EXPECT_TRUE(torch::equal(plain[0].segmentation, torch::tensor({1, 2, 1, 2}, torch::kInt64).view({2, 2})));
  EXPECT_EQ(plain[0].segments[0].label_id, 0);
  EXPECT_EQ(plain[0].segments[1].label_id, 1);
  EXPECT_NEAR(plain[0].segments[0].score, std::exp(3.0) / (std::exp(3.0) + 2), 1e-6);
  // Nothing above threshold 0.95: the map is all -1.
  options.threshold = 0.95;
  const auto none = vt::post_process_universal_panoptic(classes, masks, options, {{3, 4}});
  EXPECT_TRUE(none[0].segments.empty());
  EXPECT_TRUE(torch::equal(none[0].segmentation, torch::full({3, 4}, -1, torch::kInt64)));
}

TEST(UniversalSegmentationPost, PanopticFusesLabelsAsTransformersDoes) {
  // Four queries of classes 0, 1, 0, 2 (probability e^3 / (e^3 + 3) = 0.87 each), query j's mask
  // the j-th column of a 2x4 image. Fusing class 0: query 0 opens id 1, query 1 takes id 2, query 2
  // reuses id 1; transformers then counts on from the reused id, so query 3 gets id 2 again.
  std::vector<float> logits(4 * 4, 0.f);
  const int classes_of[4] = {0, 1, 0, 2};
  for (int q = 0; q < 4; ++q) logits[static_cast<size_t>(q * 4 + classes_of[q])] = 3.f;
  const torch::Tensor classes = torch::tensor(logits).view({1, 4, 4});
  torch::Tensor masks = torch::full({1, 4, 2, 4}, -5.f);
  for (int q = 0; q < 4; ++q) masks[0][q].select(1, q).fill_(5.f);
  vt::UniversalPanopticOptions options;
  options.label_ids_to_fuse = {0};
  const auto result = vt::post_process_universal_panoptic(classes, masks, options, {{2, 4}});
  EXPECT_TRUE(torch::equal(result[0].segmentation, torch::tensor({1, 2, 1, 2, 1, 2, 1, 2}, torch::kInt64).view({2, 4})))
      << result[0].segmentation;
  ASSERT_EQ(result[0].segments.size(), 4u);
  const int64_t ids[4] = {1, 2, 1, 2};
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_EQ(result[0].segments[s].id, ids[s]) << "segment " << s;
    EXPECT_EQ(result[0].segments[s].label_id, classes_of[s]) << "segment " << s;
    EXPECT_EQ(result[0].segments[s].was_fused, classes_of[s] == 0) << "segment " << s;
  }
}

TEST(UniversalSegmentationPost, RejectsBadInput) {
  const torch::Tensor classes = torch::zeros({2, 3, 4});
  const torch::Tensor masks = torch::zeros({2, 3, 8, 8});
  expect_error(
      [&] {
        vt::post_process_universal_semantic(classes, torch::zeros({2, 5, 8, 8}));
      },
      {"post_process_universal_semantic", "disagree"});
  expect_error([&] { vt::post_process_universal_semantic(classes.view({6, 4}), masks); }, {"class_queries_logits", "[batch, queries"});
  expect_error([&] { vt::post_process_universal_semantic(classes, masks.view({2, 3, 64})); }, {"masks_queries_logits"});
  expect_error([&] { vt::post_process_universal_semantic(classes, masks, {{10, 10}}); }, {"1 target sizes", "batch of 2"});
  expect_error([&] { vt::post_process_universal_semantic(classes, masks, {{10, 10}, {0, 4}}); }, {"target size 1", "positive"});
  expect_error([&] { vt::post_process_universal_semantic(torch::zeros({2, 3, 1}), masks); }, {"at least one class"});
  vt::UniversalInstanceOptions instance;
  instance.threshold = 1.5;
  expect_error([&] { vt::post_process_universal_instance(classes, masks, instance); }, {"threshold", "[0, 1]", "1.5"});
  vt::UniversalPanopticOptions panoptic;
  panoptic.overlap_mask_area_threshold = -0.1;
  expect_error([&] { vt::post_process_universal_panoptic(classes, masks, panoptic); }, {"overlap_mask_area_threshold", "[0, 1]"});
  panoptic = {};
  panoptic.mask_threshold = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { vt::post_process_universal_panoptic(classes, masks, panoptic); }, {"mask_threshold"});
}

// ---------------------------------------------------------------------------------------------
// COCO masks
// ---------------------------------------------------------------------------------------------

const json& mask_golden() {
  static const json golden = [] {
    const std::string path = (std::filesystem::path(__FILE__).parent_path() / "data" / "mask_golden.json").string();
    std::ifstream in(path);
    EXPECT_TRUE(in) << "cannot read " << path;
    return json::parse(in);
  }();
  return golden;
}

torch::Tensor mask_of(const std::vector<std::vector<int>>& rows) {
  const int64_t h = static_cast<int64_t>(rows.size()), w = static_cast<int64_t>(rows[0].size());
  torch::Tensor mask = torch::zeros({h, w}, torch::kUInt8);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) mask[y][x] = rows[static_cast<size_t>(y)][static_cast<size_t>(x)];
  }
  return mask;
}

// A rectangle of ones, rows [y0, y1) and columns [x0, x1), on an h x w mask.
torch::Tensor rectangle(int64_t h, int64_t w, int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  torch::Tensor mask = torch::zeros({h, w}, torch::kUInt8);
  mask.slice(0, y0, y1).slice(1, x0, x1).fill_(1);
  return mask;
}

TEST(CocoMasks, SquarePolygonCoversThePixelsWhoseCentresItHolds) {
  // The square with corners (2,2) and (7,7) covers pixels 2..6 in both directions (pixel x spans
  // [x, x + 1)): a 5x5 block, area 25 like the polygon's.
  const torch::Tensor mask = vt::decode_segmentation(json::array({{2, 2, 7, 2, 7, 7, 2, 7}}), 10, 12);
  EXPECT_TRUE(torch::equal(mask, rectangle(10, 12, 2, 7, 2, 7)));
  EXPECT_EQ(vt::rle_area(vt::rle_from_polygon({2, 2, 7, 2, 7, 7, 2, 7}, 10, 12)), 25u);
}

TEST(CocoMasks, TriangleAsPycocotoolsDrawsIt) {
  // The right triangle (1,1), (9,1), (1,8) on a 10-row, 12-column image, as pycocotools draws it
  // (its encoding below): rows 1..6, the hypotenuse x = 9 - 8/7 (y - 1) cutting each row one pixel
  // shorter; 27 pixels for a polygon of area 28. Pixel (1, 7), whose centre the hypotenuse only
  // just clears (x = 1.57 at y = 7.5), stays out: pycocotools traces the edge at 5x resolution and
  // rounds, which is what the port reproduces.
  const torch::Tensor expected = mask_of({
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
      {0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},
      {0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
      {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0},
      {0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0},
      {0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0},
      {0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
  });
  const vt::RleMask rle = vt::rle_from_polygon({1, 1, 9, 1, 1, 8}, 10, 12);
  EXPECT_TRUE(torch::equal(vt::rle_decode(rle), expected)) << vt::rle_decode(rle);
  EXPECT_EQ(vt::rle_to_string(rle), ";6400O1O1O1O1OX1");  // pycocotools' encoding of it
}

TEST(CocoMasks, UncompressedRleIsColumnMajor) {
  // 3 rows x 2 columns, counts [1, 2, 1, 2]: column 0 is 0,1,1 and column 1 is 0,1,1 again.
  const json segmentation = {{"counts", {1, 2, 1, 2}}, {"size", {3, 2}}};
  const torch::Tensor mask = vt::decode_segmentation(segmentation, 3, 2);
  EXPECT_TRUE(torch::equal(mask, mask_of({{0, 0}, {1, 1}, {1, 1}})));
  // A mask starting with a 1 starts with a run of 0 zeros.
  const vt::RleMask rle = vt::rle_encode(mask_of({{1, 0}, {1, 0}, {0, 1}}));
  EXPECT_EQ(rle.counts, (std::vector<uint32_t>{0, 2, 3, 1}));
  EXPECT_EQ(vt::rle_area(rle), 3u);
}

TEST(CocoMasks, CompressedCountsRoundTrip) {
  // rleToString: counts 0, 2, 3 -> '0', '2', '3' (value + 48); the fourth is stored as its
  // difference from the second, 1 - 2 = -1: the 5 bits 0x1f with the sign bit 0x10 set and no
  // continuation, 31 + 48 = 'O'.
  vt::RleMask rle;
  rle.height = 3;
  rle.width = 2;
  rle.counts = {0, 2, 3, 1};
  EXPECT_EQ(vt::rle_to_string(rle), "023O");
  EXPECT_EQ(vt::rle_from_string("023O", 3, 2).counts, rle.counts);
  // 1000 = 0b11111'01000 needs three characters: 8 with the continuation bit (8 + 32 + 48 = 'X'),
  // 31 with it too, as its 0x10 bit would read as a sign (31 + 32 + 48 = 'o'), then 0 ('0').
  vt::RleMask big;
  big.height = 1000;
  big.width = 2;
  big.counts = {1000, 1000};
  const std::string text = vt::rle_to_string(big);
  EXPECT_EQ(text, "Xo0Xo0");
  EXPECT_EQ(vt::rle_from_string(text, 1000, 2).counts, big.counts);
  const json segmentation = {{"counts", text}, {"size", {1000, 2}}};
  EXPECT_EQ(vt::decode_segmentation(segmentation, 1000, 2).sum().item<int64_t>(), 1000);
}

TEST(CocoMasks, EncodeDecodeRoundTrip) {
  const torch::Tensor mask = torch::rand({17, 23}) > 0.6;
  const vt::RleMask rle = vt::rle_encode(mask);
  EXPECT_TRUE(torch::equal(vt::rle_decode(rle), mask.to(torch::kUInt8)));
  EXPECT_EQ(vt::rle_area(rle), static_cast<uint64_t>(mask.sum().item<int64_t>()));
  EXPECT_EQ(vt::rle_from_string(vt::rle_to_string(rle), 17, 23).counts, rle.counts);
}

TEST(CocoMasks, MergeAndIou) {
  const vt::RleMask a = vt::rle_encode(rectangle(6, 6, 0, 4, 0, 4));  // 16 px
  const vt::RleMask b = vt::rle_encode(rectangle(6, 6, 2, 6, 2, 6));  // 16 px, 4 shared
  EXPECT_EQ(vt::rle_area(vt::rle_merge({a, b})), 28u);
  EXPECT_EQ(vt::rle_area(vt::rle_merge({a, b}, /*intersect=*/true)), 4u);
  EXPECT_DOUBLE_EQ(vt::rle_iou(a, b, false), 4.0 / 28.0);
  EXPECT_DOUBLE_EQ(vt::rle_iou(a, b, true), 4.0 / 16.0);  // crowd: over the detection's area
  const vt::RleMask apart = vt::rle_encode(rectangle(6, 6, 5, 6, 5, 6));
  EXPECT_EQ(vt::rle_iou(a, apart, true), 0.0);
  const vt::RleMask empty = vt::rle_encode(torch::zeros({6, 6}, torch::kUInt8));
  EXPECT_EQ(vt::rle_iou(empty, empty, false), 0.0);
}

TEST(CocoMasks, PolygonsMatchPycocotools) {
  const json& cases = mask_golden()["polygons"];
  ASSERT_GE(cases.size(), 30u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    const vt::RleMask rle = vt::rle_from_segmentation(c["segmentation"], c["height"], c["width"]);
    EXPECT_EQ(vt::rle_to_string(rle), c["counts"].get<std::string>()) << "case " << i << ": " << c["segmentation"].dump();
  }
}

TEST(CocoMasks, CocoSampleAnnotationsDecodeAsPycocotoolsAndTheShippedMask) {
  std::ifstream in(fixture("coco-sample/instances.json"));
  const json instances = json::parse(in);
  const int64_t height = instances["images"][0]["height"], width = instances["images"][0]["width"];
  const json& expected = mask_golden()["coco_sample"];
  // Every annotation decodes to pycocotools' RLE exactly.
  std::vector<std::pair<double, std::pair<int64_t, torch::Tensor>>> by_area;  // (area, (category, mask))
  for (const json& annotation : instances["annotations"]) {
    const vt::RleMask rle = vt::rle_from_segmentation(annotation["segmentation"], height, width);
    EXPECT_EQ(vt::rle_to_string(rle), expected[std::to_string(annotation["id"].get<int64_t>())].get<std::string>())
        << "annotation " << annotation["id"];
    by_area.push_back({annotation["area"].get<double>(), {annotation["category_id"].get<int64_t>(), vt::rle_decode(rle)}});
  }
  // The shipped semantic mask was drawn from the same polygons, largest first, but by another
  // rasteriser (PIL's ImageDraw.polygon reproduces it to 1 pixel): pycocotools' masks painted the
  // same way differ from it on 2314 pixels, all on object edges.
  std::sort(by_area.begin(), by_area.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  torch::Tensor painted = torch::zeros({height, width}, torch::kUInt8);
  for (const auto& [area, entry] : by_area) painted.masked_fill_(entry.second.to(torch::kBool), entry.first);
  const vt::Image shipped = vt::read_label_map_file(fixture("coco-sample/000000039769_mask.png"));
  ASSERT_EQ(shipped.width, width);
  ASSERT_EQ(shipped.height, height);
  ASSERT_EQ(shipped.channels, 1);
  const torch::Tensor png = torch::from_blob(const_cast<uint8_t*>(shipped.pixels.data()), {height, width}, torch::kUInt8).clone();
  EXPECT_EQ(painted.ne(png).sum().item<int64_t>(), 2314);
  // Differences lie on edges: every differing pixel has a neighbour (4-connected) whose shipped
  // label differs from its own.
  const torch::Tensor padded = torch::constant_pad_nd(png.to(torch::kInt32), {1, 1, 1, 1}, -1);
  const torch::Tensor centre = png.to(torch::kInt32);
  const torch::Tensor edge =
      padded.slice(0, 0, height).slice(1, 1, width + 1).ne(centre) | padded.slice(0, 2, height + 2).slice(1, 1, width + 1).ne(centre) |
      padded.slice(0, 1, height + 1).slice(1, 0, width).ne(centre) | padded.slice(0, 1, height + 1).slice(1, 2, width + 2).ne(centre);
  const torch::Tensor differing = painted.ne(png);
  EXPECT_GT(edge.index({differing}).to(torch::kFloat32).mean().item<float>(), 0.5f);
}

TEST(CocoMasks, RejectsBadInput) {
  expect_error([] { vt::rle_from_polygon({1, 1, 5, 1, 5}, 8, 8); }, {"even number", "5"});
  expect_error([] { vt::decode_segmentation(json::array({{1, 1, 5, 1, 5, 5, 1}}), 8, 8); }, {"polygon 0", "7 coordinates"});
  expect_error([] { vt::decode_segmentation(json::array({{1, 1, 5, 1}}), 8, 8); }, {"polygon 0", "at least 3 points"});
  expect_error([] { vt::decode_segmentation(json::array({{1, 1, 5, 1, 5, 5}, {1, 2, 3}}), 8, 8); }, {"polygon 1", "3 coordinates"});
  expect_error([] { vt::decode_segmentation({{"counts", {1, 2, 3}}, {"size", {3, 3}}}, 3, 3); }, {"add up to 6", "9 pixels"});
  expect_error([] { vt::decode_segmentation({{"counts", {1, -2, 3}}, {"size", {3, 3}}}, 3, 3); }, {"count 1", "-2"});
  expect_error([] { vt::decode_segmentation({{"counts", "023O"}, {"size", {3, 3}}}, 3, 3); }, {"add up to 6", "9 pixels"});
  expect_error([] { vt::decode_segmentation({{"counts", "02 3"}, {"size", {3, 2}}}, 3, 2); }, {"character 2"});
  expect_error([] { vt::decode_segmentation({{"counts", "023O"}, {"size", {2, 3}}}, 3, 2); }, {"size [2, 3]", "3x2"});
  expect_error([] { vt::decode_segmentation({{"counts", "0"}}, 3, 2); }, {"`counts` and `size`"});
  expect_error([] { vt::decode_segmentation("polygon", 3, 2); }, {"list of polygons or an RLE object"});
  expect_error([] { vt::rle_from_polygon({1, 1, std::nan(""), 1, 5, 5}, 8, 8); }, {"coordinate 2"});
  expect_error([] { vt::rle_encode(torch::zeros({2, 2, 2})); }, {"[H, W]"});
  expect_error([] { vt::rle_encode(torch::zeros({2, 2})); }, {"bool or integer", "Float"});
  const vt::RleMask wide = vt::rle_encode(torch::zeros({2, 3}, torch::kUInt8)), tall = vt::rle_encode(torch::zeros({3, 2}, torch::kUInt8));
  expect_error([&] { vt::rle_iou(wide, tall, false); }, {"2x3", "3x2"});
  expect_error([&] { vt::rle_merge({wide, tall}); }, {"mask 1"});
  vt::RleMask short_counts = wide;
  short_counts.counts = {2, 3};
  expect_error([&] { vt::rle_decode(short_counts); }, {"add up to 5", "6 pixels"});
}

// ---------------------------------------------------------------------------------------------
// Mask mAP
// ---------------------------------------------------------------------------------------------

std::vector<double> stats(const vt::CocoMetrics& m) {
  return {m.map,   m.map_50, m.map_75,  m.map_small, m.map_medium, m.map_large,
          m.mar_1, m.mar_10, m.mar_100, m.mar_small, m.mar_medium, m.mar_large};
}

vt::GroundTruthMask truth_mask(int64_t image, int64_t category, const torch::Tensor& mask, bool crowd = false) {
  vt::GroundTruthMask truth;
  truth.image_id = image;
  truth.category_id = category;
  truth.mask = vt::rle_encode(mask);
  truth.iscrowd = crowd;
  return truth;
}

vt::DetectionMask detection_mask(int64_t image, int64_t category, const torch::Tensor& mask, double score) {
  vt::DetectionMask detection;
  detection.image_id = image;
  detection.category_id = category;
  detection.mask = vt::rle_encode(mask);
  detection.score = score;
  return detection;
}

TEST(MaskEval, HandWorkedExample) {
  // One 10x10 image, one ground truth: the 5x5 block rows 0-4, columns 0-4 (25 px: small).
  // The detection is that block moved one column right: intersection 20, union 30, IoU 2/3. It
  // matches at IoU thresholds .50, .55, .60, .65 (4 of 10) with precision 1, so AP = 0.4,
  // AP50 = 1, AP75 = 0; recall likewise 0.4; everything is small, medium and large are -1.
  const std::vector<vt::GroundTruthMask> gt = {truth_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5))};
  const std::vector<vt::DetectionMask> dt = {detection_mask(1, 1, rectangle(10, 10, 0, 5, 1, 6), 0.9)};
  const std::vector<double> expected = {0.4, 1, 0, 0.4, -1, -1, 0.4, 0.4, 0.4, 0.4, -1, -1};
  const std::vector<double> actual = stats(vt::coco_evaluate_masks({1}, gt, dt));
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-12) << "stat " << i;
}

TEST(MaskEval, CrowdRegionAbsorbsDetectionsInsideIt) {
  // Ground truth: block rows 0-4, columns 0-4, and a crowd region over rows 5-9. The exact
  // detection matches the block; a 4x4 detection inside the crowd region has IoU 16/16 = 1 with
  // it (crowd IoU divides by the detection's area) and is ignored, not a false positive: AP = 1.
  // Without the crowd flag the same region is counted ground truth (IoU 16/50, no match): the
  // higher-scored detection is then a false positive and AP drops.
  const torch::Tensor block = rectangle(10, 10, 0, 5, 0, 5);
  const torch::Tensor region = rectangle(10, 10, 5, 10, 0, 10);
  const std::vector<vt::DetectionMask> dt = {detection_mask(1, 1, block, 0.9), detection_mask(1, 1, rectangle(10, 10, 6, 10, 2, 6), 0.95)};
  const vt::CocoMetrics crowd = vt::coco_evaluate_masks({1}, {truth_mask(1, 1, block), truth_mask(1, 1, region, true)}, dt);
  EXPECT_NEAR(crowd.map, 1.0, 1e-12);  // precision is tp / (tp + fp + eps)
  EXPECT_EQ(crowd.mar_100, 1.0);
  const vt::CocoMetrics counted = vt::coco_evaluate_masks({1}, {truth_mask(1, 1, block), truth_mask(1, 1, region)}, dt);
  EXPECT_LT(counted.map, 0.5);
  EXPECT_EQ(counted.mar_100, 0.5);
}

TEST(MaskEval, NoDetectionsAndNoGroundTruth) {
  const std::vector<vt::GroundTruthMask> gt = {truth_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5))};
  const std::vector<double> none = stats(vt::coco_evaluate_masks({1}, gt, {}));
  EXPECT_EQ(none, (std::vector<double>{0, 0, 0, 0, -1, -1, 0, 0, 0, 0, -1, -1}));
  const std::vector<double> nothing = stats(vt::coco_evaluate_masks({1}, {}, {detection_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5), 0.5)}));
  EXPECT_EQ(nothing, std::vector<double>(12, -1));
}

TEST(MaskEval, MatchesPycocotools) {
  const json& cases = mask_golden()["segm"];
  ASSERT_GE(cases.size(), 16u);
  for (size_t index = 0; index < cases.size(); ++index) {
    const json& c = cases[index];
    std::vector<int64_t> image_ids;
    for (const json& image : c["images"]) image_ids.push_back(image["id"]);
    std::vector<vt::GroundTruthMask> gt;
    for (const json& row : c["ground_truth"]) {
      vt::GroundTruthMask truth;
      truth.image_id = row["image_id"];
      truth.category_id = row["category_id"];
      truth.mask = vt::rle_from_segmentation(row["segmentation"], row["segmentation"]["size"][0], row["segmentation"]["size"][1]);
      truth.area = row["area"];
      truth.iscrowd = row["iscrowd"].get<int>() != 0;
      gt.push_back(truth);
    }
    std::vector<vt::DetectionMask> dt;
    for (const json& row : c["detections"]) {
      vt::DetectionMask detection;
      detection.image_id = row["image_id"];
      detection.category_id = row["category_id"];
      detection.mask = vt::rle_from_segmentation(row["segmentation"], row["segmentation"]["size"][0], row["segmentation"]["size"][1]);
      detection.score = row["score"];
      dt.push_back(detection);
    }
    const std::vector<double> expected = c["stats"].get<std::vector<double>>();
    const std::vector<double> actual = stats(vt::coco_evaluate_masks(image_ids, gt, dt));
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(actual[i], expected[i]) << std::setprecision(17) << "case " << index << ", stat " << i << ": " << actual[i]
                                        << " vs pycocotools " << expected[i];
    }
  }
}

TEST(MaskEval, RejectsBadInput) {
  const std::vector<vt::GroundTruthMask> gt = {truth_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5))};
  expect_error([&] { vt::coco_evaluate_masks({1}, gt, {detection_mask(1, 1, rectangle(8, 10, 0, 5, 0, 5), 0.5)}); },
               {"coco_evaluate_masks", "detections[0]", "8x10", "10x10"});
  vt::DetectionMask short_counts = detection_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5), 0.5);
  short_counts.mask.counts.pop_back();
  expect_error([&] { vt::coco_evaluate_masks({1}, gt, {short_counts}); }, {"detections[0]", "RLE counts"});
  expect_error([&] { vt::coco_evaluate_masks({1}, gt, {detection_mask(2, 1, rectangle(10, 10, 0, 5, 0, 5), 0.5)}); },
               {"coco_evaluate_masks", "image_id 2"});
  expect_error([&] { vt::coco_evaluate_masks({1}, gt, {detection_mask(1, 1, rectangle(10, 10, 0, 5, 0, 5), std::nan(""))}); },
               {"detections[0]", "score"});
}

// ---------------------------------------------------------------------------------------------
// Panoptic quality
// ---------------------------------------------------------------------------------------------

vt::PanopticAnnotation panoptic(const std::vector<std::vector<int>>& rows, std::vector<vt::PanopticSegment> segments) {
  vt::PanopticAnnotation annotation;
  annotation.segment_ids = mask_of(rows).to(torch::kInt64);
  annotation.segments = std::move(segments);
  return annotation;
}

const std::vector<vt::PanopticCategory> kThingAndStuff = {{1, true}, {2, false}};

TEST(PanopticQuality, HandWorkedTwoImages) {
  // Category 1 is a thing, 2 stuff. 4x4 images.
  // Image A. Ground truth: segment 1 (cat 1) the left two columns (8 px), segment 2 (cat 2) the
  // right two (8 px). Prediction: 5 (cat 1) rows 0-2 of the left columns (6 px): IoU 6/8 = 0.75,
  // a TP; 6 (cat 2) the right columns and pixel (3, 1) (9 px): IoU 8/9, a TP; (3, 0) VOID.
  // Image B. Ground truth: segment 1 (cat 1) rows 0-1, the rest VOID. Prediction: 1 (cat 2) on
  // rows 0-1 (wrong category: no match, nothing of it on VOID, a FP of cat 2); 2 (cat 1) on rows
  // 2-3, all on VOID (ignored, not a FP). Ground truth 1 is unmatched: a FN of cat 1.
  // Cat 1: tp 1, iou 0.75, fp 0, fn 1: PQ = 0.75 / 1.5 = 0.5, SQ 0.75, RQ 1 / 1.5 = 2/3.
  // Cat 2: tp 1, iou 8/9, fp 1, fn 0: PQ = (8/9) / 1.5 = 16/27, SQ 8/9, RQ 2/3.
  // All: PQ (1/2 + 16/27) / 2 = 59/108, SQ (3/4 + 8/9) / 2 = 59/72, RQ 2/3.
  const auto gt_a = panoptic({{1, 1, 2, 2}, {1, 1, 2, 2}, {1, 1, 2, 2}, {1, 1, 2, 2}}, {{1, 1}, {2, 2}});
  const auto pred_a = panoptic({{5, 5, 6, 6}, {5, 5, 6, 6}, {5, 5, 6, 6}, {0, 6, 6, 6}}, {{5, 1}, {6, 2}});
  const auto gt_b = panoptic({{1, 1, 1, 1}, {1, 1, 1, 1}, {0, 0, 0, 0}, {0, 0, 0, 0}}, {{1, 1}});
  const auto pred_b = panoptic({{1, 1, 1, 1}, {1, 1, 1, 1}, {2, 2, 2, 2}, {2, 2, 2, 2}}, {{1, 2}, {2, 1}});
  const vt::PanopticMetrics metrics = vt::panoptic_quality({gt_a, gt_b}, {pred_a, pred_b}, kThingAndStuff);
  EXPECT_NEAR(metrics.all.pq, 59.0 / 108, 1e-12);
  EXPECT_NEAR(metrics.all.sq, 59.0 / 72, 1e-12);
  EXPECT_NEAR(metrics.all.rq, 2.0 / 3, 1e-12);
  EXPECT_EQ(metrics.all.n, 2);
  EXPECT_NEAR(metrics.things.pq, 0.5, 1e-12);
  EXPECT_NEAR(metrics.things.sq, 0.75, 1e-12);
  EXPECT_NEAR(metrics.things.rq, 2.0 / 3, 1e-12);
  EXPECT_EQ(metrics.things.n, 1);
  EXPECT_NEAR(metrics.stuff.pq, 16.0 / 27, 1e-12);
  EXPECT_NEAR(metrics.stuff.sq, 8.0 / 9, 1e-12);
  EXPECT_EQ(metrics.stuff.n, 1);
  EXPECT_NEAR(metrics.per_category.at(1).pq, 0.5, 1e-12);
  EXPECT_NEAR(metrics.per_category.at(2).rq, 2.0 / 3, 1e-12);
  EXPECT_EQ(metrics.as_map().at("pq_st"), metrics.stuff.pq);
  EXPECT_EQ(metrics.as_map().size(), 9u);

  // Fed one image at a time, the sums are the same.
  vt::PanopticQualityAccumulator accumulator(kThingAndStuff);
  accumulator.add(gt_a, pred_a);
  accumulator.add(gt_b, pred_b);
  EXPECT_EQ(accumulator.images(), 2u);
  EXPECT_EQ(accumulator.stats().at(1).tp, 1);
  EXPECT_EQ(accumulator.stats().at(1).fn, 1);
  EXPECT_EQ(accumulator.stats().at(2).fp, 1);
  EXPECT_EQ(accumulator.compute().all.pq, metrics.all.pq);
}

TEST(PanopticQuality, VoidPixelsLeaveTheUnion) {
  // Ground truth 1 (cat 1) is the left column (4 px), the rest VOID. The prediction covers the
  // left two columns (8 px): plain IoU would be 4/8 = 0.5, not > 0.5, but its 4 px on VOID leave
  // the union: 4 / (8 + 4 - 4 - 4) = 1. A TP with IoU 1.
  const auto gt = panoptic({{1, 0, 0, 0}, {1, 0, 0, 0}, {1, 0, 0, 0}, {1, 0, 0, 0}}, {{1, 1}});
  const auto pred = panoptic({{3, 3, 0, 0}, {3, 3, 0, 0}, {3, 3, 0, 0}, {3, 3, 0, 0}}, {{3, 1}});
  const vt::PanopticMetrics metrics = vt::panoptic_quality({gt}, {pred}, kThingAndStuff);
  EXPECT_EQ(metrics.all.pq, 1.0);
  EXPECT_EQ(metrics.all.n, 1);  // cat 2 has no tp, fp or fn: left out of the mean
  EXPECT_EQ(metrics.stuff.n, 0);
  EXPECT_EQ(metrics.stuff.pq, 0.0);
}

TEST(PanopticQuality, CrowdRegionsAreNeitherMatchedNorMissed) {
  // Ground truth: a crowd region 7 (cat 1) on the left half, segment 8 (cat 2) on the right half.
  // Prediction 1 (cat 1) covers the crowd region exactly: crowd never matches, and all of it lies
  // on a crowd region of its category, so it is no FP. Prediction 2 (cat 1) covers the right half:
  // a FP of cat 1 (no crowd of cat 1 under it, no VOID). Segment 8 is then a FN of cat 2.
  // Cat 1: fp 1 -> PQ 0; cat 2: fn 1 -> PQ 0; n = 2.
  const auto gt = panoptic({{7, 7, 8, 8}, {7, 7, 8, 8}}, {{7, 1, true}, {8, 2}});
  const auto pred = panoptic({{1, 1, 2, 2}, {1, 1, 2, 2}}, {{1, 1}, {2, 1}});
  vt::PanopticQualityAccumulator accumulator(kThingAndStuff);
  accumulator.add(gt, pred);
  EXPECT_EQ(accumulator.stats().at(1).fp, 1);
  EXPECT_EQ(accumulator.stats().at(1).fn, 0);  // the crowd region is not missed
  EXPECT_EQ(accumulator.stats().at(2).fn, 1);
  EXPECT_EQ(accumulator.compute().all.n, 2);
  EXPECT_EQ(accumulator.compute().all.pq, 0.0);
  // Half on a crowd region is not more than half: a FP again.
  const auto half = panoptic({{1, 1, 1, 1}, {1, 1, 1, 1}}, {{1, 1}});
  vt::PanopticQualityAccumulator halves(kThingAndStuff);
  halves.add(panoptic({{7, 7, 8, 8}, {7, 7, 8, 8}}, {{7, 1, true}, {8, 2}}), half);
  EXPECT_EQ(halves.stats().at(1).fp, 1);
}

TEST(PanopticQuality, EdgeCases) {
  const auto gt = panoptic({{1, 1, 2, 2}, {1, 1, 2, 2}}, {{1, 1}, {2, 2}});
  // No predictions: every ground truth is a FN, PQ 0 over both categories.
  const vt::PanopticMetrics nothing_predicted = vt::panoptic_quality({gt}, {panoptic({{0, 0, 0, 0}, {0, 0, 0, 0}}, {})}, kThingAndStuff);
  EXPECT_EQ(nothing_predicted.all.n, 2);
  EXPECT_EQ(nothing_predicted.all.pq, 0.0);
  EXPECT_EQ(nothing_predicted.all.sq, 0.0);
  // A category with predictions but no ground truth counts (its FPs), one with neither does not.
  const std::vector<vt::PanopticCategory> three = {{1, true}, {2, false}, {3, true}};
  const auto pred = panoptic({{1, 1, 2, 2}, {1, 1, 3, 3}}, {{1, 1}, {2, 2}, {3, 2}});
  const auto only_cat1 = panoptic({{1, 1, 0, 0}, {1, 1, 0, 0}}, {{1, 1}});
  const vt::PanopticMetrics metrics = vt::panoptic_quality({only_cat1}, {pred}, three);
  // Cat 1: TP IoU 1; cat 2: two predictions on VOID (ignored); cat 3: nothing -> n = 1.
  EXPECT_EQ(metrics.all.n, 1);
  EXPECT_EQ(metrics.all.pq, 1.0);
  EXPECT_EQ(metrics.per_category.at(3).pq, 0.0);
  // No images at all: panopticapi would divide by zero; here 0 with n = 0.
  const vt::PanopticMetrics empty = vt::panoptic_quality({}, {}, kThingAndStuff);
  EXPECT_EQ(empty.all.n, 0);
  EXPECT_EQ(empty.all.pq, 0.0);
  // transformers' "no segment" -1 reads as VOID.
  const auto minus_one = panoptic({{1, 1, 0, 0}, {1, 1, 0, 0}}, {{1, 1}});
  vt::PanopticAnnotation hf = panoptic({{1, 1, 0, 0}, {1, 1, 0, 0}}, {{1, 1}});
  hf.segment_ids.masked_fill_(hf.segment_ids == 0, -1);
  EXPECT_EQ(vt::panoptic_quality({minus_one}, {hf}, kThingAndStuff).all.pq, 1.0);
}

TEST(PanopticQuality, MatchesPanopticapi) {
  // panopticapi's loop body and pq_average run on random problems (see make_mask_golden.py):
  // same sums, and the same averages to the last bit.
  const json& cases = mask_golden()["panoptic"];
  ASSERT_GE(cases.size(), 12u);
  for (size_t index = 0; index < cases.size(); ++index) {
    const json& c = cases[index];
    std::vector<vt::PanopticCategory> categories;
    for (const json& category : c["categories"]) categories.push_back({category["id"], category["isthing"].get<int>() == 1});
    vt::PanopticQualityAccumulator accumulator(categories);
    for (const json& image : c["images"]) {
      const auto annotation = [&](const char* map, const char* segments) {
        vt::PanopticAnnotation result;
        result.segment_ids = torch::tensor(image[map].get<std::vector<int64_t>>()).view({image["height"], image["width"]});
        for (const json& segment : image[segments]) {
          result.segments.push_back({segment["id"], segment["category_id"], segment.value("iscrowd", 0) == 1});
        }
        return result;
      };
      accumulator.add(annotation("ground_truth", "ground_truth_segments"), annotation("prediction", "prediction_segments"));
    }
    for (const auto& [category, stats] : c["stats"].items()) {
      const vt::PanopticCategoryStats& actual = accumulator.stats().at(std::stoll(category));
      EXPECT_EQ(actual.iou, stats[0].get<double>()) << "case " << index << ", category " << category;
      EXPECT_EQ(actual.tp, stats[1].get<int64_t>()) << "case " << index << ", category " << category;
      EXPECT_EQ(actual.fp, stats[2].get<int64_t>()) << "case " << index << ", category " << category;
      EXPECT_EQ(actual.fn, stats[3].get<int64_t>()) << "case " << index << ", category " << category;
    }
    const vt::PanopticMetrics metrics = accumulator.compute();
    const std::vector<std::pair<const char*, const vt::PanopticQuality*>> groups = {
        {"all", &metrics.all}, {"things", &metrics.things}, {"stuff", &metrics.stuff}};
    for (const auto& [name, quality] : groups) {
      const json& expected = c[name];
      EXPECT_EQ(quality->pq, expected[0].get<double>()) << std::setprecision(17) << "case " << index << ", " << name;
      EXPECT_EQ(quality->sq, expected[1].get<double>()) << std::setprecision(17) << "case " << index << ", " << name;
      EXPECT_EQ(quality->rq, expected[2].get<double>()) << std::setprecision(17) << "case " << index << ", " << name;
      EXPECT_EQ(quality->n, expected[3].get<int64_t>()) << "case " << index << ", " << name;
    }
  }
}

TEST(PanopticQuality, RejectsBadInput) {
  const auto gt = panoptic({{1, 1, 2, 2}, {1, 1, 2, 2}}, {{1, 1}, {2, 2}});
  expect_error(
      [&] {
        vt::panoptic_quality({gt}, {panoptic({{1, 1, 5, 5}, {1, 1, 5, 5}}, {{1, 1}})}, kThingAndStuff);
      },
      {"segment id 5", "predicted map", "not in its segments"});
  expect_error(
      [&] {
        vt::panoptic_quality({gt}, {panoptic({{1, 1, 0, 0}, {1, 1, 0, 0}}, {{1, 1}, {4, 2}})}, kThingAndStuff);
      },
      {"predicted segment 4", "not in the map"});
  expect_error(
      [&] {
        vt::panoptic_quality({gt}, {panoptic({{1, 1, 0, 0}, {1, 1, 0, 0}}, {{1, 9}})}, kThingAndStuff);
      },
      {"unknown category_id 9"});
  expect_error([&] { vt::panoptic_quality({gt}, {panoptic({{1, 1, 0}, {1, 1, 0}}, {{1, 1}})}, kThingAndStuff); }, {"[2, 4]", "[2, 3]"});
  expect_error([&] { vt::panoptic_quality({gt}, {}, kThingAndStuff); }, {"1 ground-truth images", "0 predictions"});
  expect_error(
      [&] {
        vt::panoptic_quality({panoptic({{1, 3}}, {{1, 1}})}, {panoptic({{1, 1}}, {{1, 1}})}, kThingAndStuff);
      },
      {"segment id 3", "ground-truth map"});
  expect_error(
      [&] {
        vt::panoptic_quality({gt}, {panoptic({{1, 1, 1, 1}, {1, 1, 1, 1}}, {{1, 1}, {1, 2}})}, kThingAndStuff);
      },
      {"segment id 1", "listed twice"});
  expect_error([&] { vt::PanopticQualityAccumulator({{1, true}, {1, false}}); }, {"category 1", "twice"});
}

}  // namespace
