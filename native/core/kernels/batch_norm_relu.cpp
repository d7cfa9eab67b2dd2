#include "kernels/batch_norm_relu.h"

#include <ATen/record_function.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

namespace vt::kernels {

namespace {

// Per-channel sums over the rows of a [rows, channels] matrix, split into one block of rows per
// thread, each block summed in float64 and the blocks added in order: `add(row, sums)` adds one
// row's terms into `sums`.
template <typename AddRow>
std::vector<double> channel_sums(int64_t rows, int64_t channels, int sums_per_row, const AddRow& add) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<double> partial(static_cast<size_t>(blocks * channels * sums_per_row), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      double* sums = partial.data() + block * channels * sums_per_row;
      for (int64_t row = block * rows / blocks; row < (block + 1) * rows / blocks; ++row) add(row, sums);
    }
  });
  std::vector<double> total(static_cast<size_t>(channels * sums_per_row), 0.0);
  for (int64_t block = 0; block < blocks; ++block) {
    for (size_t i = 0; i < total.size(); ++i) total[i] += partial[block * total.size() + i];
  }
  return total;
}

// Runs `body(first_row, last_row)` over the rows on the OpenMP team.
template <typename Body>
void over_rows(int64_t rows, int64_t channels, const Body& body) {
  // About 32K values a task: enough work to be worth a thread's wake-up.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(channels, 1));
  at::parallel_for(0, rows, grain, body);
}

