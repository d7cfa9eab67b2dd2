#include "losses/detr_set_loss.h"

#include "common/error.h"
#include "common/json_config.h"
#include "common/replica_group.h"
#include "losses/hungarian.h"

namespace vt::losses {

SetLossConfig SetLossConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  SetLossConfig config;
  config.class_cost = fields.get_number("class_cost", 1);
  config.bbox_cost = fields.get_number("bbox_cost", 5);
  config.giou_cost = fields.get_number("giou_cost", 2);
  VT_CHECK(config.class_cost != 0 || config.bbox_cost != 0 || config.giou_cost != 0, source,
           ": class_cost, bbox_cost and giou_cost cannot all be 0");
  config.bbox_loss_coefficient = fields.get_number("bbox_loss_coefficient", 5);
  config.giou_loss_coefficient = fields.get_number("giou_loss_coefficient", 2);
  config.eos_coefficient = fields.get_number("eos_coefficient", 0.1);
  return config;
}

torch::Tensor center_to_corners(const torch::Tensor& boxes) {
  auto cx = boxes.select(-1, 0), cy = boxes.select(-1, 1), w = boxes.select(-1, 2), h = boxes.select(-1, 3);
  return torch::stack({cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h}, -1);
}

torch::Tensor generalized_box_iou(const torch::Tensor& boxes1, const torch::Tensor& boxes2) {
  using torch::indexing::Slice;
  auto area = [](const torch::Tensor& b) { return (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1)); };
  auto area1 = area(boxes1), area2 = area(boxes2);
  auto left_top = torch::max(boxes1.index({Slice(), torch::indexing::None, Slice(0, 2)}), boxes2.index({Slice(), Slice(0, 2)}));
  auto right_bottom = torch::min(boxes1.index({Slice(), torch::indexing::None, Slice(2, 4)}), boxes2.index({Slice(), Slice(2, 4)}));
  auto wh = (right_bottom - left_top).clamp_min(0);
  auto inter = wh.select(2, 0) * wh.select(2, 1);
  auto union_area = area1.unsqueeze(1) + area2 - inter;
  auto iou = inter / union_area;
  auto enclosing_top = torch::min(boxes1.index({Slice(), torch::indexing::None, Slice(0, 2)}), boxes2.index({Slice(), Slice(0, 2)}));
  auto enclosing_bottom = torch::max(boxes1.index({Slice(), torch::indexing::None, Slice(2, 4)}), boxes2.index({Slice(), Slice(2, 4)}));
  auto enclosing_wh = (enclosing_bottom - enclosing_top).clamp_min(0);
  auto enclosing = enclosing_wh.select(2, 0) * enclosing_wh.select(2, 1);
  return iou - (enclosing - union_area) / enclosing;
}

