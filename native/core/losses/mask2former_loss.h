// Mask2Former's loss, as transformers 4.31's Mask2FormerLoss and Mask2FormerHungarianMatcher
// compute it: queries matched one-to-one to the target masks by an exact Hungarian assignment on
// costs evaluated at uniformly sampled points (class: -probability; mask: sigmoid cross-entropy;
// dice), then cross-entropy with a down-weighted no-object class and the mask losses (sigmoid
// cross-entropy, dice) on points chosen by uncertainty (PointRend's importance sampling), for the
// final prediction and every auxiliary one. Points come from torch.rand on the logits' device, drawn
// in transformers' order, so a run seeded as transformers' reproduces its loss.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "nn/module.h"

namespace vt::losses {

// config.json's loss fields (Mask2FormerConfig's names and defaults).
struct Mask2FormerLossConfig {
  double no_object_weight = 0.1;
  double class_weight = 2.0, mask_weight = 5.0, dice_weight = 5.0;
  int64_t train_num_points = 12544;
  double oversample_ratio = 3.0, importance_sample_ratio = 0.75;
  bool use_auxiliary_loss = true;
};

struct Mask2FormerLossResult {
  torch::Tensor loss;  // the weighted sum
  // Unweighted, in transformers' order: loss_mask, loss_dice, loss_cross_entropy, then each
  // auxiliary prediction's with "_<i>".
  std::vector<std::pair<std::string, torch::Tensor>> parts;
};

// PointRend's point_sample: bilinear values (grid_sample, zero padding, align_corners false) of
// `input` [N, C, H, W] at `coordinates` [N, P, 2] in [0, 1] (x, y) -> [N, C, P].
torch::Tensor sample_point(const torch::Tensor& input, const torch::Tensor& coordinates);

// Mask2FormerHungarianMatcher for one prediction: per image (query indices, target indices), each
// sorted by query. Draws torch.rand(1, num_points, 2) per image.
std::vector<std::pair<torch::Tensor, torch::Tensor>> mask2former_match(const Mask2FormerLossConfig& config,
                                                                       const torch::Tensor& masks_queries_logits,
                                                                       const torch::Tensor& class_queries_logits,
                                                                       const std::vector<Target>& targets);

// masks_queries_logits [B, Q, h, w] and class_queries_logits [B, Q, num_labels + 1] of the final
// prediction; aux_* one per auxiliary prediction (used when config.use_auxiliary_loss);
// empty_weight [num_labels + 1] (criterion.empty_weight). Targets are validated first: errors name
// the image and the field.
Mask2FormerLossResult mask2former_loss(const Mask2FormerLossConfig& config, const torch::Tensor& empty_weight,
                                       const torch::Tensor& masks_queries_logits, const torch::Tensor& class_queries_logits,
                                       const std::vector<torch::Tensor>& aux_masks_queries_logits,
                                       const std::vector<torch::Tensor>& aux_class_queries_logits, const std::vector<Target>& targets);

}  // namespace vt::losses