class BatchNormReluFunction : public torch::autograd::Function<BatchNormReluFunction> {
 public:
  static torch::autograd::tensor_list forward(torch::autograd::AutogradContext* context, const torch::Tensor& input,
                                              const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& residual,
                                              double eps) {
    RECORD_FUNCTION("visiontorch::batch_norm_relu", std::vector<c10::IValue>());
    const int64_t channels = input.size(1), rows = input.numel() / channels;
    const float* x = input.data_ptr<float>();
    // Two passes, as libtorch's: the mean, then the squared deviations from it.
    const auto sums = channel_sums(rows, channels, 1, [&](int64_t row, double* total) {
      const float* values = x + row * channels;
      for (int64_t c = 0; c < channels; ++c) total[c] += values[c];
    });
    auto mean = torch::empty({channels}, input.options().memory_format(torch::MemoryFormat::Contiguous));
    float* mean_data = mean.data_ptr<float>();
    std::vector<double> mean_exact(static_cast<size_t>(channels));
    for (int64_t c = 0; c < channels; ++c) {
      mean_exact[c] = sums[c] / static_cast<double>(rows);
      mean_data[c] = static_cast<float>(mean_exact[c]);
    }
    const auto squares = channel_sums(rows, channels, 1, [&](int64_t row, double* total) {
      const float* values = x + row * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const double deviation = values[c] - mean_exact[c];
        total[c] += deviation * deviation;
      }
    });
    auto variance = torch::empty_like(mean), invstd = torch::empty_like(mean);
    std::vector<float> scale(static_cast<size_t>(channels)), shift(static_cast<size_t>(channels));
    const float *gamma = weight.data_ptr<float>(), *beta = bias.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) {
      const double biased = squares[c] / static_cast<double>(rows);
      variance.data_ptr<float>()[c] = static_cast<float>(biased);
      const float inverse = static_cast<float>(1.0 / std::sqrt(biased + eps));
      invstd.data_ptr<float>()[c] = inverse;
      scale[c] = gamma[c] * inverse;
      shift[c] = beta[c] - mean_data[c] * scale[c];
    }
    auto output = torch::empty_like(input, torch::MemoryFormat::ChannelsLast);
    float* y = output.data_ptr<float>();
    const float* r = residual.defined() ? residual.data_ptr<float>() : nullptr;
    over_rows(rows, channels, [&](int64_t first, int64_t last) {
      for (int64_t row = first; row < last; ++row) {
        const float* in = x + row * channels;
        float* out = y + row * channels;
        const float* add = r != nullptr ? r + row * channels : nullptr;
        if (add != nullptr) {
          for (int64_t c = 0; c < channels; ++c) out[c] = std::max(in[c] * scale[c] + shift[c] + add[c], 0.0f);
        } else {
          for (int64_t c = 0; c < channels; ++c) out[c] = std::max(in[c] * scale[c] + shift[c], 0.0f);
        }
      }
    });
    context->save_for_backward({input, output, weight, mean, invstd});
    context->saved_data["residual"] = residual.defined();
    context->mark_non_differentiable({mean, variance});
    return {output, mean, variance};
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    RECORD_FUNCTION("visiontorch::batch_norm_relu_backward", std::vector<c10::IValue>());
    const auto saved = context->get_saved_variables();
    const auto &input = saved[0], &output = saved[1], &weight = saved[2], &mean = saved[3], &invstd = saved[4];
    const auto grad_output = grad_outputs[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t channels = input.size(1), rows = input.numel() / channels;
    const float *x = input.data_ptr<float>(), *y = output.data_ptr<float>(), *dy = grad_output.data_ptr<float>();
    const float *mu = mean.data_ptr<float>(), *inverse = invstd.data_ptr<float>(), *gamma = weight.data_ptr<float>();
    // The ReLU's gradient, kept: it is the residual's, and the normalization's output gradient.
    auto masked = torch::empty_like(grad_output);
    float* g = masked.data_ptr<float>();
    // [sum of g, sum of g * (x - mean)] per channel
    const auto sums = channel_sums(rows, channels, 2, [&](int64_t row, double* total) {
      const int64_t offset = row * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const float gradient = y[offset + c] > 0.0f ? dy[offset + c] : 0.0f;
        g[offset + c] = gradient;
        total[c] += gradient;
        total[channels + c] += static_cast<double>(gradient) * (x[offset + c] - mu[c]);
      }
    });
    torch::Tensor grad_input, grad_weight, grad_bias;
    if (context->needs_input_grad(0)) {
      grad_input = torch::empty_like(input, torch::MemoryFormat::ChannelsLast);
      float* dx = grad_input.data_ptr<float>();
      // dx = (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean))) * weight * invstd
      std::vector<float> offset_term(static_cast<size_t>(channels)), slope(static_cast<size_t>(channels)),
          factor(static_cast<size_t>(channels));
      for (int64_t c = 0; c < channels; ++c) {
        offset_term[c] = static_cast<float>(sums[c] / static_cast<double>(rows));
        slope[c] = static_cast<float>(sums[channels + c] / static_cast<double>(rows) * inverse[c] * inverse[c]);
        factor[c] = gamma[c] * inverse[c];
      }
      over_rows(rows, channels, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          const int64_t offset = row * channels;
          for (int64_t c = 0; c < channels; ++c) {
            dx[offset + c] = (g[offset + c] - offset_term[c] - (x[offset + c] - mu[c]) * slope[c]) * factor[c];
          }
        }
      });
    }
    if (context->needs_input_grad(1) || context->needs_input_grad(2)) {
      grad_weight = torch::empty_like(weight), grad_bias = torch::empty_like(weight);
      for (int64_t c = 0; c < channels; ++c) {
        grad_weight.data_ptr<float>()[c] = static_cast<float>(sums[channels + c] * inverse[c]);
        grad_bias.data_ptr<float>()[c] = static_cast<float>(sums[c]);
      }
    }
    const bool has_residual = context->saved_data["residual"].toBool();
    return {grad_input, grad_weight, grad_bias, has_residual ? masked : torch::Tensor(), torch::Tensor()};
  }
};

bool float32_cpu(const torch::Tensor& t) { return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32; }

}  // namespace

bool batch_norm_relu_applies(const torch::Tensor& input, const BatchNormRelu& layer) {
  if (!float32_cpu(input) || input.dim() != 4 || !input.is_contiguous(torch::MemoryFormat::ChannelsLast) || at::autocast::is_cpu_enabled()) {
    return false;
  }
  const int64_t channels = input.size(1);
  if (channels == 0 || input.numel() / channels < 2) return false;
  for (const auto* t : {&layer.weight, &layer.bias}) {
    if (!float32_cpu(*t) || t->dim() != 1 || t->size(0) != channels || !t->is_contiguous()) return false;
  }
  return !layer.residual.defined() || (float32_cpu(layer.residual) && layer.residual.sizes() == input.sizes());
}

torch::Tensor batch_norm_relu(const torch::Tensor& input, const BatchNormRelu& layer, BatchStatistics& statistics) {
  const auto residual = layer.residual.defined() ? layer.residual.contiguous(torch::MemoryFormat::ChannelsLast) : torch::Tensor();
  auto outputs = BatchNormReluFunction::apply(input, layer.weight, layer.bias, residual, layer.eps);
  statistics.mean = outputs[1];
  statistics.variance = outputs[2];
  statistics.count = input.numel() / input.size(1);
  return outputs[0];
}

}  // namespace vt::kernels
