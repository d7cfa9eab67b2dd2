#include "nn/sync_batch_norm.h"

#include <cstdint>

#include "common/error.h"

namespace vt::layers {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per-channel sums over everything but the channel dimension.
torch::Tensor channel_sum(const torch::Tensor& tensor) { return tensor.sum({0, 2, 3}); }
torch::Tensor per_channel(const torch::Tensor& vector) { return vector.reshape({1, -1, 1, 1}); }

struct SynchronizedBatchNorm : torch::autograd::Function<SynchronizedBatchNorm> {
  // `mean` and `invstd` are the global statistics (no gradient flows to them: backward handles
  // their dependence on the input, as SyncBatchNorm's does); `count` the images' pixels on all ranks.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& mean, const torch::Tensor& invstd, double count, ReplicaGroup* group) {
    ctx->save_for_backward({input, weight, mean, invstd});
    ctx->saved_data["count"] = count;
    ctx->saved_data["group"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(group));
    auto scale = per_channel(invstd * weight);
    return (input - per_channel(mean)) * scale + per_channel(bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto& mean = saved[2];
    const auto& invstd = saved[3];
    const double count = ctx->saved_data["count"].toDouble();
    auto* group = reinterpret_cast<ReplicaGroup*>(static_cast<intptr_t>(ctx->saved_data["group"].toInt()));
    const auto& grad_output = grad_outputs[0];

    auto centered = input - per_channel(mean);
    auto sum_dy = channel_sum(grad_output);
    auto sum_dy_centered = channel_sum(grad_output * centered);
    // The parameters' gradients stay local: data-parallel averaging sums them over the ranks.
    auto grad_weight = sum_dy_centered * invstd;
    auto grad_bias = sum_dy;
    // The input's gradient depends on every rank's output gradient, through the global statistics.
    const int64_t channels = sum_dy.size(0);
    auto combined = torch::cat({sum_dy, sum_dy_centered});
    group->all_reduce_sum(combined);
    auto mean_dy = combined.slice(0, 0, channels) / count;
    auto mean_dy_centered = combined.slice(0, channels) / count;
    auto grad_input =
        (grad_output - per_channel(mean_dy) - centered * per_channel(invstd * invstd * mean_dy_centered)) * per_channel(invstd * weight);
    return {grad_input, grad_weight, grad_bias, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void update_running_statistics(torch::nn::BatchNorm2dImpl& norm, const torch::Tensor& mean, const torch::Tensor& variance, double count) {
  if (!norm.options.track_running_stats()) return;
  torch::NoGradGuard no_grad;
  double factor = 0.0;
  if (norm.num_batches_tracked.defined()) norm.num_batches_tracked.add_(1);
  if (norm.options.momentum().has_value()) {
    factor = *norm.options.momentum();
  } else {
    factor = 1.0 / static_cast<double>(norm.num_batches_tracked.item<int64_t>());
  }
  const auto device = norm.running_mean.device();
  const auto dtype = norm.running_mean.scalar_type();
  norm.running_mean.mul_(1 - factor).add_(mean.to(device, dtype), factor);
  norm.running_var.mul_(1 - factor).add_((variance * (count / (count - 1))).to(device, dtype), factor);
}

torch::Tensor synchronized_batch_norm(torch::nn::BatchNorm2dImpl& norm, const torch::Tensor& input, ReplicaGroup& group) {
  const auto& options = norm.options;
  VT_CHECK(options.affine() && options.track_running_stats(), "synchronized BatchNorm needs affine weights and running statistics");
  VT_CHECK(input.dim() == 4, "BatchNorm2d: expected a 4-d input, got ", input.sizes());
  const int64_t channels = input.size(1);
  // This rank's statistics, exactly (two passes), then combined over the ranks by their counts in
  // float64: the global mean and biased variance of one process holding every rank's images.
  torch::Tensor local_mean, local_variance;
  {
    torch::NoGradGuard no_grad;
    auto values = input.detach().to(torch::kFloat32);
    std::tie(local_variance, local_mean) = torch::var_mean(values, {0, 2, 3}, /*unbiased=*/false);
  }
  const double local_count = static_cast<double>(input.numel() / std::max<int64_t>(channels, 1));
  auto statistics = torch::cat(
      {torch::full({1}, local_count, torch::kFloat64), local_mean.to(torch::kFloat64).cpu(), local_variance.to(torch::kFloat64).cpu()});
  auto gathered = torch::stack(group.all_gather(statistics.to(input.device()))).cpu();
  auto counts = gathered.select(1, 0).unsqueeze(1);
  auto means = gathered.slice(1, 1, 1 + channels);
  auto variances = gathered.slice(1, 1 + channels);
  const double count = counts.sum().item<double>();
  VT_CHECK(count > 1, "BatchNorm2d: expected more than 1 value per channel when training, got ", count, " over all ranks");
  auto mean = (counts * means).sum(0) / count;
  auto variance = (counts * (variances + (means - mean).pow(2))).sum(0) / count;

  update_running_statistics(norm, mean, variance, count);
  auto invstd = (variance + options.eps()).rsqrt().to(input.device(), input.scalar_type());
  return SynchronizedBatchNorm::apply(input, norm.weight, norm.bias, mean.to(input.device(), input.scalar_type()), invstd, count, &group);
}

}  // namespace vt::layers
