// Mask2FormerImageProcessor's post_process_* of transformers 4.31, one libtorch op for each of its
// torch ops, in its order: the resizes, softmax, topk (sorted=False: the order it leaves decides
// segment ids), comparisons of float32 tensors against Python floats (done in float32, as torch
// does) and of .item() values (done in double, as Python does) all match it exactly.
#include "tasks/universal_segmentation_post.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "common/error.h"

namespace vt {
namespace {

namespace F = torch::nn::functional;

struct QueryOutputs {
  torch::Tensor class_logits;  // [B, Q, K + 1] float32 CPU
  torch::Tensor mask_logits;   // [B, Q, h, w] float32 CPU
  int64_t batch = 0, queries = 0, classes = 0;
};

QueryOutputs checked_outputs(const torch::Tensor& class_queries_logits, const torch::Tensor& masks_queries_logits,
                             const TargetSizes& target_sizes, const char* caller) {
  VT_CHECK(class_queries_logits.defined() && class_queries_logits.dim() == 3, caller,
           ": class_queries_logits must be [batch, queries, classes + 1], got ",
           class_queries_logits.defined() ? class_queries_logits.sizes() : torch::IntArrayRef{});
  VT_CHECK(masks_queries_logits.defined() && masks_queries_logits.dim() == 4, caller,
           ": masks_queries_logits must be [batch, queries, height, width], got ",
           masks_queries_logits.defined() ? masks_queries_logits.sizes() : torch::IntArrayRef{});
  VT_CHECK(at::isFloatingType(class_queries_logits.scalar_type()) && at::isFloatingType(masks_queries_logits.scalar_type()), caller,
           ": the logits must be floating point, got ", class_queries_logits.scalar_type(), " and ", masks_queries_logits.scalar_type());
  QueryOutputs outputs;
  outputs.batch = class_queries_logits.size(0);
  outputs.queries = class_queries_logits.size(1);
  outputs.classes = class_queries_logits.size(2) - 1;
  VT_CHECK(masks_queries_logits.size(0) == outputs.batch && masks_queries_logits.size(1) == outputs.queries, caller,
           ": class_queries_logits ", class_queries_logits.sizes(), " and masks_queries_logits ", masks_queries_logits.sizes(),
           " disagree on batch or queries");
  VT_CHECK(outputs.classes >= 1, caller, ": class_queries_logits needs at least one class besides \"no object\", got ",
           class_queries_logits.size(2), " entries");
  VT_CHECK(masks_queries_logits.size(2) > 0 && masks_queries_logits.size(3) > 0, caller, ": masks_queries_logits has an empty mask ",
           masks_queries_logits.sizes());
  VT_CHECK(target_sizes.empty() || static_cast<int64_t>(target_sizes.size()) == outputs.batch, caller, ": ", target_sizes.size(),
           " target sizes for a batch of ", outputs.batch);
  for (size_t i = 0; i < target_sizes.size(); ++i) {
    VT_CHECK(target_sizes[i].first > 0 && target_sizes[i].second > 0, caller, ": target size ", i, " is ", target_sizes[i].first, "x",
             target_sizes[i].second, "; both must be positive");
  }
  outputs.class_logits = class_queries_logits.to(torch::kCPU, torch::kFloat32);
  // "Scale back to preprocessed image size - (384, 384) for all models".
  outputs.mask_logits = F::interpolate(masks_queries_logits.to(torch::kCPU, torch::kFloat32),
                                       F::InterpolateFuncOptions()
                                           .size(std::vector<int64_t>{kMask2FormerPostProcessSize, kMask2FormerPostProcessSize})
                                           .mode(torch::kBilinear)
                                           .align_corners(false));
  return outputs;
}

void check_fraction(double value, const char* caller, const char* name) {
  VT_CHECK(value >= 0 && value <= 1, caller, ": ", name, " must be in [0, 1], got ", value);
}

torch::Tensor resize_bilinear(const torch::Tensor& planes, std::pair<int64_t, int64_t> size) {
  return F::interpolate(
      planes.unsqueeze(0),
      F::InterpolateFuncOptions().size(std::vector<int64_t>{size.first, size.second}).mode(torch::kBilinear).align_corners(false))[0];
}

// Python's round(value, 6): the nearest multiple of 1e-6 to the exact binary value, ties to even,
// which is what a correctly rounded "%.6f" gives.
double round6(double value) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.6f", value);
  return std::strtod(text, nullptr);
}

}  // namespace

