// Metrics for masks: COCO mask mAP (pycocotools' COCOeval with iouType 'segm') and panoptic
// quality (panopticapi's pq_compute).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "eval/coco_eval.h"
#include "io/coco_masks.h"

namespace vt {

// ---- Mask mAP ----

struct GroundTruthMask {
  int64_t image_id = 0;
  int64_t category_id = 0;
  RleMask mask;      // the image's size
  double area = -1;  // COCO's "area" (what the area ranges read); < 0: the mask's pixel count
  bool iscrowd = false;
};

struct DetectionMask {
  int64_t image_id = 0;
  int64_t category_id = 0;
  RleMask mask;  // its pixel count is its area, as COCO.loadRes sets it
  double score = 0;
};

// COCOeval(iouType='segm'): coco_evaluate's matching, accumulation and summary with maskApi's
// rleIou (a crowd ground truth divides the intersection by the detection's area) and areas from
// the masks. `image_ids` as for coco_evaluate. Throws vt::Error for masks whose counts do not
// cover their size, masks of one image with different sizes, non-finite scores.
CocoMetrics coco_evaluate_masks(const std::vector<int64_t>& image_ids, const std::vector<GroundTruthMask>& ground_truth,
                                const std::vector<DetectionMask>& detections, int64_t max_detections = 100);

// ---- Panoptic quality ----

struct PanopticSegment {
  int64_t id = 0;  // the value its pixels hold in the segment map; > 0
  int64_t category_id = 0;
  bool iscrowd = false;  // ground truth only: a crowd region, neither matched nor missed
};

// One image's panoptic segmentation, as a COCO panoptic PNG (after rgb2id) and its segments_info.
struct PanopticAnnotation {
  torch::Tensor segment_ids;  // [H, W] integer; 0 is VOID (unlabelled), and so are negative ids (transformers' -1)
  std::vector<PanopticSegment> segments;
};

struct PanopticCategory {
  int64_t id = 0;
  bool isthing = true;
};

// One category's sums over the images (panopticapi's PQStatCat).
struct PanopticCategoryStats {
  double iou = 0;  // sum of the matched pairs' IoU
  int64_t tp = 0, fp = 0, fn = 0;
};

struct PanopticQuality {
  double pq = 0, sq = 0, rq = 0;
  int64_t n = 0;  // categories averaged (those with any tp, fp or fn)
};

struct PanopticMetrics {
  PanopticQuality all, things, stuff;
  // Every category given, in their order; 0, 0, 0 for one without tp, fp or fn (n unused).
  std::map<int64_t, PanopticQuality> per_category;
  // "pq", "sq", "rq", and "pq_th" ... for things, "pq_st" ... for stuff.
  std::map<std::string, double> as_map() const;
};

// panopticapi's pq_compute, one image at a time (its pq_compute_single_core), then pq_average.
// Per image: a ground-truth and a predicted segment of one category match when their IoU > 0.5,
// where the union leaves out the predicted segment's pixels on VOID ground truth; crowd ground
// truth never matches and is never missed; an unmatched prediction is a false positive unless more
// than half of it lies on VOID or on a crowd region of its category (the last crowd segment of that
// category listed, as panopticapi's dict keeps it); an unmatched non-crowd ground truth is a false
// negative. Averages run over the categories with tp + fp + fn > 0 (all, things, stuff); where none
// has, panopticapi divides by zero and this gives 0 with n = 0.
// The ground truth's areas are its pixel counts (panopticapi reads the JSON's "area", which COCO
// writes as the pixel count).
class PanopticQualityAccumulator {
 public:
  explicit PanopticQualityAccumulator(std::vector<PanopticCategory> categories);
  // One image. Throws vt::Error (as panopticapi raises KeyError) for a predicted segment id in the
  // map but not in `segments` or the other way round, an unknown category, and also for ground truth
  // ids without segment info, repeated or non-positive ids in `segments`, maps of different shapes.
  void add(const PanopticAnnotation& ground_truth, const PanopticAnnotation& prediction);
  PanopticMetrics compute() const;
  // The sums so far, by category id.
  const std::map<int64_t, PanopticCategoryStats>& stats() const { return stats_; }
  size_t images() const { return images_; }

 private:
  std::vector<PanopticCategory> categories_;
  std::map<int64_t, PanopticCategoryStats> stats_;
  size_t images_ = 0;
};

// All images at once: ground_truth[i] pairs with predictions[i].
PanopticMetrics panoptic_quality(const std::vector<PanopticAnnotation>& ground_truth, const std::vector<PanopticAnnotation>& predictions,
                                 const std::vector<PanopticCategory>& categories);

}  // namespace vt
