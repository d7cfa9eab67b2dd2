// Attention with its backward through oneDNN, for training: bfloat16 operands inside a bfloat16
// autocast region, float32 ones otherwise. The products read the heads where the projections
// wrote them ([B, T, heads, head_dim] memory) and write theirs the same way, the scale rides on
// the first product, and the softmax (forward and backward) is one primitive each. libtorch
// 1.13 copies each head operand into a contiguous tensor, scales and normalizes in separate
// passes, and its batched float32 product runs one small BLAS call per head.
#pragma once

#include <torch/torch.h>

namespace vt::kernels {

// Whether training_attention runs these operands: a build with oneDNN, CPU [B, heads, T,
// head_dim] operands with unit stride in the last dimension, no mask, either bfloat16 inside a
// bfloat16 autocast region or float32 wanting a gradient outside of autocast, and fast oneDNN
// kernels for the products on this CPU.
bool training_attention_applies(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                const torch::Tensor& additive_mask);

// softmax(query key^T * scale) value, differentiable with respect to the three operands.
// Returns [B, heads, T, head_dim] as a view of a [B, T, heads, head_dim] tensor (merging the heads
// afterwards is free); the gradients come back in the same layout.
torch::Tensor training_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, double scale);

}  // namespace vt::kernels
