#include "losses/classification.h"

#include "common/error.h"

namespace vt {

std::string resolve_problem_type(const std::string& configured, int64_t num_labels, const torch::Tensor& labels) {
  if (!configured.empty()) return configured;
  if (num_labels == 1) return "regression";
  bool integral = labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt;
  return integral ? "single_label_classification" : "multi_label_classification";
}

torch::Tensor image_classification_loss(const torch::Tensor& logits, const torch::Tensor& labels, const std::string& problem_type,
                                        double label_smoothing) {
  const int64_t batch = logits.size(0);
  const int64_t num_labels = logits.size(-1);
  VT_CHECK(labels.size(0) == batch, "labels: batch size ", labels.size(0), " does not match pixel_values' ", batch);
  std::string problem = resolve_problem_type(problem_type, num_labels, labels);
  auto logits32 = logits.to(torch::kFloat32);
  if (problem == "regression") {
    auto target = labels.to(torch::kFloat32);
    if (num_labels == 1) return torch::mse_loss(logits32.squeeze(), target.squeeze());
    return torch::mse_loss(logits32, target);
  }
  if (problem == "single_label_classification") {
    VT_CHECK(labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt,
             "labels: single-label classification needs integer class indices, got ", labels.scalar_type());
    auto target = labels.reshape({-1}).to(torch::kLong);
    VT_CHECK(target.numel() == batch, "labels: expected shape [", batch, "], got ", labels.sizes());
    if (target.numel() > 0) {
      // -100 is transformers' ignore index.
      auto valid = target.ne(-100);
      auto out_of_range = valid.logical_and(target.lt(0).logical_or(target.ge(num_labels)));
      if (out_of_range.any().item<bool>()) {
        int64_t bad = target.masked_select(out_of_range)[0].item<int64_t>();
        fail("labels: class index ", bad, " is out of range for ", num_labels, " labels");
      }
    }
    return torch::nn::functional::cross_entropy(
        logits32.reshape({-1, num_labels}), target,
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(label_smoothing));
  }
  if (problem == "multi_label_classification") {
    VT_CHECK(labels.sizes() == logits.sizes(), "labels: multi-label classification needs shape ", logits.sizes(), ", got ", labels.sizes());
    return torch::binary_cross_entropy_with_logits(logits32, labels.to(torch::kFloat32));
  }
  fail("unknown problem_type \"", problem, "\"");
}

std::vector<std::pair<std::string, torch::Tensor>> classification_outputs(const torch::Tensor& logits, const torch::Tensor& labels,
                                                                          const std::string& problem_type) {
  std::vector<std::pair<std::string, torch::Tensor>> outputs;
  if (labels.defined()) outputs.emplace_back("loss", image_classification_loss(logits, labels, problem_type));
  outputs.emplace_back("logits", logits);
  return outputs;
}

}  // namespace vt
