// coco_evaluate against hand-worked answers (each derived in its comment) and against pycocotools'
// COCOeval on random problems.
//
// Golden data: native/core/tests/data/coco_eval_golden.json, written by
// native/core/tests/data/make_coco_golden.py (see there): per case, the inputs and
// COCOeval(iouType='bbox').stats, which must come out bit for bit.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iomanip>
#include <string>
#include <vector>

#include "eval/coco_eval.h"
#include "test_util.h"

namespace {

constexpr double kTol = 1e-12;

vt::GroundTruthBox truth(int64_t image, int64_t category, double x, double y, double w, double h, bool crowd = false, double area = -1) {
  vt::GroundTruthBox box;
  box.image_id = image;
  box.category_id = category;
  box.box = {x, y, w, h};
  box.iscrowd = crowd;
  box.area = area;
  return box;
}

vt::DetectionBox detection(int64_t image, int64_t category, double x, double y, double w, double h, double score) {
  vt::DetectionBox box;
  box.image_id = image;
  box.category_id = category;
  box.box = {x, y, w, h};
  box.score = score;
  return box;
}

std::vector<double> stats(const vt::CocoMetrics& m) {
  return {m.map,   m.map_50, m.map_75,  m.map_small, m.map_medium, m.map_large,
          m.mar_1, m.mar_10, m.mar_100, m.mar_small, m.mar_medium, m.mar_large};
}

// In pycocotools' stats order.
const char* const kNames[] = {"map",   "map_50", "map_75",  "map_small", "map_medium", "map_large",
                              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"};

void expect_stats(const vt::CocoMetrics& metrics, const std::vector<double>& expected, double tolerance = kTol) {
  const std::vector<double> actual = stats(metrics);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], tolerance) << kNames[i];
  }
}

TEST(CocoEval, HandWorkedExample) {
  // One image, one category, two 10x10 ground truth boxes (area 100: "small"):
  //   g1 = [0, 0, 10, 10], g2 = [20, 0, 10, 10].
  // Detections, by score: d1 (0.9) = g1 exactly (IoU 1); d2 (0.8) far from both (IoU 0);
  // d3 (0.7) = [20, 0, 10, 7.2] inside g2: IoU 72 / 100 = 0.72.
  //
  // IoU thresholds .50 .55 .60 .65 .70 (five): d1 TP, d2 FP, d3 TP. Cumulative tp = 1 1 2,
  // fp = 0 1 1, recall = .5 .5 1, precision = 1 .5 2/3, whose envelope (max to the right) is
  // 1 2/3 2/3. The 101 recall points 0, .01, .., 1: the 51 up to .50 take the first detection
  // reaching them (precision 1), the 50 above take d3 (2/3): AP = (51 + 50 * 2/3) / 101 = 253/303.
  // Thresholds .75 .. .95 (five): d3 no longer matches: tp = 1 1 1, recall stops at .5, the 50
  // points above .5 get precision 0: AP = 51/101.
  // mAP = (5 * 253/303 + 5 * 51/101) / 10 = (253 + 153) / 606 = 203/303; AP50 = 253/303;
  // AP75 = 51/101. Recall (100 detections): 1 at five thresholds, .5 at five: 0.75; with one
  // detection per image only d1 counts: 0.5. Everything is small: medium and large have no
  // ground truth (-1). (pycocotools divides tp by fp + tp + 2^-52, hence a tolerance.)
  const std::vector<vt::GroundTruthBox> gt = {truth(1, 1, 0, 0, 10, 10), truth(1, 1, 20, 0, 10, 10)};
  const std::vector<vt::DetectionBox> dt = {detection(1, 1, 0, 0, 10, 10, 0.9), detection(1, 1, 50, 50, 10, 10, 0.8),
                                            detection(1, 1, 20, 0, 10, 7.2, 0.7)};
  const vt::CocoMetrics metrics = vt::coco_evaluate({1}, gt, dt);
  expect_stats(metrics, {203.0 / 303, 253.0 / 303, 51.0 / 101, 203.0 / 303, -1, -1, 0.5, 0.75, 0.75, 0.75, -1, -1});

  // Neither a category with detections only nor an image with nothing changes any number.
  std::vector<vt::DetectionBox> more = dt;
  more.push_back(detection(1, 99, 0, 0, 10, 10, 0.95));
  more.push_back(detection(2, 99, 0, 0, 10, 10, 0.5));
  EXPECT_EQ(vt::coco_evaluate({1, 2, 3}, gt, more).as_map(), metrics.as_map());
  // Input order of the detections does not matter when scores differ.
  const std::vector<vt::DetectionBox> reversed(dt.rbegin(), dt.rend());
  EXPECT_EQ(vt::coco_evaluate({1}, gt, reversed).as_map(), metrics.as_map());
}

