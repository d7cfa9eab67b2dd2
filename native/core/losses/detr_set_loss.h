// DETR's set prediction loss, as transformers' DetrLoss and DetrHungarianMatcher compute it:
// queries matched one-to-one to targets by an exact Hungarian assignment (class, L1 and GIoU
// costs), then cross-entropy with a down-weighted no-object class, L1 and GIoU box losses, for
// the final layer and each auxiliary decoder layer. Used by DETR and Table Transformer.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/module.h"

namespace vt::losses {

// config.json's matcher costs and loss weights (DetrConfig's names and defaults).
struct SetLossConfig {
  double class_cost = 1, bbox_cost = 5, giou_cost = 2;
  double bbox_loss_coefficient = 5, giou_loss_coefficient = 2, eos_coefficient = 0.1;
  // DetrConfig's fields of the same names (errors name the file and the field).
  static SetLossConfig from_json(const nlohmann::json& json, const std::string& source);
};

struct SetLoss {
  torch::Tensor loss;                          // the weighted sum
  std::map<std::string, torch::Tensor> parts;  // loss_ce, loss_bbox, loss_giou, cardinality_error; "_<i>" for auxiliary layer i
};

// `logits` [B, queries, num_labels + 1], `boxes` [B, queries, 4] (cx, cy, w, h, normalised), and
// one pair per auxiliary decoder layer (may be empty). Targets are validated first, so a bad
// batch gets an error naming the image and the field.
SetLoss detr_set_loss(const SetLossConfig& config, int64_t num_labels, const torch::Tensor& logits, const torch::Tensor& boxes,
                      const std::vector<torch::Tensor>& aux_logits, const std::vector<torch::Tensor>& aux_boxes,
                      const std::vector<Target>& targets);

// The box utilities of the loss: cx,cy,w,h -> corners, and generalized IoU ([N, 4] x [M, 4] -> [N, M]).
torch::Tensor center_to_corners(const torch::Tensor& boxes);
torch::Tensor generalized_box_iou(const torch::Tensor& boxes1, const torch::Tensor& boxes2);

}  // namespace vt::losses
