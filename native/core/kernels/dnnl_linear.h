// Inference linear layers through oneDNN's matmul: float32 and bfloat16 (AMX where the CPU has
// it), the bias and an optional GELU applied inside the kernel as it writes each block, and the
// weights read where they are ([out, in] row-major, as loaded or memory-mapped), no copy made.
#pragma once

#include <memory>

#include <torch/torch.h>

namespace vt::kernels {

enum class FusedActivation { None, Gelu, Relu };

// Whether dnnl_linear runs these operands: a build with oneDNN, CPU, input and weight of one
// dtype (float32 or bfloat16), no gradient wanted, outside autocast, and a fast kernel for them
// on this CPU (not oneDNN's reference one).
bool dnnl_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                         FusedActivation activation = FusedActivation::None);

// A linear layer's weights reordered into the layout oneDNN's kernel reads fastest: a copy of
// the weights, made on first use and again whenever they change. Worth it for inference that
// runs many times (5-15% on the product).
class PackedLinearWeights {
 public:
  PackedLinearWeights();
  ~PackedLinearWeights();
  struct State;
  State& state() { return *state_; }

 private:
  std::unique_ptr<State> state_;
};

// activation(input [..., in] @ weight[out, in]^T + bias); bias may be undefined. GELU is the
// exact (erf) one, as torch's default and HuggingFace's "gelu". With `packed`, the weights are
// read from its packed copy (kept up to date with `weight`). Throws where dnnl_linear_applies
// is false.
torch::Tensor dnnl_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                          FusedActivation activation = FusedActivation::None, PackedLinearWeights* packed = nullptr);

// Whether autocast_linear runs these operands: inside a CPU bfloat16 autocast region, float32
// or bfloat16 operands on CPU, and a fast oneDNN kernel for the product.
bool autocast_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);

// The linear layer as autocast computes it (bfloat16 product, bfloat16 output), differentiable:
// forward and backward products through oneDNN, and float32 parameters' gradients computed
// straight into float32 (autocast rounds them to bfloat16 first). With `residual` defined:
// linear(input) + residual (in the residual's dtype), the sum made inside the product's kernel.
torch::Tensor autocast_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& residual = {});

// Whether float32_linear runs these operands: CPU float32 input, weight and bias (defined), a
// contiguous weight, outside autocast and outside a parallel region, and a fast oneDNN kernel for
// the forward product.
bool float32_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);

// A float32 linear layer for training, differentiable, its three products (forward, input
// gradient, weight gradient) through oneDNN's matmul on the operands in place.
torch::Tensor float32_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);

// The exact (erf) GELU, differentiable, through oneDNN for a contiguous CPU bfloat16 tensor (a
// linear layer's output under autocast); torch::gelu otherwise.
torch::Tensor autocast_gelu(const torch::Tensor& input);

}  // namespace vt::kernels
