// COCOeval 'segm' on top of coco_evaluate_regions, and a port of panopticapi's
// pq_compute_single_core and PQStat.pq_average. The panoptic arithmetic keeps panopticapi's
// expressions and summation order (images in the order given, pairs by ground-truth id then
// predicted id as np.unique sorts them, categories in the order given) so that its numbers come out
// as a one-process pq_compute gives them.
#include "eval/mask_eval.h"

#include <map>
#include <set>
#include <utility>

#include "common/error.h"

namespace vt {

// ---- Mask mAP ----

namespace {

void check_mask(const RleMask& mask, const char* what, size_t index, std::map<int64_t, std::pair<int64_t, int64_t>>& image_sizes,
                int64_t image_id) {
  uint64_t sum = 0;
  for (uint32_t count : mask.counts) sum += count;
  VT_CHECK(mask.height >= 0 && mask.width >= 0 && sum == static_cast<uint64_t>(mask.height) * static_cast<uint64_t>(mask.width),
           "coco_evaluate_masks: ", what, "[", index, "] has RLE counts adding up to ", sum, " for a ", mask.height, "x", mask.width,
           " mask");
  const auto [size, inserted] = image_sizes.emplace(image_id, std::make_pair(mask.height, mask.width));
  VT_CHECK(inserted || size->second == std::make_pair(mask.height, mask.width), "coco_evaluate_masks: ", what, "[", index, "] is ",
           mask.height, "x", mask.width, " but another mask of image ", image_id, " is ", size->second.first, "x", size->second.second);
}

}  // namespace

CocoMetrics coco_evaluate_masks(const std::vector<int64_t>& image_ids, const std::vector<GroundTruthMask>& ground_truth,
                                const std::vector<DetectionMask>& detections, int64_t max_detections) {
  std::map<int64_t, std::pair<int64_t, int64_t>> image_sizes;
  std::vector<CocoRegion> truth_regions(ground_truth.size()), detection_regions(detections.size());
  for (size_t i = 0; i < ground_truth.size(); ++i) {
    const GroundTruthMask& truth = ground_truth[i];
    check_mask(truth.mask, "ground_truth", i, image_sizes, truth.image_id);
    const double area = truth.area < 0 ? static_cast<double>(rle_area(truth.mask)) : truth.area;
    truth_regions[i] = {truth.image_id, truth.category_id, area, truth.iscrowd, 0};
  }
  for (size_t i = 0; i < detections.size(); ++i) {
    const DetectionMask& detection = detections[i];
    check_mask(detection.mask, "detections", i, image_sizes, detection.image_id);
    detection_regions[i] = {detection.image_id, detection.category_id, static_cast<double>(rle_area(detection.mask)), false,
                            detection.score};
  }
  const CocoIouFunction iou = [&](size_t d, size_t g) {
    return rle_iou(detections[d].mask, ground_truth[g].mask, ground_truth[g].iscrowd);
  };
  return coco_evaluate_regions(image_ids, truth_regions, detection_regions, iou, max_detections, "coco_evaluate_masks");
}

// ---- Panoptic quality ----

namespace {

// Segment ids as int64, VOID (0) for every id <= 0.
torch::Tensor segment_map(const torch::Tensor& ids, const char* what) {
  VT_CHECK(ids.defined() && ids.dim() == 2, "panoptic quality: the ", what, " segment map must be [H, W], got ",
           ids.defined() ? std::to_string(ids.dim()) + " dimensions" : std::string("an undefined tensor"));
  VT_CHECK(!at::isFloatingType(ids.scalar_type()) && !at::isComplexType(ids.scalar_type()) && ids.scalar_type() != torch::kBool,
           "panoptic quality: the ", what, " segment map must hold integer ids, got ", ids.scalar_type());
  return ids.to(torch::kCPU, torch::kInt64).clamp_min(0).contiguous();
}

std::map<int64_t, const PanopticSegment*> segments_by_id(const std::vector<PanopticSegment>& segments, const char* what) {
  std::map<int64_t, const PanopticSegment*> by_id;
  for (size_t i = 0; i < segments.size(); ++i) {
    VT_CHECK(segments[i].id > 0, "panoptic quality: ", what, " segment ", i, " has id ", segments[i].id,
             "; ids must be positive (0 is VOID)");
    VT_CHECK(by_id.emplace(segments[i].id, &segments[i]).second, "panoptic quality: ", what, " segment id ", segments[i].id,
             " is listed twice");
  }
  return by_id;
}

}  // namespace

PanopticQualityAccumulator::PanopticQualityAccumulator(std::vector<PanopticCategory> categories) : categories_(std::move(categories)) {
  std::set<int64_t> seen;
  for (const PanopticCategory& category : categories_) {
    VT_CHECK(seen.insert(category.id).second, "panoptic quality: category ", category.id, " is listed twice");
    stats_[category.id];
  }
}

void PanopticQualityAccumulator::add(const PanopticAnnotation& ground_truth, const PanopticAnnotation& prediction) {
  const size_t image = images_;
  const torch::Tensor gt_ids = segment_map(ground_truth.segment_ids, "ground-truth");
  const torch::Tensor pred_ids = segment_map(prediction.segment_ids, "predicted");
  VT_CHECK(gt_ids.sizes() == pred_ids.sizes(), "panoptic quality: image ", image, ": the ground-truth map is ", gt_ids.sizes(),
           " but the predicted map is ", pred_ids.sizes());
  const auto gt_segments = segments_by_id(ground_truth.segments, "ground-truth");
  const auto pred_segments = segments_by_id(prediction.segments, "predicted");
  for (const auto* segments : {&gt_segments, &pred_segments}) {
    for (const auto& [id, segment] : *segments) {
      VT_CHECK(stats_.count(segment->category_id) != 0, "panoptic quality: image ", image, ": ",
               segments == &gt_segments ? "ground-truth" : "predicted", " segment ", id, " has unknown category_id ", segment->category_id);
    }
  }

  // The confusion of ground-truth and predicted ids: np.unique(gt * OFFSET + pred), sorted by
  // ground truth, then prediction. OFFSET only needs to exceed every predicted id.
  const int64_t offset = pred_ids.numel() > 0 ? pred_ids.max().item<int64_t>() + 1 : 1;
  const int64_t gt_max = gt_ids.numel() > 0 ? gt_ids.max().item<int64_t>() : 0;
  VT_CHECK(gt_max < (int64_t{1} << 62) / offset, "panoptic quality: image ", image, ": segment ids too large (", gt_max, " and ",
           offset - 1, ")");
  const torch::Tensor joint = gt_ids * offset + pred_ids;
  const auto unique = at::_unique2(joint.flatten(), /*sorted=*/true, /*return_inverse=*/false, /*return_counts=*/true);
  const torch::Tensor labels = std::get<0>(unique).contiguous(), counts = std::get<2>(unique).contiguous();
  const int64_t* label = labels.data_ptr<int64_t>();
  const int64_t* count = counts.data_ptr<int64_t>();
  std::vector<std::pair<std::pair<int64_t, int64_t>, int64_t>> pairs;  // ((gt, pred), intersection), sorted
  std::map<int64_t, int64_t> gt_area, pred_area, pred_on_void;
  for (int64_t i = 0; i < labels.numel(); ++i) {
    const int64_t gt = label[i] / offset, pred = label[i] % offset;
    pairs.push_back({{gt, pred}, count[i]});
    gt_area[gt] += count[i];
    pred_area[pred] += count[i];
    if (gt == 0) pred_on_void[pred] = count[i];
  }

  // Every segment in the maps has its info and every predicted segment is in the map (panopticapi's
  // sanity checks; a ground-truth segment listed but absent has area 0).
  for (const auto& [id, area] : pred_area) {
    VT_CHECK(id == 0 || pred_segments.count(id) != 0, "panoptic quality: image ", image, ": segment id ", id,
             " is in the predicted map but not in its segments");
  }
  for (const auto& [id, segment] : pred_segments) {
    VT_CHECK(pred_area.count(id) != 0, "panoptic quality: image ", image, ": predicted segment ", id, " is listed but not in the map");
  }
  for (const auto& [id, area] : gt_area) {
    VT_CHECK(id == 0 || gt_segments.count(id) != 0, "panoptic quality: image ", image, ": segment id ", id,
             " is in the ground-truth map but not in its segments");
  }
  const auto area_of = [](const std::map<int64_t, int64_t>& areas, int64_t id) {
    const auto found = areas.find(id);
    return found == areas.end() ? int64_t{0} : found->second;
  };

  // Matched pairs: same category, not crowd, IoU > 0.5 (unique by construction).
  std::set<int64_t> gt_matched, pred_matched;
  for (const auto& [ids, intersection] : pairs) {
    const auto [gt_label, pred_label] = ids;
    const auto gt = gt_segments.find(gt_label);
    const auto pred = pred_segments.find(pred_label);
    if (gt == gt_segments.end() || pred == pred_segments.end()) continue;
    if (gt->second->iscrowd) continue;
    if (gt->second->category_id != pred->second->category_id) continue;
    const int64_t union_area =
        area_of(pred_area, pred_label) + area_of(gt_area, gt_label) - intersection - area_of(pred_on_void, pred_label);
    const double iou = static_cast<double>(intersection) / static_cast<double>(union_area);
    if (iou > 0.5) {
      PanopticCategoryStats& stats = stats_[gt->second->category_id];
      stats.tp += 1;
      stats.iou += iou;
      gt_matched.insert(gt_label);
      pred_matched.insert(pred_label);
    }
  }

  // False negatives; crowd regions are remembered per category (the last one listed wins).
  std::map<int64_t, int64_t> crowd_by_category;
  for (const PanopticSegment& segment : ground_truth.segments) {
    if (gt_matched.count(segment.id) != 0) continue;
    if (segment.iscrowd) {
      crowd_by_category[segment.category_id] = segment.id;
      continue;
    }
    stats_[segment.category_id].fn += 1;
  }

  // False positives, unless mostly on VOID or on a crowd region of their category.
  std::map<std::pair<int64_t, int64_t>, int64_t> intersections(pairs.begin(), pairs.end());
  for (const auto& [pred_label, segment] : pred_segments) {
    if (pred_matched.count(pred_label) != 0) continue;
    int64_t ignored = area_of(pred_on_void, pred_label);
    const auto crowd = crowd_by_category.find(segment->category_id);
    if (crowd != crowd_by_category.end()) {
      const auto overlap = intersections.find({crowd->second, pred_label});
      if (overlap != intersections.end()) ignored += overlap->second;
    }
    if (static_cast<double>(ignored) / static_cast<double>(area_of(pred_area, pred_label)) > 0.5) continue;
    stats_[segment->category_id].fp += 1;
  }
  ++images_;
}

PanopticMetrics PanopticQualityAccumulator::compute() const {
  PanopticMetrics metrics;
  // PQStat.pq_average for all categories (isthing None), things, stuff.
  const auto average = [&](int isthing, bool record) {
    double pq = 0, sq = 0, rq = 0;
    int64_t n = 0;
    for (const PanopticCategory& category : categories_) {
      if (isthing >= 0 && category.isthing != (isthing == 1)) continue;
      const PanopticCategoryStats& stats = stats_.at(category.id);
      const double tp = static_cast<double>(stats.tp), fp = static_cast<double>(stats.fp), fn = static_cast<double>(stats.fn);
      if (stats.tp + stats.fp + stats.fn == 0) {
        if (record) metrics.per_category[category.id] = PanopticQuality{};
        continue;
      }
      n += 1;
      const double pq_class = stats.iou / (tp + 0.5 * fp + 0.5 * fn);
      const double sq_class = stats.tp != 0 ? stats.iou / tp : 0;
      const double rq_class = tp / (tp + 0.5 * fp + 0.5 * fn);
      if (record) metrics.per_category[category.id] = PanopticQuality{pq_class, sq_class, rq_class, 0};
      pq += pq_class;
      sq += sq_class;
      rq += rq_class;
    }
    if (n == 0) return PanopticQuality{};
    const double count = static_cast<double>(n);
    return PanopticQuality{pq / count, sq / count, rq / count, n};
  };
  metrics.all = average(-1, true);
  metrics.things = average(1, false);
  metrics.stuff = average(0, false);
  return metrics;
}

std::map<std::string, double> PanopticMetrics::as_map() const {
  return {{"pq", all.pq},       {"sq", all.sq},      {"rq", all.rq},      {"pq_th", things.pq}, {"sq_th", things.sq},
          {"rq_th", things.rq}, {"pq_st", stuff.pq}, {"sq_st", stuff.sq}, {"rq_st", stuff.rq}};
}

PanopticMetrics panoptic_quality(const std::vector<PanopticAnnotation>& ground_truth, const std::vector<PanopticAnnotation>& predictions,
                                 const std::vector<PanopticCategory>& categories) {
  VT_CHECK(ground_truth.size() == predictions.size(), "panoptic quality: ", ground_truth.size(), " ground-truth images but ",
           predictions.size(), " predictions");
  PanopticQualityAccumulator accumulator(categories);
  for (size_t i = 0; i < ground_truth.size(); ++i) accumulator.add(ground_truth[i], predictions[i]);
  return accumulator.compute();
}

}  // namespace vt
