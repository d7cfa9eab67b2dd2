// Dynamic int8 quantization of a linear layer for CPU inference, as PyTorch's quantize_dynamic:
// weights quantized once per output channel, activations per tensor on every call, int8 x int8
// products accumulated in int32 by oneDNN (AMX or VNNI where the CPU has them), then scaled back
// to float32 with the bias added.
#pragma once

#include <memory>

#include <torch/torch.h>

namespace vt::kernels {

// Whether this build can quantize (it needs oneDNN at build time).
bool int8_linear_available();

class Int8Linear {
 public:
  // weight [out, in] and bias [out] (may be undefined), float32 on CPU. Throws vt::Error when
  // int8_linear_available() is false.
  Int8Linear(const torch::Tensor& weight, const torch::Tensor& bias);
  ~Int8Linear();
  // input [..., in] float32 -> [..., out] float32.
  torch::Tensor forward(const torch::Tensor& input) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vt::kernels