std::vector<torch::Tensor> post_process_universal_semantic(const torch::Tensor& class_queries_logits,
                                                           const torch::Tensor& masks_queries_logits, const TargetSizes& target_sizes) {
  torch::NoGradGuard no_grad;
  const QueryOutputs outputs = checked_outputs(class_queries_logits, masks_queries_logits, target_sizes, "post_process_universal_semantic");
  // Remove the null class [..., :-1].
  const torch::Tensor mask_classes = outputs.class_logits.softmax(-1).slice(-1, 0, outputs.classes);
  const torch::Tensor mask_probs = outputs.mask_logits.sigmoid();
  const torch::Tensor segmentation = torch::einsum("bqc,bqhw->bchw", {mask_classes, mask_probs});
  std::vector<torch::Tensor> maps;
  if (target_sizes.empty()) {
    const torch::Tensor labels = segmentation.argmax(1);
    for (int64_t i = 0; i < outputs.batch; ++i) maps.push_back(labels[i]);
    return maps;
  }
  for (int64_t i = 0; i < outputs.batch; ++i) {
    maps.push_back(resize_bilinear(segmentation[i], target_sizes[static_cast<size_t>(i)]).argmax(0));
  }
  return maps;
}

std::vector<SegmentationResult> post_process_universal_instance(const torch::Tensor& class_queries_logits,
                                                                const torch::Tensor& masks_queries_logits,
                                                                const UniversalInstanceOptions& options, const TargetSizes& target_sizes) {
  const char* caller = "post_process_universal_instance";
  check_fraction(options.threshold, caller, "threshold");
  check_fraction(options.mask_threshold, caller, "mask_threshold");
  check_fraction(options.overlap_mask_area_threshold, caller, "overlap_mask_area_threshold");
  torch::NoGradGuard no_grad;
  const QueryOutputs outputs = checked_outputs(class_queries_logits, masks_queries_logits, target_sizes, caller);
  const int64_t Q = outputs.queries, K = outputs.classes;
  const torch::Tensor labels = torch::arange(K, torch::kInt64).unsqueeze(0).repeat({Q, 1}).flatten(0, 1);

  std::vector<SegmentationResult> results;
  for (int64_t i = 0; i < outputs.batch; ++i) {
    const torch::Tensor scores = outputs.class_logits[i].softmax(-1).slice(1, 0, K);
    const auto [scores_per_image, flat_indices] = scores.flatten(0, 1).topk(Q, /*dim=*/-1, /*largest=*/true, /*sorted=*/false);
    const torch::Tensor labels_per_image = labels.index({flat_indices});
    const torch::Tensor query_indices = torch::div(flat_indices, K, "floor");
    const torch::Tensor mask_pred = outputs.mask_logits[i].index({query_indices});
    torch::Tensor pred_masks = (mask_pred > 0).to(torch::kFloat32);
    // Average mask probability over the mask.
    const torch::Tensor mask_scores =
        (mask_pred.sigmoid().flatten(1) * pred_masks.flatten(1)).sum(1) / (pred_masks.flatten(1).sum(1) + 1e-6);
    const torch::Tensor pred_scores = scores_per_image * mask_scores;

    torch::Tensor segmentation = torch::zeros({kMask2FormerPostProcessSize, kMask2FormerPostProcessSize}) - 1;
    if (!target_sizes.empty()) {
      const auto [height, width] = target_sizes[static_cast<size_t>(i)];
      segmentation = torch::zeros({height, width}) - 1;
      pred_masks = F::interpolate(pred_masks.unsqueeze(0),
                                  F::InterpolateFuncOptions().size(std::vector<int64_t>{height, width}).mode(torch::kNearest))[0];
    }
    SegmentationResult result;
    int64_t current_segment_id = 0;
    for (int64_t j = 0; j < Q; ++j) {
      const double score = pred_scores[j].item<float>();
      if (torch::all(pred_masks[j] == 0).item<bool>() || !(score >= options.threshold)) continue;
      segmentation.masked_fill_(pred_masks[j] == 1, static_cast<double>(current_segment_id));
      result.segments.push_back({current_segment_id, labels_per_image[j].item<int64_t>(), false, round6(score)});
      current_segment_id += 1;
    }
    result.segmentation = segmentation.to(torch::kInt64);
    results.push_back(std::move(result));
  }
  return results;
}

