// Shared building blocks. Every architecture's linear layers, attention and normalization go
// through these, so a faster kernel (oneDNN, fused attention, bf16) replaces them in one place.
// Parameter names are PyTorch's (`weight`, `bias`), so HuggingFace keys load unchanged.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "kernels/dnnl_attention.h"
#include "kernels/dnnl_conv.h"
#include "kernels/dnnl_linear.h"
#include "kernels/int8_linear.h"

namespace vt::layers {

// HuggingFace's ACT2FN by name ("gelu", "gelu_new", "relu", "silu", "quick_gelu", ...).
using Activation = std::function<torch::Tensor(const torch::Tensor&)>;
Activation activation(const std::string& name);  // throws vt::Error listing the known names

// While one is alive on a thread, linear layers built there skip their random initialisation: a
// checkpoint is about to overwrite it (most of a transformer's load time otherwise), and what it
// lacks is initialised afterwards, as from_pretrained's no_init_weights does.
class DeferredInitialisation {
 public:
  DeferredInitialisation();
  ~DeferredInitialisation();
  DeferredInitialisation(const DeferredInitialisation&) = delete;
  DeferredInitialisation& operator=(const DeferredInitialisation&) = delete;
  static bool active();

 private:
  bool outer_;
};

// input [..., in] @ weight [out, in]^T + bias through the fastest path that applies: oneDNN for
// inference (reading `packed` weights when given), oneDNN under bfloat16 autocast, else
// kernels::linear.
torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                     kernels::PackedLinearWeights* packed = nullptr);

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& input);
  // forward(input) + residual; under bfloat16 autocast the sum is made by the product's kernel.
  torch::Tensor forward_add(const torch::Tensor& input, const torch::Tensor& residual);
  // activation(forward(input)) for an ACT2FN name; "gelu" and "relu" run inside the matrix
  // product's kernel where it allows (CPU inference).
  torch::Tensor forward_then(const torch::Tensor& input, const std::string& activation);
  void reset_parameters(double std);  // trunc_normal(0, std) weight, zero bias, as HF's _init_weights
  void reset_default();               // PyTorch's nn.Linear initialisation (kaiming-uniform bounds)
  bool initialisation_deferred() const { return initialisation_deferred_; }
  // From now on evaluation-mode forwards use an int8 copy of the current weights (see
  // kernels::Int8Linear); the float32 parameters stay for state_dict and save.
  void quantize_int8();
  bool quantized() const { return int8_ != nullptr; }
  int64_t in_features, out_features;
  torch::Tensor weight, bias;  // bias undefined when constructed without one

 private:
  bool initialisation_deferred_ = false;  // built under DeferredInitialisation, not yet initialised
  std::shared_ptr<const kernels::Int8Linear> int8_;
  // Inference's packed copy of the weights (see kernels::PackedLinearWeights).
  std::shared_ptr<kernels::PackedLinearWeights> packed_ = std::make_shared<kernels::PackedLinearWeights>();
};
TORCH_MODULE(Linear);

class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t features, double eps);
  torch::Tensor forward(const torch::Tensor& input);
  void reset_parameters();  // weight 1, bias 0
  int64_t features;
  double eps;
  torch::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// softmax(query key^T * scale + additive_mask) value on [B, heads, T, head_dim] tensors, through
// the fastest path that applies (fused CPU inference, oneDNN training attention, libtorch 2.x's
// sdpa on CUDA). `additive_mask`, when defined, broadcasts to [B, heads, Tq, Tk], or has M
// leading entries for a batch of M images' worth of samples each, sample b reading entry b % M
// (Swin's windows, image after image); `scale` defaults to 1 / sqrt(head_dim) (DETR scales its
// queries itself and passes 1).
torch::Tensor scaled_dot_product_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                           const torch::Tensor& additive_mask, double dropout, bool training,
                                           std::optional<double> scale = std::nullopt);

// BatchNorm2d with fixed statistics and affine weights, all buffers (DETR's FrozenBatchNorm2d:
// torchvision's, with eps inside the rsqrt).
class FrozenBatchNorm2dImpl : public torch::nn::Module {
 public:
  explicit FrozenBatchNorm2dImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& input);
  torch::Tensor weight, bias, running_mean, running_var;
};
TORCH_MODULE(FrozenBatchNorm2d);

