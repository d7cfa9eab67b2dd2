#include "losses/mask2former_loss.h"

#include <algorithm>

#include "common/error.h"
#include "common/replica_group.h"
#include "losses/hungarian.h"

namespace vt::losses {

namespace F = torch::nn::functional;
using Matching = std::vector<std::pair<torch::Tensor, torch::Tensor>>;  // per image: (query indices, target indices)

torch::Tensor sample_point(const torch::Tensor& input, const torch::Tensor& coordinates) {
  auto grid = (2.0 * coordinates - 1.0).unsqueeze(2);  // [N, P, 1, 2]
  return F::grid_sample(input, grid.to(input.scalar_type()),
                        F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros).align_corners(false))
      .squeeze(3);
}

namespace {

// BCEWithLogitsLoss(reduction="none") against all-ones and all-zeros labels, pairwise:
// [queries, P] x [targets, P] -> [queries, targets], averaged over the points.
torch::Tensor pair_wise_sigmoid_cross_entropy(const torch::Tensor& inputs, const torch::Tensor& labels) {
  const double points = static_cast<double>(inputs.size(1));
  auto positive = F::binary_cross_entropy_with_logits(inputs, torch::ones_like(inputs),
                                                      F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  auto negative = F::binary_cross_entropy_with_logits(inputs, torch::zeros_like(inputs),
                                                      F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  auto loss = torch::einsum("nc,mc->nm", {positive, labels}) + torch::einsum("nc,mc->nm", {negative, 1 - labels});
  return loss / points;
}

torch::Tensor pair_wise_dice(const torch::Tensor& inputs, const torch::Tensor& labels) {
  auto probabilities = inputs.sigmoid().flatten(1);
  auto numerator = 2 * torch::einsum("nc,mc->nm", {probabilities, labels});
  auto denominator = probabilities.sum(-1).unsqueeze(1) + labels.sum(-1).unsqueeze(0);
  return 1 - (numerator + 1) / (denominator + 1);
}

torch::Tensor index_tensor(const std::vector<int64_t>& values, torch::Device device) {
  return torch::tensor(values, torch::TensorOptions().dtype(torch::kInt64)).to(device);
}

// The rows of `indices`' pairs as one (image, index) gather, as _get_*_permutation_indices.
std::pair<torch::Tensor, torch::Tensor> permutation(const Matching& matching, bool targets) {
  std::vector<torch::Tensor> batch, index;
  for (size_t i = 0; i < matching.size(); ++i) {
    const auto& chosen = targets ? matching[i].second : matching[i].first;
    batch.push_back(torch::full_like(chosen, static_cast<int64_t>(i)));
    index.push_back(chosen);
  }
  return {torch::cat(batch), torch::cat(index)};
}

// Mask2FormerLoss.sample_points_using_uncertainty with uncertainty -|logit|: oversampled uniform
// points, the most uncertain importance_sample_ratio of them, the rest uniform again.
torch::Tensor sample_points_using_uncertainty(const Mask2FormerLossConfig& config, const torch::Tensor& logits) {
  const int64_t boxes = logits.size(0);
  const int64_t points = config.train_num_points;
  const auto sampled = static_cast<int64_t>(static_cast<double>(points) * config.oversample_ratio);
  auto options = torch::TensorOptions().dtype(torch::kFloat32).device(logits.device());
  auto coordinates = torch::rand({boxes, sampled, 2}, options);
  auto uncertainties = -sample_point(logits, coordinates).abs();
  const auto uncertain = static_cast<int64_t>(config.importance_sample_ratio * static_cast<double>(points));
  const int64_t random = points - uncertain;
  auto index = std::get<1>(torch::topk(uncertainties.select(1, 0), uncertain, 1));
  index = index + sampled * torch::arange(boxes, torch::TensorOptions().dtype(torch::kInt64).device(logits.device())).unsqueeze(1);
  coordinates = coordinates.view({-1, 2}).index_select(0, index.view(-1)).view({boxes, uncertain, 2});
  if (random > 0) coordinates = torch::cat({coordinates, torch::rand({boxes, random, 2}, options)}, 1);
  return coordinates;
}

// Zero-padded to the largest [n, H, W] of the batch, as _pad_images_to_max_in_batch.
torch::Tensor pad_to_max(const std::vector<Target>& targets, torch::ScalarType dtype) {
  int64_t count = 0, height = 0, width = 0;
  for (const auto& t : targets) {
    count = std::max(count, t.mask_labels.size(0));
    height = std::max(height, t.mask_labels.size(1));
    width = std::max(width, t.mask_labels.size(2));
  }
  auto padded = torch::zeros({static_cast<int64_t>(targets.size()), count, height, width}, targets[0].mask_labels.options().dtype(dtype));
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& m = targets[i].mask_labels;
    padded[static_cast<int64_t>(i)].narrow(0, 0, m.size(0)).narrow(1, 0, m.size(1)).narrow(2, 0, m.size(2)).copy_(m);
  }
  return padded;
}

// loss_mask and loss_dice on importance-sampled points of the matched masks.
std::pair<torch::Tensor, torch::Tensor> loss_masks(const Mask2FormerLossConfig& config, const torch::Tensor& masks_queries_logits,
                                                   const std::vector<Target>& targets, const Matching& matching, double num_masks) {
  auto [source_batch, source_index] = permutation(matching, false);
  auto [target_batch, target_index] = permutation(matching, true);
  if (source_index.numel() == 0) {
    // No target anywhere: transformers divides nothing by nothing; the mask losses are zero here.
    auto zero = masks_queries_logits.sum() * 0;
    return {zero, zero};
  }
  auto predicted = masks_queries_logits.index({source_batch, source_index}).unsqueeze(1);  // [N, 1, h, w]
  torch::Tensor coordinates, point_labels;
  {
    torch::NoGradGuard no_grad;
    auto target_masks = pad_to_max(targets, masks_queries_logits.scalar_type()).index({target_batch, target_index}).unsqueeze(1);
    coordinates = sample_points_using_uncertainty(config, predicted);
    point_labels = sample_point(target_masks, coordinates).squeeze(1);
  }
  auto point_logits = sample_point(predicted, coordinates).squeeze(1);  // [N, P]
  auto cross_entropy =
      F::binary_cross_entropy_with_logits(point_logits, point_labels, F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  auto loss_mask = cross_entropy.mean(1).sum() / num_masks;
  auto probabilities = point_logits.sigmoid().flatten(1);
  auto numerator = 2 * (probabilities * point_labels).sum(-1);
  auto denominator = probabilities.sum(-1) + point_labels.sum(-1);
  auto loss_dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks;
  return {loss_mask, loss_dice};
}

// Cross-entropy over every query, unmatched ones labelled "no object", weighted by empty_weight.
torch::Tensor loss_labels(const torch::Tensor& class_queries_logits, const torch::Tensor& empty_weight, const std::vector<Target>& targets,
                          const Matching& matching) {
  const int64_t batch = class_queries_logits.size(0), queries = class_queries_logits.size(1);
  const int64_t no_object = class_queries_logits.size(2) - 1;
  auto target_classes =
      torch::full({batch, queries}, no_object, torch::TensorOptions().dtype(torch::kInt64).device(class_queries_logits.device()));
  auto [batch_index, query_index] = permutation(matching, false);
  std::vector<torch::Tensor> matched;
  for (size_t i = 0; i < matching.size(); ++i) matched.push_back(targets[i].class_labels.index_select(0, matching[i].second));
  if (query_index.numel() > 0) target_classes.index_put_({batch_index, query_index}, torch::cat(matched));
  return F::cross_entropy(class_queries_logits.transpose(1, 2), target_classes,
                          F::CrossEntropyFuncOptions().weight(empty_weight.to(class_queries_logits.scalar_type())));
}

void validate_targets(const std::vector<Target>& targets, int64_t batch, int64_t num_labels) {
  VT_CHECK(static_cast<int64_t>(targets.size()) == batch, "labels: ", targets.size(), " targets for a batch of ", batch, " images");
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    const std::string name = "labels[" + std::to_string(i) + "]";
    VT_CHECK(t.class_labels.defined() && t.class_labels.dim() == 1 && t.class_labels.scalar_type() == torch::kLong, name,
             ".class_labels: expected an int64 tensor [n]");
    VT_CHECK(t.mask_labels.defined() && t.mask_labels.dim() == 3 && t.mask_labels.size(0) == t.class_labels.size(0) &&
                 t.mask_labels.is_floating_point(),
             name, ".mask_labels: expected a float tensor [", t.class_labels.size(0), ", height, width] of 0/1 masks");
    if (t.class_labels.numel() > 0) {
      const int64_t low = t.class_labels.min().item<int64_t>(), high = t.class_labels.max().item<int64_t>();
      VT_CHECK(low >= 0 && high < num_labels, name, ".class_labels: class ", low < 0 ? low : high, " is out of range for ", num_labels,
               " labels");
    }
  }
}

// One prediction's losses (Mask2FormerLoss.forward without auxiliary predictions), named with `suffix`.
void prediction_losses(const Mask2FormerLossConfig& config, const torch::Tensor& empty_weight, const torch::Tensor& masks_queries_logits,
                       const torch::Tensor& class_queries_logits, const std::vector<Target>& targets, double num_masks,
                       const std::string& suffix, std::vector<std::pair<std::string, torch::Tensor>>& parts) {
  const Matching matching = mask2former_match(config, masks_queries_logits, class_queries_logits, targets);
  auto [loss_mask, loss_dice] = loss_masks(config, masks_queries_logits, targets, matching, num_masks);
  parts.emplace_back("loss_mask" + suffix, loss_mask);
  parts.emplace_back("loss_dice" + suffix, loss_dice);
  parts.emplace_back("loss_cross_entropy" + suffix, loss_labels(class_queries_logits, empty_weight, targets, matching));
}

}  // namespace

Matching mask2former_match(const Mask2FormerLossConfig& config, const torch::Tensor& masks_queries_logits,
                           const torch::Tensor& class_queries_logits, const std::vector<Target>& targets) {
  torch::NoGradGuard no_grad;
  Matching matching;
  const auto device = masks_queries_logits.device();
  for (int64_t i = 0; i < masks_queries_logits.size(0); ++i) {
    const Target& target = targets[static_cast<size_t>(i)];
    // Drawn for every image, with or without targets, as transformers does.
    auto coordinates = torch::rand({1, config.train_num_points, 2}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    const int64_t count = target.class_labels.size(0);
    if (count == 0) {
      matching.emplace_back(index_tensor({}, device), index_tensor({}, device));
      continue;
    }
    auto probabilities = class_queries_logits[i].softmax(-1);
    auto cost_class = -probabilities.index_select(1, target.class_labels);
    auto predicted = masks_queries_logits[i].unsqueeze(1);  // [Q, 1, h, w]
    auto target_mask = target.mask_labels.to(predicted.scalar_type()).unsqueeze(1);
    auto target_points = sample_point(target_mask, coordinates.repeat({count, 1, 1})).squeeze(1);
    auto predicted_points = sample_point(predicted, coordinates.repeat({predicted.size(0), 1, 1})).squeeze(1);
    auto cost = config.mask_weight * pair_wise_sigmoid_cross_entropy(predicted_points, target_points) + 1.0 * cost_class +
                config.dice_weight * pair_wise_dice(predicted_points, target_points);
    std::vector<int64_t> rows, cols;
    for (const auto& [row, col] : linear_sum_assignment(cost)) {
      rows.push_back(row);
      cols.push_back(col);
    }
    matching.emplace_back(index_tensor(rows, device), index_tensor(cols, device));
  }
  return matching;
}

Mask2FormerLossResult mask2former_loss(const Mask2FormerLossConfig& config, const torch::Tensor& empty_weight,
                                       const torch::Tensor& masks_queries_logits, const torch::Tensor& class_queries_logits,
                                       const std::vector<torch::Tensor>& aux_masks_queries_logits,
                                       const std::vector<torch::Tensor>& aux_class_queries_logits, const std::vector<Target>& targets) {
  validate_targets(targets, class_queries_logits.size(0), class_queries_logits.size(2) - 1);
  double num_masks = 0;
  for (const auto& target : targets) num_masks += static_cast<double>(target.class_labels.size(0));
  // Data-parallel: the mean count per rank, as transformers' get_num_masks under accelerate.
  num_masks = std::max(average_over_replicas(num_masks), 1.0);

  Mask2FormerLossResult result;
  prediction_losses(config, empty_weight, masks_queries_logits, class_queries_logits, targets, num_masks, "", result.parts);
  if (config.use_auxiliary_loss) {
    VT_CHECK(aux_masks_queries_logits.size() == aux_class_queries_logits.size(), "mask2former_loss: ", aux_masks_queries_logits.size(),
             " auxiliary mask predictions for ", aux_class_queries_logits.size(), " class predictions");
    for (size_t i = 0; i < aux_masks_queries_logits.size(); ++i) {
      prediction_losses(config, empty_weight, aux_masks_queries_logits[i], aux_class_queries_logits[i], targets, num_masks,
                        "_" + std::to_string(i), result.parts);
    }
  }
  // get_loss_dict weighs every entry whose name contains a weight's key; get_loss sums them.
  for (const auto& [name, value] : result.parts) {
    double weight = 1.0;
    if (name.rfind("loss_cross_entropy", 0) == 0) weight = config.class_weight;
    if (name.rfind("loss_mask", 0) == 0) weight = config.mask_weight;
    if (name.rfind("loss_dice", 0) == 0) weight = config.dice_weight;
    result.loss = result.loss.defined() ? result.loss + value * weight : value * weight;
  }
  return result;
}

}  // namespace vt::losses
