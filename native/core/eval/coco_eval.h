// COCO detection metrics computed as pycocotools' COCOeval does for bounding boxes: per image and
// category, detections (by descending score, at most max_detections of them, as pycocotools'
// maxDets cuts them) are greedily matched to ground truth at each IoU threshold 0.50:0.05:0.95;
// crowd ground truth (iscrowd) absorbs matches without counting; ground truth outside an area
// range is ignored for that range; precision is interpolated over 101 recall points and averaged
// over categories that have ground truth.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace vt {

struct CocoBox {
  double x = 0, y = 0, width = 0, height = 0;  // pixels, top-left corner and size (COCO's bbox)
};

struct GroundTruthBox {
  int64_t image_id = 0;
  int64_t category_id = 0;
  CocoBox box;
  double area = -1;  // COCO's "area" (segment area); < 0: width * height
  bool iscrowd = false;
};

struct DetectionBox {
  int64_t image_id = 0;
  int64_t category_id = 0;
  CocoBox box;
  double score = 0;
};

struct CocoMetrics {
  double map = -1;                                         // AP @ IoU .50:.95, all areas, 100 detections (pycocotools' stats[0])
  double map_50 = -1;                                      // stats[1]
  double map_75 = -1;                                      // stats[2]
  double map_small = -1, map_medium = -1, map_large = -1;  // stats[3..5]
  double mar_1 = -1, mar_10 = -1, mar_100 = -1;            // stats[6..8]
  double mar_small = -1, mar_medium = -1, mar_large = -1;  // stats[9..11]
  // -1 where pycocotools prints -1 (no ground truth in that setting).
  std::map<std::string, double> as_map() const;  // "map", "map_50", ... for reports
};

// `image_ids`: every image evaluated (images without ground truth or detections count too); every
// box must lie on one of them. maxDets is [1, 10, max_detections] (at least 10), and map, map_50 ..
// map_large and mar_100 .. mar_large use max_detections (pycocotools' stats[0] reads 100 whatever
// maxDets holds, so both agree at the default). Throws vt::Error for non-finite or negative-size
// boxes and non-finite scores.
CocoMetrics coco_evaluate(const std::vector<int64_t>& image_ids, const std::vector<GroundTruthBox>& ground_truth,
                          const std::vector<DetectionBox>& detections, int64_t max_detections = 100);

// What COCOeval's matching needs of one ground truth or detection, whatever its shape (a box for
// iouType 'bbox', a mask for 'segm').
struct CocoRegion {
  int64_t image_id = 0;
  int64_t category_id = 0;
  double area = 0;       // decides the area ranges: ground truth's COCO "area", a detection's own area
  bool iscrowd = false;  // ground truth only
  double score = 0;      // detections only
};

// The IoU of detections[detection] with ground_truth[ground_truth] (indices into the vectors given
// to coco_evaluate_regions), with maskApi's crowd rule where the ground truth is a crowd.
using CocoIouFunction = std::function<double(size_t detection, size_t ground_truth)>;

// coco_evaluate's evaluation, accumulation and summary for regions of any shape: COCOeval with the
// IoU that `iou` gives (maskApi's bbIou for boxes, rleIou for masks). Same rules and checks as
// coco_evaluate (image ids, max_detections >= 10, finite scores, no NaN area); error messages
// begin with `caller`.
CocoMetrics coco_evaluate_regions(const std::vector<int64_t>& image_ids, const std::vector<CocoRegion>& ground_truth,
                                  const std::vector<CocoRegion>& detections, const CocoIouFunction& iou, int64_t max_detections = 100,
                                  const std::string& caller = "coco_evaluate");

}  // namespace vt