// norm(input), with batch statistics over every data-parallel rank when the trainer asks for
// them (syncBatchNorm: common/replica_group.h's ReplicaScope) and the layer is in training mode.
torch::Tensor batch_norm(torch::nn::BatchNorm2d& norm, const torch::Tensor& input);

// A BatchNorm2d registered under `name`, trainable or frozen, so convolutional backbones serve
// both classification (statistics that train) and detection (frozen, as DETR's backbone).
struct BatchNorm2dSlot {
  BatchNorm2dSlot() = default;
  BatchNorm2dSlot(torch::nn::Module& parent, const std::string& name, int64_t channels, bool frozen);
  torch::Tensor operator()(const torch::Tensor& input);
  // relu(norm(input) + residual) (`residual` may be undefined): one pass each way through
  // kernels/batch_norm_relu.h where it applies (a trainable normalization in training mode over
  // channels-last float32, statistics of this process alone), else step by step.
  torch::Tensor with_relu(const torch::Tensor& input, const torch::Tensor& residual = {});
  // The convolution followed by this normalization, for kernels::FusedConvolution; nullopt while
  // batch statistics normalize (a trainable one in training mode).
  std::optional<kernels::ConvolutionBatchNorm> after(const torch::nn::Conv2d& convolution) const;
  torch::nn::BatchNorm2d trainable{nullptr};
  FrozenBatchNorm2d frozen{nullptr};
};

// convolution(input), through oneDNN for every float32 CPU input when no gradient is wanted, and
// through its Winograd kernels both ways where a float32 3x3 stride-1 one trains
// (kernels/dnnl_winograd_conv.h).
// libtorch 1.13 sends a small single-image input to its im2col kernel and the same input in a
// batch to oneDNN, whose results differ in the last bits: a micro-batched call would not give
// what the call alone gives.
torch::Tensor conv2d(torch::nn::Conv2d convolution, const torch::Tensor& input);

// A convolution and the normalization after it, registered by the model under its own names,
// with the fused kernel's state: relu?(norm(convolution(input)) + residual) runs as one oneDNN
// kernel (folded, prepacked weights) where it applies, else step by step.
class ConvolutionNorm {
 public:
  ConvolutionNorm() = default;
  ConvolutionNorm(torch::nn::Conv2d convolution, BatchNorm2dSlot normalization);
  ConvolutionNorm(torch::nn::Conv2d convolution, FrozenBatchNorm2d normalization);
  // `residual` may be undefined; with `may_overwrite_residual` (nothing else sees its memory) the
  // sum is accumulated into it.
  torch::Tensor operator()(const torch::Tensor& input, const torch::Tensor& residual = {}, bool relu = false,
                           bool may_overwrite_residual = false);
  // The fused kernel alone: undefined where it does not apply (a gradient wanted, batch
  // statistics in training, a geometry or dtype it does not cover).
  torch::Tensor fused(const torch::Tensor& input, const torch::Tensor& residual, bool relu, bool may_overwrite_residual = false);
  torch::nn::Conv2d convolution{nullptr};
  BatchNorm2dSlot normalization;

 private:
  kernels::FusedConvolution kernel_;
};

// Stochastic depth (timm's drop_path): drops whole samples of a residual branch with
// probability `p` in training, scaling the kept ones by 1 / (1 - p).
torch::Tensor drop_path(const torch::Tensor& x, double p, bool training);

// transformers' common _init_weights: Linear and Conv2d weights normal(0, std) with zero biases,
// LayerNorm weight 1 and bias 0. False for a module of another type (the model's own to handle).
bool init_normal(torch::nn::Module& module, double std);

// PyTorch's nn.init.trunc_normal_ (bounds a, b are absolute values, as in PyTorch).
void trunc_normal_(torch::Tensor& tensor, double mean, double std, double a = -2.0, double b = 2.0);

}  // namespace vt::layers

namespace vt::layers {

// A module that only groups children under a name (transformers' `encoder`, `attention.output`),
// so the parameter paths match checkpoint keys.
std::shared_ptr<torch::nn::Module> add_container(torch::nn::Module& parent, const std::string& name);

}  // namespace vt::layers

namespace vt::layers {

// Gradient checkpointing: runs `fn(input)` without keeping its activations, and runs it again
// in the backward pass to compute the gradients (of `input` and of every parameter `fn` uses),
// with the forward's RNG and autocast state, so dropout and precision match. Outside of
// autograd (no grad needed) it is a plain call.
torch::Tensor checkpoint(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& input);

}  // namespace vt::layers
