// A port of pycocotools' COCOeval (evaluate, evaluateImg, accumulate, summarize) for any region
// shape through an IoU callback, and of maskApi.c's bbIou for iouType 'bbox'. The aim is
// pycocotools' numbers to the last bit, so the arithmetic keeps its operation order: np.linspace's
// thresholds, the IoU expression, the eps in the precision, and numpy's summation order in the
// final means. This file is compiled without floating-point contraction (see CMakeLists.txt)
// because a fused multiply-add rounds differently.
#include "eval/coco_eval.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "common/error.h"

namespace vt {
namespace {

constexpr int kAreaAll = 0, kAreaSmall = 1, kAreaMedium = 2, kAreaLarge = 3;
constexpr int kAreaCount = 4;
constexpr int kMaxDetCount = 3;  // maxDets = [1, 10, max_detections]

// np.linspace(start, stop, num): start + i * step with step = (stop - start) / (num - 1), and the
// last point exactly `stop`.
std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> values(num);
  const double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) values[i] = static_cast<double>(i) * step + start;
  values[num - 1] = stop;
  return values;
}

// Params.setDetParams: [0, 1e5^2], [0, 32^2], [32^2, 96^2], [96^2, 1e5^2], bounds inclusive.
constexpr double kAreaRanges[kAreaCount][2] = {{0, 1e10}, {0, 1024}, {1024, 9216}, {9216, 1e10}};

bool outside(double area, int range) { return area < kAreaRanges[range][0] || area > kAreaRanges[range][1]; }

// maskApi.c's bbIou for one pair; a crowd ground truth divides by the detection's area only, so a
// detection inside a crowd region scores 1 however large the region.
double box_iou(const CocoBox& d, const CocoBox& g, bool crowd) {
  const double w = std::fmin(d.width + d.x, g.width + g.x) - std::fmax(d.x, g.x);
  if (w <= 0) return 0;
  const double h = std::fmin(d.height + d.y, g.height + g.y) - std::fmax(d.y, g.y);
  if (h <= 0) return 0;
  const double intersection = w * h;
  const double detection_area = d.width * d.height;
  const double ground_truth_area = g.width * g.height;
  const double denominator = crowd ? detection_area : detection_area + ground_truth_area - intersection;
  return intersection / denominator;
}

// numpy's pairwise summation (pairwise_sum in loops_utils.h), which np.mean uses on a contiguous
// array: blocks of up to 128 summed in 8 interleaved lanes, larger runs split in halves.
double pairwise_sum(const double* a, size_t n) {
  if (n < 8) {
    double sum = 0.;
    for (size_t i = 0; i < n; ++i) sum += a[i];
    return sum;
  }
  if (n <= 128) {
    double lanes[8];
    for (int j = 0; j < 8; ++j) lanes[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) lanes[j] += a[i + j];
    }
    double sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; i < n; ++i) sum += a[i];
    return sum;
  }
  size_t half = n / 2;
  half -= half % 8;
  return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

// np.mean(s[s > -1]), or -1 when nothing is valid (summarize's rule). numpy's reduction runs
// through its iterator buffer, 8192 elements at a time, summing each chunk pairwise.
double mean_of_valid(const std::vector<double>& values) {
  std::vector<double> valid;
  valid.reserve(values.size());
  for (double value : values) {
    if (value > -1) valid.push_back(value);
  }
  if (valid.empty()) return -1;
  constexpr size_t kBufferSize = 8192;
  double sum = 0;
  for (size_t start = 0; start < valid.size(); start += kBufferSize) {
    sum += pairwise_sum(valid.data() + start, std::min(kBufferSize, valid.size() - start));
  }
  return sum / static_cast<double>(valid.size());
}

// Indices of one (image, category), in input order as COCO's getAnnIds returns them.
struct Group {
  std::vector<size_t> ground_truth;
  std::vector<size_t> detections;
};