TEST(CocoEval, PerfectDetectionsScoreOne) {
  // Every ground truth detected exactly, one per image and category (so even mar_1 is 1), with
  // boxes in all three area ranges.
  const std::vector<vt::GroundTruthBox> gt = {truth(1, 1, 0, 0, 10, 10), truth(1, 2, 50, 50, 200, 150), truth(2, 1, 5, 5, 50, 60),
                                              truth(3, 2, 1, 2, 20, 25)};
  std::vector<vt::DetectionBox> dt;
  const double scores[] = {0.3, 0.9, 0.5, 0.7};
  for (size_t i = 0; i < gt.size(); ++i) {
    const vt::CocoBox& b = gt[i].box;
    dt.push_back(detection(gt[i].image_id, gt[i].category_id, b.x, b.y, b.width, b.height, scores[i]));
  }
  expect_stats(vt::coco_evaluate({1, 2, 3}, gt, dt), std::vector<double>(12, 1.0));
}

TEST(CocoEval, NoDetections) {
  // Ground truth only in the small range: 0 where there is ground truth, -1 where there is none.
  const std::vector<vt::GroundTruthBox> gt = {truth(1, 1, 0, 0, 10, 10), truth(2, 3, 5, 5, 20, 20)};
  expect_stats(vt::coco_evaluate({1, 2}, gt, {}), {0, 0, 0, 0, -1, -1, 0, 0, 0, 0, -1, -1});
  // Nothing at all, or detections without any ground truth: no setting can be scored.
  expect_stats(vt::coco_evaluate({1}, {}, {}), std::vector<double>(12, -1));
  expect_stats(vt::coco_evaluate({1}, {}, {detection(1, 1, 0, 0, 5, 5, 0.5)}), std::vector<double>(12, -1));
  // Only crowd ground truth: nothing is counted either.
  expect_stats(vt::coco_evaluate({1}, {truth(1, 1, 0, 0, 10, 10, true)}, {detection(1, 1, 0, 0, 10, 10, 0.5)}),
               std::vector<double>(12, -1));
}

TEST(CocoEval, CrowdRegionAbsorbsDetections) {
  // g1 = [0, 0, 10, 10]; crowd region c = [100, 100, 200, 200]. Detections: e (0.95) =
  // [120, 120, 30, 30] and f (0.8) = [150, 150, 20, 20] lie inside c, g1 exactly detected (0.9).
  // Against a crowd region IoU is intersection / detection area = 1, so e and f match c (a crowd
  // takes any number of matches) and are ignored: one true positive out of one counted ground
  // truth, AP = 1 at every threshold. With a single detection per image, only e is kept, which is
  // ignored: mar_1 = 0. c is large, g1 small: the large range counts nothing (-1).
  const std::vector<vt::DetectionBox> dt = {detection(1, 1, 120, 120, 30, 30, 0.95), detection(1, 1, 0, 0, 10, 10, 0.9),
                                            detection(1, 1, 150, 150, 20, 20, 0.8)};
  expect_stats(vt::coco_evaluate({1}, {truth(1, 1, 0, 0, 10, 10), truth(1, 1, 100, 100, 200, 200, true)}, dt),
               {1, 1, 1, 1, -1, -1, 0, 1, 1, 1, -1, -1});

  // The same region as an ordinary ground truth: e and f overlap it by 900/40000 and 400/40000,
  // so both are false positives and c is missed. All: ranked e (FP), g1 (TP), f (FP) give recall
  // 0 .5 .5, precision 0 .5 1/3, envelope .5 .5 1/3: the 51 points up to .5 get .5, AP = 25.5/101;
  // recall .5, and 0 with one detection (e). Small: c (large) is ignored, e and f (small boxes)
  // stay false positives; recall reaches 1 at precision .5 for all 101 points: AP .5, AR 1.
  // Large: c counted but missed, the small detections ignored there: AP 0, AR 0.
  expect_stats(vt::coco_evaluate({1}, {truth(1, 1, 0, 0, 10, 10), truth(1, 1, 100, 100, 200, 200)}, dt),
               {25.5 / 101, 25.5 / 101, 25.5 / 101, 0.5, -1, 0, 0, 0.5, 0.5, 1, -1, 0});
}

