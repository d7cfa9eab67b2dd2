// Mask2Former's post-processing as transformers 4.31's Mask2FormerImageProcessor computes it:
// post_process_semantic_segmentation, post_process_instance_segmentation and
// post_process_panoptic_segmentation, on the model's class_queries_logits [B, Q, K + 1] (K classes
// and the "no object" class last) and masks_queries_logits [B, Q, h, w].
#pragma once

#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace vt {

// transformers upsamples the mask logits to this size first, "the preprocessed image size for all
// models", whatever the input's size was.
constexpr int64_t kMask2FormerPostProcessSize = 384;

// (height, width) per image; empty: no resizing (transformers' target_sizes=None).
using TargetSizes = std::vector<std::pair<int64_t, int64_t>>;

// One segment of an instance or panoptic result (transformers' segments_info entry).
struct SegmentInfo {
  int64_t id = 0;        // its value in the segmentation map
  int64_t label_id = 0;  // class index in [0, K)
  bool was_fused = false;
  double score = 0;  // rounded to 6 decimals, as transformers rounds it
};

struct SegmentationResult {
  torch::Tensor segmentation;  // [h, w] int64: segment ids (see each function for the "no segment" value)
  std::vector<SegmentInfo> segments;
};

// post_process_semantic_segmentation: softmax class scores (without "no object") times sigmoid
// masks, summed over queries, resized bilinearly to each target size, argmax over classes: one
// [h_i, w_i] int64 class map per image ([384, 384] without target sizes).
std::vector<torch::Tensor> post_process_universal_semantic(const torch::Tensor& class_queries_logits,
                                                           const torch::Tensor& masks_queries_logits, const TargetSizes& target_sizes = {});

struct UniversalInstanceOptions {
  double threshold = 0.5;                    // lowest segment score kept
  double mask_threshold = 0.5;               // unused by transformers' instance path (masks are logits > 0); checked for range only
  double overlap_mask_area_threshold = 0.8;  // likewise unused there; checked for range only
};

// post_process_instance_segmentation (return_coco_annotation and return_binary_maps false): the
// top Q (query, class) pairs by class probability, each scored by its class probability times the
// mean sigmoid over its mask (logits > 0), masks resized by nearest neighbour to the target size,
// painted in that order (later segments over earlier ones), ids from 0; -1 where no segment.
std::vector<SegmentationResult> post_process_universal_instance(const torch::Tensor& class_queries_logits,
                                                                const torch::Tensor& masks_queries_logits,
                                                                const UniversalInstanceOptions& options = {},
                                                                const TargetSizes& target_sizes = {});

struct UniversalPanopticOptions {
  double threshold = 0.5;                    // lowest class probability kept (strictly above)
  double mask_threshold = 0.5;               // a query's own mask: score-weighted probability >= this
  double overlap_mask_area_threshold = 0.8;  // least share of its own mask a query must win to be a segment
  std::set<int64_t> label_ids_to_fuse;       // classes whose segments share one id (stuff)
};

// post_process_panoptic_segmentation (compute_segments): queries whose best class is an object with
// probability > threshold; their sigmoid masks resized bilinearly to the target size and weighted by
// that probability; each pixel goes to its best query; a query becomes a segment when it wins more
// than overlap_mask_area_threshold of its own mask. Ids from 1 (fused classes reuse theirs, and, as
// in transformers, the next new id then follows the reused one); 0 where no segment, and all -1
// when no query passes the threshold.
std::vector<SegmentationResult> post_process_universal_panoptic(const torch::Tensor& class_queries_logits,
                                                                const torch::Tensor& masks_queries_logits,
                                                                const UniversalPanopticOptions& options = {},
                                                                const TargetSizes& target_sizes = {});

}  // namespace vt