// evaluateImg's result for one image, category and area range.
struct ImageResult {
  std::vector<double> scores;        // [D], highest first
  std::vector<char> matched;         // [T, D]: dtMatches != 0
  std::vector<char> ignored;         // [T, D]: dtIgnore
  int64_t counted_ground_truth = 0;  // gtIgnore == 0
};

class Evaluator {
 public:
  Evaluator(const std::vector<CocoRegion>& ground_truth, const std::vector<CocoRegion>& detections, const CocoIouFunction& iou,
            int64_t max_detections)
      : ground_truth_(ground_truth),
        detections_(detections),
        iou_(iou),
        iou_thresholds_(linspace(.5, 0.95, 10)),
        recall_thresholds_(linspace(.0, 1.00, 101)),
        max_dets_{1, 10, max_detections} {}

  // COCOeval.evaluate for one category: [area range][image], over the images (ascending id) that
  // have ground truth or detections of it (evaluateImg returns None for the others).
  std::vector<std::vector<ImageResult>> evaluate_category(const std::map<int64_t, Group>& images) const {
    std::vector<std::vector<ImageResult>> per_area(kAreaCount);
    for (const auto& [image_id, group] : images) {
      const std::vector<size_t> detections = sorted_detections(group.detections);
      const std::vector<double> ious = compute_ious(group.ground_truth, detections);
      for (int area = 0; area < kAreaCount; ++area) {
        per_area[area].push_back(evaluate_image(group.ground_truth, detections, ious, area));
      }
    }
    return per_area;
  }

