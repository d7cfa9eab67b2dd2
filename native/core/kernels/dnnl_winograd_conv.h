// Training convolutions through oneDNN's Winograd kernels (F(4x4, 3x3)), forward and both
// gradients: float32 3x3 stride-1 convolutions such as a ResNet bottleneck's middle one, where
// libtorch's (and PyTorch's) direct oneDNN kernels do 2.25x the multiplications.
// VISIONTORCH_CONV_WINOGRAD=0 keeps the direct kernels.
#pragma once

#include <torch/torch.h>

namespace vt::kernels {

// The geometry of a convolution without bias (square stride, padding and dilation).
struct ConvolutionGeometry {
  int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
};

// conv2d(input, weight) with autograd, channels-last output, through the Winograd kernels both
// ways. Undefined where this path does not apply: a build without oneDNN, not CPU, not float32
// (input and weight), autocast, no gradient wanted (inference has its own fused kernels), a
// geometry other than 3x3 / stride 1 / padding 1 / dilation 1 / one group, channels not a
// multiple of 16, images smaller than 14x14 (there the direct kernels were faster here), or no
// Winograd kernel for the shapes on this CPU.
torch::Tensor winograd_training_convolution(const torch::Tensor& input, const torch::Tensor& weight, const ConvolutionGeometry& geometry);

}  // namespace vt::kernels