TEST(CocoEval, MaxDetectionsTruncates) {
  // Twelve separate 10x10 objects, each detected exactly, scores 1.00, 0.99, .. 0.89.
  std::vector<vt::GroundTruthBox> gt;
  std::vector<vt::DetectionBox> dt;
  for (int i = 0; i < 12; ++i) {
    gt.push_back(truth(1, 1, i * 20, 0, 10, 10));
    dt.push_back(detection(1, 1, i * 20, 0, 10, 10, 1 - i * 0.01));
  }
  // All kept: AP 1, recall 1; one detection per image finds 1 of 12.
  expect_stats(vt::coco_evaluate({1}, gt, dt, 100), {1, 1, 1, 1, -1, -1, 1.0 / 12, 10.0 / 12, 1, 1, -1, -1});
  // Ten kept: recall stops at 10/12 = 0.833..; the 84 recall points 0 .. .83 get precision 1,
  // the rest 0: AP = 84/101.
  expect_stats(vt::coco_evaluate({1}, gt, dt, 10),
               {84.0 / 101, 84.0 / 101, 84.0 / 101, 84.0 / 101, -1, -1, 1.0 / 12, 10.0 / 12, 10.0 / 12, 10.0 / 12, -1, -1});

  // The highest scores are the ones kept: ten confident false positives push the one true
  // positive (lowest score) out at max_detections = 10 (AP 0); with all eleven it ranks last:
  // precision 1/11 at recall 1, AP = 1/11.
  std::vector<vt::DetectionBox> confident;
  for (int i = 0; i < 10; ++i) confident.push_back(detection(1, 1, 100 + i * 20, 100, 10, 10, 0.9 - i * 0.01));
  confident.push_back(detection(1, 1, 0, 0, 10, 10, 0.1));
  const std::vector<vt::GroundTruthBox> one = {truth(1, 1, 0, 0, 10, 10)};
  EXPECT_EQ(vt::coco_evaluate({1}, one, confident, 10).map, 0);
  EXPECT_NEAR(vt::coco_evaluate({1}, one, confident, 100).map, 1.0 / 11, kTol);
}

TEST(CocoEval, AreaRangesScoreSeparately) {
  // small g_s = [0, 0, 10, 10] (100 px), detected exactly (0.9); medium g_m = [100, 0, 50, 50]
  // (2500 px), missed; large g_l = [200, 200, 200, 200] (40000 px), detected by [200, 200, 200,
  // 124] (0.8): IoU 24800 / 40000 = 0.62, a match at .50 .55 .60 only.
  // small: g_s found; the large detection matches the ignored g_l or, unmatched, lies outside
  //   the range: ignored. AP 1, AR 1.
  // medium: g_m never found, both detections ignored: AP 0, AR 0.
  // large: 3 thresholds of 10 find g_l, at the others its detection is a false positive: 0.3.
  // all: three counted. At .50-.60 both detections match: recall 1/3, 2/3 at precision 1: the 67
  //   points 0 .. .66 get 1: 67/101. Above: recall stops at 1/3: 34 points (0 .. .33): 34/101.
  //   mAP = (3 * 67 + 7 * 34) / 1010 = 439/1010; AP50 = 67/101; AP75 = 34/101.
  //   AR = (3 * 2/3 + 7 * 1/3) / 10 = 13/30; one detection per image: 1/3.
  const std::vector<vt::GroundTruthBox> gt = {truth(1, 1, 0, 0, 10, 10), truth(1, 1, 100, 0, 50, 50), truth(1, 1, 200, 200, 200, 200)};
  const std::vector<vt::DetectionBox> dt = {detection(1, 1, 0, 0, 10, 10, 0.9), detection(1, 1, 200, 200, 200, 124, 0.8)};
  expect_stats(vt::coco_evaluate({1}, gt, dt), {439.0 / 1010, 67.0 / 101, 34.0 / 101, 1, 0, 0.3, 1.0 / 3, 13.0 / 30, 13.0 / 30, 1, 0, 0.3});

  // Ground truth ranges go by COCO's "area" (the segment's), not the box: a 40x40 box (1600 px,
  // medium) whose segment covers 900 px is small; its exact detection (1600 px) still counts
  // there because it is matched. Without an area field the box's 1600 px decide.
  const std::vector<vt::DetectionBox> exact = {detection(1, 1, 0, 0, 40, 40, 0.5)};
  expect_stats(vt::coco_evaluate({1}, {truth(1, 1, 0, 0, 40, 40, false, 900)}, exact), {1, 1, 1, 1, -1, -1, 1, 1, 1, 1, -1, -1});
  expect_stats(vt::coco_evaluate({1}, {truth(1, 1, 0, 0, 40, 40)}, exact), {1, 1, 1, -1, 1, -1, 1, 1, 1, -1, 1, -1});
}