  // COCOeval.accumulate for one category, area range and maxDets entry: fills precision[t][r]
  // (T x R) and recall[t] (T), which stay -1 when the setting has no counted ground truth.
  void accumulate(const std::vector<ImageResult>& images, int64_t max_det, std::vector<double>& precision,
                  std::vector<double>& recall) const {
    const size_t thresholds = iou_thresholds_.size(), recall_points = recall_thresholds_.size();
    // Concatenate every image's first max_det detections, then a stable sort by descending score
    // (np.argsort(-dtScores, kind='mergesort')): ties keep image order, then rank in the image.
    struct Entry {
      double score;
      const ImageResult* image;
      size_t index;
    };
    std::vector<Entry> entries;
    int64_t counted = 0;
    for (const ImageResult& image : images) {
      const size_t kept = std::min(image.scores.size(), static_cast<size_t>(max_det));
      for (size_t d = 0; d < kept; ++d) entries.push_back({image.scores[d], &image, d});
      counted += image.counted_ground_truth;
    }
    if (counted == 0) return;
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.score > b.score; });

    const size_t nd = entries.size();
    const double eps = std::numeric_limits<double>::epsilon();  // np.spacing(1)
    std::vector<double> rc(nd), pr(nd);
    for (size_t t = 0; t < thresholds; ++t) {
      double tp = 0, fp = 0;
      for (size_t i = 0; i < nd; ++i) {
        const ImageResult& image = *entries[i].image;
        const size_t cell = t * image.scores.size() + entries[i].index;
        if (!image.ignored[cell]) {
          if (image.matched[cell]) {
            tp += 1;
          } else {
            fp += 1;
          }
        }
        rc[i] = tp / static_cast<double>(counted);
        pr[i] = tp / (fp + tp + eps);
      }
      recall[t] = nd > 0 ? rc[nd - 1] : 0;
      // Precision envelope: the best precision at any recall at least as high.
      for (size_t i = nd; i-- > 1;) {
        if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
      }
      // np.searchsorted(rc, recThrs, side='left'); recall points beyond the last detection keep
      // precision 0.
      size_t i = 0;
      for (size_t r = 0; r < recall_points; ++r) {
        while (i < nd && rc[i] < recall_thresholds_[r]) ++i;
        precision[t * recall_points + r] = i < nd ? pr[i] : 0;
      }
    }
  }

  const std::vector<double>& iou_thresholds() const { return iou_thresholds_; }
  size_t recall_points() const { return recall_thresholds_.size(); }
  int64_t max_det(int index) const { return max_dets_[index]; }

 private:
  // Detections by descending score (stable), cut to maxDets[-1] as computeIoU and evaluateImg do.
  std::vector<size_t> sorted_detections(std::vector<size_t> indices) const {
    std::stable_sort(indices.begin(), indices.end(), [&](size_t a, size_t b) { return detections_[a].score > detections_[b].score; });
    if (static_cast<int64_t>(indices.size()) > max_dets_[kMaxDetCount - 1]) {
      indices.resize(static_cast<size_t>(max_dets_[kMaxDetCount - 1]));
    }
    return indices;
  }

  // [D, G] in ground truth input order.
  std::vector<double> compute_ious(const std::vector<size_t>& ground_truth, const std::vector<size_t>& detections) const {
    std::vector<double> ious(detections.size() * ground_truth.size());
    for (size_t d = 0; d < detections.size(); ++d) {
      for (size_t g = 0; g < ground_truth.size(); ++g) {
        ious[d * ground_truth.size() + g] = iou_(detections[d], ground_truth[g]);
      }
    }
    return ious;
  }

  ImageResult evaluate_image(const std::vector<size_t>& ground_truth, const std::vector<size_t>& detections,
                             const std::vector<double>& ious, int area) const {
    const size_t thresholds = iou_thresholds_.size();
    const size_t G = ground_truth.size(), D = detections.size();
    ImageResult result;
    result.matched.assign(thresholds * D, 0);
    result.ignored.assign(thresholds * D, 0);
    for (size_t d : detections) result.scores.push_back(detections_[d].score);

    // Ground truth ignored here (crowd or outside the area range) goes last, order kept otherwise.
    std::vector<char> ignore_of(G);
    for (size_t g = 0; g < G; ++g) {
      const CocoRegion& truth = ground_truth_[ground_truth[g]];
      ignore_of[g] = truth.iscrowd || outside(truth.area, area);
      if (!ignore_of[g]) ++result.counted_ground_truth;
    }
    std::vector<size_t> order(G);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_partition(order.begin(), order.end(), [&](size_t g) { return !ignore_of[g]; });

    if (G > 0 && D > 0) {
      std::vector<char> taken(G);
      for (size_t t = 0; t < thresholds; ++t) {
        std::fill(taken.begin(), taken.end(), 0);
        for (size_t d = 0; d < D; ++d) {
          double best = std::min(iou_thresholds_[t], 1 - 1e-10);
          int64_t m = -1;  // position in `order` of the best match so far
          for (size_t p = 0; p < G; ++p) {
            const size_t g = order[p];
            // A matched ground truth takes no second detection, unless it is a crowd.
            if (taken[p] && !ground_truth_[ground_truth[g]].iscrowd) continue;
            // Matched to a counted ground truth and only ignored ones remain: stop.
            if (m > -1 && !ignore_of[order[m]] && ignore_of[g]) break;
            const double iou = ious[d * G + g];
            if (iou < best) continue;
            best = iou;
            m = static_cast<int64_t>(p);
          }
          if (m == -1) continue;
          result.ignored[t * D + d] = ignore_of[order[m]];
          result.matched[t * D + d] = 1;
          taken[m] = 1;
        }
      }
    }
    // Unmatched detections outside the area range are not false positives of this range.
    for (size_t d = 0; d < D; ++d) {
      if (!outside(detections_[detections[d]].area, area)) continue;
      for (size_t t = 0; t < thresholds; ++t) {
        if (!result.matched[t * D + d]) result.ignored[t * D + d] = 1;
      }
    }
    return result;
  }

  const std::vector<CocoRegion>& ground_truth_;
  const std::vector<CocoRegion>& detections_;
  const CocoIouFunction& iou_;
  std::vector<double> iou_thresholds_;
  std::vector<double> recall_thresholds_;
  int64_t max_dets_[kMaxDetCount];
};