namespace {

using Matching = std::vector<std::pair<torch::Tensor, torch::Tensor>>;  // per image: (query indices, target indices)

// HungarianMatcher: cost = bbox_cost * L1 + class_cost * (-probability) + giou_cost * (-GIoU).
Matching match(const SetLossConfig& config, const torch::Tensor& logits, const torch::Tensor& boxes, const std::vector<Target>& targets) {
  torch::NoGradGuard no_grad;
  const int64_t batch = logits.size(0), queries = logits.size(1);
  auto probabilities = logits.flatten(0, 1).softmax(-1);
  auto predicted = boxes.flatten(0, 1);
  std::vector<torch::Tensor> ids, target_boxes;
  std::vector<int64_t> sizes;
  for (const auto& target : targets) {
    ids.push_back(target.class_labels);
    target_boxes.push_back(target.boxes.to(predicted.scalar_type()));
    sizes.push_back(target.class_labels.size(0));
  }
  auto target_ids = torch::cat(ids);
  auto target_box = torch::cat(target_boxes);
  auto class_cost = -probabilities.index_select(1, target_ids);
  auto bbox_cost = torch::cdist(predicted, target_box, 1);
  auto giou_cost = -generalized_box_iou(center_to_corners(predicted), center_to_corners(target_box));
  auto cost = (config.bbox_cost * bbox_cost + config.class_cost * class_cost + config.giou_cost * giou_cost)
                  .view({batch, queries, -1})
                  .to(torch::kCPU, torch::kFloat64);
  Matching matching;
  int64_t offset = 0;
  for (int64_t i = 0; i < batch; ++i) {
    auto pairs = linear_sum_assignment(cost[i].slice(1, offset, offset + sizes[static_cast<size_t>(i)]));
    offset += sizes[static_cast<size_t>(i)];
    std::vector<int64_t> source, target;
    for (const auto& [row, col] : pairs) {
      source.push_back(row);
      target.push_back(col);
    }
    auto as_tensor = [&](const std::vector<int64_t>& values) {
      return torch::tensor(values, torch::TensorOptions().dtype(torch::kInt64)).to(logits.device());
    };
    matching.emplace_back(as_tensor(source), as_tensor(target));
  }
  return matching;
}

// loss_ce, loss_bbox, loss_giou and cardinality_error for one set of predictions.
std::map<std::string, torch::Tensor> set_losses(const SetLossConfig& config, int64_t num_labels, const torch::Tensor& logits,
                                                const torch::Tensor& boxes, const std::vector<Target>& targets, double num_boxes) {
  const Matching matching = match(config, logits, boxes, targets);
  std::vector<torch::Tensor> batch_index, source_index, matched_classes, matched_boxes;
  for (size_t i = 0; i < matching.size(); ++i) {
    const auto& [source, target] = matching[i];
    batch_index.push_back(torch::full_like(source, static_cast<int64_t>(i)));
    source_index.push_back(source);
    matched_classes.push_back(targets[i].class_labels.index_select(0, target));
    matched_boxes.push_back(targets[i].boxes.index_select(0, target));
  }
  auto batch_idx = torch::cat(batch_index), source_idx = torch::cat(source_index);

  std::map<std::string, torch::Tensor> losses;
  auto target_classes =
      torch::full({logits.size(0), logits.size(1)}, num_labels, torch::TensorOptions().dtype(torch::kInt64).device(logits.device()));
  target_classes.index_put_({batch_idx, source_idx}, torch::cat(matched_classes));
  auto empty_weight = torch::ones({num_labels + 1}, logits.options().dtype(torch::kFloat32));
  empty_weight[num_labels] = config.eos_coefficient;
  losses["loss_ce"] = torch::nn::functional::cross_entropy(logits.to(torch::kFloat32).transpose(1, 2), target_classes,
                                                           torch::nn::functional::CrossEntropyFuncOptions().weight(empty_weight));
  {
    torch::NoGradGuard no_grad;
    std::vector<float> lengths;
    for (const auto& target : targets) lengths.push_back(static_cast<float>(target.class_labels.size(0)));
    auto card_pred = logits.argmax(-1).ne(logits.size(-1) - 1).sum(1).to(torch::kFloat32);
    losses["cardinality_error"] = torch::l1_loss(card_pred, torch::tensor(lengths).to(logits.device()));
  }
  auto source_boxes = boxes.index({batch_idx, source_idx}).to(torch::kFloat32);
  auto target_boxes = torch::cat(matched_boxes).to(torch::kFloat32);
  losses["loss_bbox"] = torch::l1_loss(source_boxes, target_boxes, at::Reduction::None).sum() / num_boxes;
  auto giou = generalized_box_iou(center_to_corners(source_boxes), center_to_corners(target_boxes));
  losses["loss_giou"] = (1 - torch::diag(giou)).sum() / num_boxes;
  return losses;
}

void validate_targets(const std::vector<Target>& targets, int64_t batch, int64_t num_labels) {
  VT_CHECK(static_cast<int64_t>(targets.size()) == batch, "labels: ", targets.size(), " targets for a batch of ", batch, " images");
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    const std::string name = "labels[" + std::to_string(i) + "]";
    VT_CHECK(t.class_labels.defined() && t.class_labels.dim() == 1 && t.class_labels.scalar_type() == torch::kLong, name,
             ".class_labels: expected an int64 tensor [n]");
    VT_CHECK(t.boxes.defined() && t.boxes.dim() == 2 && t.boxes.size(1) == 4 && t.boxes.size(0) == t.class_labels.size(0), name,
             ".boxes: expected a float32 tensor [", t.class_labels.size(0), ", 4] (cx, cy, w, h, normalised)");
    if (t.class_labels.numel() > 0) {
      const int64_t low = t.class_labels.min().item<int64_t>(), high = t.class_labels.max().item<int64_t>();
      VT_CHECK(low >= 0 && high < num_labels, name, ".class_labels: class ", low < 0 ? low : high, " is out of range for ", num_labels,
               " labels");
      VT_CHECK(t.boxes.isfinite().all().item<bool>() && t.boxes.select(1, 2).ge(0).all().item<bool>() &&
                   t.boxes.select(1, 3).ge(0).all().item<bool>(),
               name, ".boxes: widths and heights must be finite and non-negative");
    }
  }
}

}  // namespace

SetLoss detr_set_loss(const SetLossConfig& config, int64_t num_labels, const torch::Tensor& logits, const torch::Tensor& boxes,
                      const std::vector<torch::Tensor>& aux_logits, const std::vector<torch::Tensor>& aux_boxes,
                      const std::vector<Target>& targets) {
  validate_targets(targets, logits.size(0), num_labels);
  double num_boxes = 0;
  for (const auto& target : targets) num_boxes += static_cast<double>(target.class_labels.size(0));
  // Data-parallel: the mean count per rank, as transformers' DetrLoss under accelerate.
  num_boxes = std::max(average_over_replicas(num_boxes), 1.0);
  SetLoss result;
  result.parts = set_losses(config, num_labels, logits, boxes, targets, num_boxes);
  for (size_t i = 0; i < aux_logits.size(); ++i) {
    for (auto& [name, value] : set_losses(config, num_labels, aux_logits[i], aux_boxes[i], targets, num_boxes)) {
      result.parts[name + "_" + std::to_string(i)] = value;
    }
  }
  // Weighted as transformers does; auxiliary terms ("loss_ce_0", ...) weigh as their base loss,
  // cardinality_error is reported only.
  const std::map<std::string, double> weights{
      {"loss_ce", 1.0}, {"loss_bbox", config.bbox_loss_coefficient}, {"loss_giou", config.giou_loss_coefficient}};
  auto base_name = [](const std::string& name) {
    const auto underscore = name.rfind('_');
    const bool layer_suffix = underscore != std::string::npos && underscore + 1 < name.size() &&
                              name.find_first_not_of("0123456789", underscore + 1) == std::string::npos;
    return layer_suffix ? name.substr(0, underscore) : name;
  };
  for (const auto& [name, value] : result.parts) {
    auto weight = weights.find(base_name(name));
    if (weight == weights.end()) continue;
    result.loss = result.loss.defined() ? result.loss + weight->second * value : weight->second * value;
  }
  return result;
}

}  // namespace vt::losses
