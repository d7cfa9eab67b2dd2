// Attention inside a bfloat16 autocast region (training), through oneDNN: the products read the
// heads where the projections wrote them ([B, T, heads, head_dim] memory) and write theirs the
// same way, the scale rides on the first product, and the softmax (forward and backward) runs on
// float32 scores in one primitive each. libtorch 1.13's bfloat16 path copies each head operand
// into a contiguous tensor, scales and normalizes in separate passes, and is slower per element.
#pragma once

#include <torch/torch.h>

namespace vt::kernels {

// Whether autocast_attention runs these operands: a build with oneDNN, a CPU bfloat16 autocast
// region, bfloat16 [B, heads, T, head_dim] operands with unit stride in the last dimension, no
// mask, and fast oneDNN kernels for the products on this CPU.
bool autocast_attention_applies(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                const torch::Tensor& additive_mask);

// softmax(query key^T * scale) value, differentiable with respect to the three operands.
// Returns [B, heads, T, head_dim] as a view of a [B, T, heads, head_dim] tensor (merging the heads
// afterwards is free); the gradients come back in the same layout.
torch::Tensor autocast_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, double scale);

}  // namespace vt::kernels