void check_box(const CocoBox& box, const char* what, size_t index) {
  VT_CHECK(std::isfinite(box.x) && std::isfinite(box.y) && std::isfinite(box.width) && std::isfinite(box.height), "coco_evaluate: ", what,
           "[", index, "] has a non-finite box (", box.x, ", ", box.y, ", ", box.width, ", ", box.height, ")");
  VT_CHECK(box.width >= 0 && box.height >= 0, "coco_evaluate: ", what, "[", index, "] has a negative box size: width ", box.width,
           ", height ", box.height);
}

}  // namespace

std::map<std::string, double> CocoMetrics::as_map() const {
  return {{"map", map},
          {"map_50", map_50},
          {"map_75", map_75},
          {"map_small", map_small},
          {"map_medium", map_medium},
          {"map_large", map_large},
          {"mar_1", mar_1},
          {"mar_10", mar_10},
          {"mar_100", mar_100},
          {"mar_small", mar_small},
          {"mar_medium", mar_medium},
          {"mar_large", mar_large}};
}

CocoMetrics coco_evaluate(const std::vector<int64_t>& image_ids, const std::vector<GroundTruthBox>& ground_truth,
                          const std::vector<DetectionBox>& detections, int64_t max_detections) {
  // COCOeval 'bbox': a ground truth's area is its COCO "area" (the box's when absent), a
  // detection's its box's (loadRes sets it so).
  std::vector<CocoRegion> truth_regions(ground_truth.size()), detection_regions(detections.size());
  for (size_t i = 0; i < ground_truth.size(); ++i) {
    const GroundTruthBox& truth = ground_truth[i];
    check_box(truth.box, "ground_truth", i);
    truth_regions[i] = {truth.image_id, truth.category_id, truth.area < 0 ? truth.box.width * truth.box.height : truth.area, truth.iscrowd,
                        0};
  }
  for (size_t i = 0; i < detections.size(); ++i) {
    const DetectionBox& detection = detections[i];
    check_box(detection.box, "detections", i);
    detection_regions[i] = {detection.image_id, detection.category_id, detection.box.width * detection.box.height, false, detection.score};
  }
  const CocoIouFunction iou = [&](size_t d, size_t g) { return box_iou(detections[d].box, ground_truth[g].box, ground_truth[g].iscrowd); };
  return coco_evaluate_regions(image_ids, truth_regions, detection_regions, iou, max_detections, "coco_evaluate");
}

