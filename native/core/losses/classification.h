// Losses shared by the task heads, computed as transformers' forward does with labels.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace vt {

// transformers' *ForImageClassification loss: the problem type comes from config.problem_type,
// else from num_labels and the labels' dtype (1 label: regression/MSE; integer labels:
// cross-entropy; float labels: multi-label BCE with logits). Labels are validated first so a bad
// batch gets an error naming the problem rather than a libtorch assertion.
torch::Tensor image_classification_loss(const torch::Tensor& logits, const torch::Tensor& labels, const std::string& problem_type,
                                        double label_smoothing = 0.0);

// What every *ForImageClassification forward returns: the loss first when labels are given, then
// the logits.
std::vector<std::pair<std::string, torch::Tensor>> classification_outputs(const torch::Tensor& logits, const torch::Tensor& labels,
                                                                          const std::string& problem_type);

// The problem type classification_loss resolves to for these labels.
std::string resolve_problem_type(const std::string& configured, int64_t num_labels, const torch::Tensor& labels);

}  // namespace vt
