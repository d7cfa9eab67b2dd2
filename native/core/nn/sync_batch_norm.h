// BatchNorm over the whole data-parallel batch, as torch.nn.SyncBatchNorm computes it: each rank's
// mean and variance gathered and combined by their counts, running statistics updated from the
// global ones, and in backward the sums of the output gradient all-reduced so the input gradient
// is the one of a single process holding every rank's images.
#pragma once

#include <optional>

#include <torch/torch.h>

#include "common/replica_group.h"

namespace vt::layers {

// Running statistics as torch's BatchNorm updates them from a batch's mean and biased variance
// over `count` values per channel: the unbiased variance, momentum (or a cumulative average
// without one), num_batches_tracked counted. Nothing without running statistics.
void update_running_statistics(torch::nn::BatchNorm2dImpl& norm, const torch::Tensor& mean, const torch::Tensor& variance, double count);

// BatchNorm2d `norm` in training mode over `input` [N, C, H, W], its statistics combined over
// `group` (every rank calls it, in the same order). Updates the running statistics in place.
torch::Tensor synchronized_batch_norm(torch::nn::BatchNorm2dImpl& norm, const torch::Tensor& input, ReplicaGroup& group);

}  // namespace vt::layers