CocoMetrics coco_evaluate_regions(const std::vector<int64_t>& image_ids, const std::vector<CocoRegion>& ground_truth,
                                  const std::vector<CocoRegion>& detections, const CocoIouFunction& iou, int64_t max_detections,
                                  const std::string& caller) {
  // The 1- and 10-detection recalls need at least that many; pycocotools' own maxDets sorting
  // would otherwise reorder the settings behind mar_10 and map.
  VT_CHECK(max_detections >= 10, caller, ": max_detections must be at least 10, got ", max_detections);
  const std::set<int64_t> images(image_ids.begin(), image_ids.end());

  // Categories as pycocotools indexes them, by id; each holds its images by id (the order of
  // accumulate's concatenation).
  std::map<int64_t, std::map<int64_t, Group>> categories;
  for (size_t i = 0; i < ground_truth.size(); ++i) {
    const CocoRegion& truth = ground_truth[i];
    VT_CHECK(images.count(truth.image_id) != 0, caller, ": ground_truth[", i, "] has image_id ", truth.image_id,
             ", which is not among image_ids");
    VT_CHECK(!std::isnan(truth.area), caller, ": ground_truth[", i, "] has area NaN");
    categories[truth.category_id][truth.image_id].ground_truth.push_back(i);
  }
  for (size_t i = 0; i < detections.size(); ++i) {
    const CocoRegion& detection = detections[i];
    VT_CHECK(images.count(detection.image_id) != 0, caller, ": detections[", i, "] has image_id ", detection.image_id,
             ", which is not among image_ids");
    VT_CHECK(!std::isnan(detection.area), caller, ": detections[", i, "] has area NaN");
    VT_CHECK(std::isfinite(detection.score), caller, ": detections[", i, "] has a non-finite score ", detection.score);
    // A category without ground truth only ever yields -1 (no counted ground truth), which every
    // mean skips, so its detections can be left out as pycocotools' results come out the same.
    const auto category = categories.find(detection.category_id);
    if (category != categories.end()) category->second[detection.image_id].detections.push_back(i);
  }

  Evaluator evaluator(ground_truth, detections, iou, max_detections);
  const size_t T = evaluator.iou_thresholds().size(), R = evaluator.recall_points(), K = categories.size();
  const size_t A = kAreaCount, M = kMaxDetCount;
  // pycocotools' layouts: precision [T, R, K, A, M], recall [T, K, A, M]; -1 = no ground truth.
  std::vector<double> precision(T * R * K * A * M, -1), recall(T * K * A * M, -1);
  std::vector<double> cell_precision(T * R), cell_recall(T);
  size_t k = 0;
  for (const auto& [category_id, category_images] : categories) {
    const std::vector<std::vector<ImageResult>> per_area = evaluator.evaluate_category(category_images);
    for (size_t a = 0; a < A; ++a) {
      for (size_t m = 0; m < M; ++m) {
        std::fill(cell_precision.begin(), cell_precision.end(), -1);
        std::fill(cell_recall.begin(), cell_recall.end(), -1);
        evaluator.accumulate(per_area[a], evaluator.max_det(static_cast<int>(m)), cell_precision, cell_recall);
        for (size_t t = 0; t < T; ++t) {
          for (size_t r = 0; r < R; ++r) {
            precision[(((t * R + r) * K + k) * A + a) * M + m] = cell_precision[t * R + r];
          }
          recall[((t * K + k) * A + a) * M + m] = cell_recall[t];
        }
      }
    }
    ++k;
  }

  // summarize()'s _summarize: the selected entries in C order (t, r, k, then every maxDets
  // position holding the requested value: with max_detections = 10 that is two, which changes the
  // rounding of the mean), means over those > -1. IoU .50 and .75 are iouThrs[0] and iouThrs[5].
  const auto average_precision = [&](int threshold, size_t a, int64_t max_det) {
    std::vector<double> selected;
    for (size_t t = 0; t < T; ++t) {
      if (threshold >= 0 && t != static_cast<size_t>(threshold)) continue;
      for (size_t r = 0; r < R; ++r) {
        for (size_t kk = 0; kk < K; ++kk) {
          for (size_t m = 0; m < M; ++m) {
            if (evaluator.max_det(static_cast<int>(m)) == max_det) {
              selected.push_back(precision[(((t * R + r) * K + kk) * A + a) * M + m]);
            }
          }
        }
      }
    }
    return mean_of_valid(selected);
  };
  const auto average_recall = [&](size_t a, int64_t max_det) {
    std::vector<double> selected;
    for (size_t t = 0; t < T; ++t) {
      for (size_t kk = 0; kk < K; ++kk) {
        for (size_t m = 0; m < M; ++m) {
          if (evaluator.max_det(static_cast<int>(m)) == max_det) selected.push_back(recall[((t * K + kk) * A + a) * M + m]);
        }
      }
    }
    return mean_of_valid(selected);
  };

  CocoMetrics metrics;
  metrics.map = average_precision(-1, kAreaAll, max_detections);
  metrics.map_50 = average_precision(0, kAreaAll, max_detections);
  metrics.map_75 = average_precision(5, kAreaAll, max_detections);
  metrics.map_small = average_precision(-1, kAreaSmall, max_detections);
  metrics.map_medium = average_precision(-1, kAreaMedium, max_detections);
  metrics.map_large = average_precision(-1, kAreaLarge, max_detections);
  metrics.mar_1 = average_recall(kAreaAll, 1);
  metrics.mar_10 = average_recall(kAreaAll, 10);
  metrics.mar_100 = average_recall(kAreaAll, max_detections);
  metrics.mar_small = average_recall(kAreaSmall, max_detections);
  metrics.mar_medium = average_recall(kAreaMedium, max_detections);
  metrics.mar_large = average_recall(kAreaLarge, max_detections);
  return metrics;
}

}  // namespace vt
