// CPU fast paths behind layers::Linear and layers::scaled_dot_product_attention.
//
// libtorch keeps BLAS single-threaded under its OpenMP team (see runtime/threads.cpp), so a plain
// large matrix product would run on one core. Here such a product is cut into one block of rows
// (or columns) per OpenMP thread, each a single-threaded BLAS call: the speed of a multi-threaded
// BLAS without a second thread pool spinning against OpenMP's.
#pragma once

#include <torch/torch.h>

namespace vt::kernels {

// Whether `linear` splits this product over the threads: CPU float32 operands outside autocast,
// large enough to be worth it, with more than one thread and not already inside a parallel region.
bool splits_linear(const torch::Tensor& input, const torch::Tensor& weight);

// input [..., in] @ weight[out, in]^T + bias [out] (bias may be undefined), as
// torch::nn::functional::linear, differentiable with respect to all three. Where a gradient is
// wanted and oneDNN has a kernel, the three products are oneDNN's (kernels::float32_linear, faster
// here than the split BLAS calls); VISIONTORCH_ONEDNN_TRAINING_PRODUCTS=0 keeps the split.
torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);

// Whether `attention` can run these operands: CPU float32, no gradient wanted, unit stride in the
// last dimension, and a mask (if any) that broadcasts to [M, heads, Tq, Tk], M dividing B: sample
// b reads mask entry b % M (Swin's windows, image after image, each with its window's mask).
bool fuses_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, const torch::Tensor& additive_mask);

// softmax(query key^T * scale + additive_mask) value over [B, heads, T, head_dim] operands, one
// (sample, head) pair at a time per thread, each pair's products one BLAS call on the operands in
// place: no [B, heads, Tq, Tk] score tensor, no copies to gather heads. Returns [B, heads, Tq, head_dim] as a view of a [B, Tq, heads,
// head_dim] tensor, so merging the heads back afterwards costs nothing.
torch::Tensor attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                        const torch::Tensor& additive_mask, double scale);

}  // namespace vt::kernels