std::vector<SegmentationResult> post_process_universal_panoptic(const torch::Tensor& class_queries_logits,
                                                                const torch::Tensor& masks_queries_logits,
                                                                const UniversalPanopticOptions& options, const TargetSizes& target_sizes) {
  const char* caller = "post_process_universal_panoptic";
  check_fraction(options.threshold, caller, "threshold");
  check_fraction(options.mask_threshold, caller, "mask_threshold");
  check_fraction(options.overlap_mask_area_threshold, caller, "overlap_mask_area_threshold");
  torch::NoGradGuard no_grad;
  const QueryOutputs outputs = checked_outputs(class_queries_logits, masks_queries_logits, target_sizes, caller);
  const torch::Tensor mask_probs = outputs.mask_logits.sigmoid();
  // Each query's best class (the null class included) and its probability.
  const auto [pred_scores, pred_labels] = outputs.class_logits.softmax(-1).max(-1);

  std::vector<SegmentationResult> results;
  for (int64_t i = 0; i < outputs.batch; ++i) {
    const std::pair<int64_t, int64_t> size = target_sizes.empty() ? std::make_pair(kMask2FormerPostProcessSize, kMask2FormerPostProcessSize)
                                                                  : target_sizes[static_cast<size_t>(i)];
    // remove_low_and_no_objects
    const torch::Tensor keep = pred_labels[i].ne(outputs.classes) & (pred_scores[i] > options.threshold);
    torch::Tensor probs = mask_probs[i].index({keep});
    const torch::Tensor scores = pred_scores[i].index({keep});
    const torch::Tensor labels = pred_labels[i].index({keep});
    SegmentationResult result;
    if (probs.size(0) == 0) {
      result.segmentation = torch::full({size.first, size.second}, -1, torch::kInt64);
      results.push_back(std::move(result));
      continue;
    }

    // compute_segments
    torch::Tensor segmentation = torch::zeros({size.first, size.second}, torch::kInt32);
    if (!target_sizes.empty()) probs = resize_bilinear(probs, size);
    // Weigh each mask by its prediction score.
    probs.mul_(scores.view({-1, 1, 1}));
    const torch::Tensor mask_labels = probs.argmax(0);
    std::map<int64_t, int64_t> stuff_memory;  // fused class -> its segment id
    int64_t current_segment_id = 0;
    for (int64_t k = 0; k < labels.size(0); ++k) {
      const int64_t pred_class = labels[k].item<int64_t>();
      const bool should_fuse = options.label_ids_to_fuse.count(pred_class) != 0;
      // check_segment_validity: the query wins enough of its own mask.
      const torch::Tensor mask_k = mask_labels == k;
      const torch::Tensor mask_k_area = mask_k.sum();
      const torch::Tensor original_area = (probs[k] >= options.mask_threshold).sum();
      bool mask_exists = mask_k_area.item<int64_t>() > 0 && original_area.item<int64_t>() > 0;
      if (mask_exists) {
        // int64 / int64 is a float32 true division in torch, then compared as a Python float.
        const double area_ratio = (mask_k_area / original_area).item<float>();
        if (!(area_ratio > options.overlap_mask_area_threshold)) mask_exists = false;
      }
      if (!mask_exists) continue;
      const auto fused = stuff_memory.find(pred_class);
      if (fused != stuff_memory.end()) {
        current_segment_id = fused->second;
      } else {
        current_segment_id += 1;
      }
      segmentation.masked_fill_(mask_k, current_segment_id);
      result.segments.push_back({current_segment_id, pred_class, should_fuse, round6(scores[k].item<float>())});
      if (should_fuse) stuff_memory[pred_class] = current_segment_id;
    }
    result.segmentation = segmentation.to(torch::kInt64);
    results.push_back(std::move(result));
  }
  return results;
}

}  // namespace vt
