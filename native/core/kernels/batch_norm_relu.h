// Training-mode batch normalization fused with the ReLU after it (and a residual sum between
// them), over channels-last float32 images: the batch statistics, the normalization, the sum and
// the ReLU in one pass over the data after the statistics' two, and in backward the ReLU's mask,
// the sums over the batch and the input gradient in two passes. libtorch runs each as separate
// passes with a tensor between them.
#pragma once

#include <torch/torch.h>

namespace vt::kernels {

// What the fused training pass needs besides the input.
struct BatchNormRelu {
  torch::Tensor weight, bias;  // float32 [C], the normalization's affine parameters
  double eps = 1e-5;
  torch::Tensor residual;  // undefined, or added after the normalization (the input's sizes)
};

// The batch's statistics: mean and biased variance per channel (float32 [C]), for the caller's
// running statistics.
struct BatchStatistics {
  torch::Tensor mean, variance;
  int64_t count = 0;  // values per channel
};

// Whether batch_norm_relu takes these operands: CPU float32 input (4-d, channels-last
// contiguous, more than one value per channel), float32 weight and bias of its channels, the
// residual (if any) float32 of the same sizes, and no autocast.
bool batch_norm_relu_applies(const torch::Tensor& input, const BatchNormRelu& layer);

// relu(batch_norm(input) + residual) with the batch's own statistics, channels-last, with
// autograd to the input, weight, bias and residual. Fills `statistics`.
torch::Tensor batch_norm_relu(const torch::Tensor& input, const BatchNormRelu& layer, BatchStatistics& statistics);

}  // namespace vt::kernels