TEST(CocoEval, MatchesPycocotools) {
  const std::string path = std::string(VISIONTORCH_SOURCE_DIR) + "/native/core/tests/data/coco_eval_golden.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  const nlohmann::json golden = nlohmann::json::parse(in);
  ASSERT_GE(golden["cases"].size(), 60u);
  int index = 0;
  for (const nlohmann::json& c : golden["cases"]) {
    std::vector<vt::GroundTruthBox> gt;
    for (const nlohmann::json& row : c["ground_truth"]) {
      gt.push_back(
          truth(row[0], row[1], row[2], row[3], row[4], row[5], row[7].get<int>() != 0, row[6].is_null() ? -1.0 : row[6].get<double>()));
    }
    std::vector<vt::DetectionBox> dt;
    for (const nlohmann::json& row : c["detections"]) {
      dt.push_back(detection(row[0], row[1], row[2], row[3], row[4], row[5], row[6]));
    }
    const vt::CocoMetrics metrics =
        vt::coco_evaluate(c["image_ids"].get<std::vector<int64_t>>(), gt, dt, c["max_detections"].get<int64_t>());
    const std::vector<double> expected = c["stats"].get<std::vector<double>>();
    ASSERT_EQ(expected.size(), 12u);
    // Exactly pycocotools' numbers, not merely close ones.
    const std::vector<double> actual = stats(metrics);
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(actual[i], expected[i]) << std::setprecision(17) << "case " << index << ", " << kNames[i] << ": " << actual[i]
                                        << " vs pycocotools " << expected[i];
    }
    ++index;
  }
}

TEST(CocoEval, AsMapNamesEveryMetric) {
  vt::CocoMetrics metrics;
  metrics.map = 0.5;
  metrics.mar_large = 0.25;
  const std::map<std::string, double> values = metrics.as_map();
  EXPECT_EQ(values.size(), 12u);
  for (const char* key : {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100", "mar_small",
                          "mar_medium", "mar_large"}) {
    EXPECT_EQ(values.count(key), 1u) << key;
  }
  EXPECT_EQ(values.at("map"), 0.5);
  EXPECT_EQ(values.at("mar_large"), 0.25);
  EXPECT_EQ(values.at("map_50"), -1);
}

TEST(CocoEval, RejectsBadInput) {
  const std::vector<vt::GroundTruthBox> gt = {truth(1, 1, 0, 0, 10, 10)};
  vt_test::expect_error([&] { vt::coco_evaluate({1}, gt, {detection(7, 1, 0, 0, 5, 5, 0.5)}); },
                        {"detections[0]", "image_id 7", "image_ids"});
  vt_test::expect_error([&] { vt::coco_evaluate({2}, gt, {}); }, {"ground_truth[0]", "image_id 1"});
  vt_test::expect_error([&] { vt::coco_evaluate({1}, gt, {detection(1, 1, 0, 0, 5, 5, std::numeric_limits<double>::quiet_NaN())}); },
                        {"detections[0]", "score"});
  vt_test::expect_error([&] { vt::coco_evaluate({1}, {truth(1, 1, 0, 0, -3, 10)}, {}); }, {"ground_truth[0]", "negative", "-3"});
  vt_test::expect_error([&] { vt::coco_evaluate({1}, gt, {detection(1, 1, std::numeric_limits<double>::infinity(), 0, 5, 5, 0.5)}); },
                        {"detections[0]", "non-finite box"});
  vt_test::expect_error([&] { vt::coco_evaluate({1}, gt, {}, 5); }, {"max_detections", "at least 10", "5"});
}

}  // namespace
