// The per-pixel classification loss of semantic segmentation heads (SegFormer, custom TorchScript
// segmentation models).
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace vt::losses {

// transformers' semantic segmentation loss: logits upsampled (bilinear) to the labels' size,
// cross-entropy ignoring `ignore_index`; with one label, a masked binary cross-entropy.
torch::Tensor semantic_segmentation_loss(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index);

}  // namespace vt::losses
