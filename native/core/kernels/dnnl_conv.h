// Inference convolution + batch normalization through oneDNN, in channels-last (NHWC) layout:
// the normalization folded into the convolution's weights and bias, a residual sum and a ReLU
// applied by the kernel as it writes each block, and the folded weights packed once into the
// kernel's own layout (again only when the weights or statistics change). float32 3x3 stride-1
// convolutions without a residual take oneDNN's Winograd kernels (VISIONTORCH_CONV_WINOGRAD=0:
// direct ones only).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include <torch/torch.h>

namespace vt::kernels {

// What a convolution followed by an inference-mode batch normalization computes.
struct ConvolutionBatchNorm {
  torch::Tensor weight;  // [out, in, kh, kw], no groups
  int64_t stride = 1, padding = 0, dilation = 1;
  // scale = norm_weight / sqrt(running_var + eps), shift = norm_bias - running_mean * scale
  torch::Tensor norm_weight, norm_bias, running_mean, running_var;
  double eps = 1e-5;
};

class FusedConvolution {
 public:
  // relu?(batch_norm(conv(input)) + residual?) as channels-last; residual may be undefined.
  // With `may_overwrite_residual` (nothing else sees the residual's memory), the result is
  // accumulated into the residual and returned as it: a faster kernel than reading the residual
  // on the side, with no output to allocate.
  // Undefined where this path does not apply: a build without oneDNN, not CPU, a dtype other
  // than float32 or bfloat16 (input and weights alike), a gradient wanted, autocast, or no fast
  // oneDNN kernel for the shapes on this CPU.
  torch::Tensor run(const torch::Tensor& input, const ConvolutionBatchNorm& layer, const torch::Tensor& residual, bool relu,
                    bool may_overwrite_residual = false);

  FusedConvolution();
  ~FusedConvolution();
  FusedConvolution(FusedConvolution&&) noexcept;
  FusedConvolution& operator=(FusedConvolution&&) noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace vt::kernels
