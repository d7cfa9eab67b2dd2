#include "kernels/batch_norm_relu.h"

#include <ATen/record_function.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

namespace vt::kernels {

namespace {

// The row loops below are memory-bound; built for AVX-512 where the CPU has it (chosen when the
// library loads), else for the baseline.
#define VT_ROW_KERNEL __attribute__((target_clones("avx512f", "default")))

// Rows summed into float partial sums this many at a time before they join the float64 totals:
// float vectors in the loop, no drift over a whole batch.
constexpr int64_t kRowsPerPartial = 128;

VT_ROW_KERNEL void add_rows(const float* __restrict x, int64_t rows, int64_t channels, float* __restrict sums) {
  for (int64_t row = 0; row < rows; ++row) {
    const float* __restrict values = x + row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) sums[c] += values[c];
  }
}

VT_ROW_KERNEL void add_squared_deviations(const float* __restrict x, int64_t rows, int64_t channels, const float* __restrict mean,
                                          float* __restrict sums) {
  for (int64_t row = 0; row < rows; ++row) {
    const float* __restrict values = x + row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float deviation = values[c] - mean[c];
      sums[c] += deviation * deviation;
    }
  }
}

// out = max(x * scale + shift (+ residual), 0)
VT_ROW_KERNEL void normalize_relu_rows(const float* __restrict x, const float* __restrict residual, int64_t rows, int64_t channels,
                                       const float* __restrict scale, const float* __restrict shift, float* __restrict out) {
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t offset = row * channels;
    if (residual != nullptr) {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) out[offset + c] = std::max(x[offset + c] * scale[c] + shift[c] + residual[offset + c], 0.0f);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) out[offset + c] = std::max(x[offset + c] * scale[c] + shift[c], 0.0f);
    }
  }
}

// g = dy where the output is positive, else 0; sums[c] += g, sums[channels + c] += g * (x - mean).
VT_ROW_KERNEL void relu_gradient_rows(const float* __restrict dy, const float* __restrict y, const float* __restrict x, int64_t rows,
                                      int64_t channels, const float* __restrict mean, float* __restrict g, float* __restrict sums) {
  float* __restrict sum_g = sums;
  float* __restrict sum_gx = sums + channels;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t offset = row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float gradient = y[offset + c] > 0.0f ? dy[offset + c] : 0.0f;
      g[offset + c] = gradient;
      sum_g[c] += gradient;
      sum_gx[c] += gradient * (x[offset + c] - mean[c]);
    }
  }
}

// dx = (g - offset_term - (x - mean) * slope) * factor
VT_ROW_KERNEL void input_gradient_rows(const float* __restrict g, const float* __restrict x, int64_t rows, int64_t channels,
                                       const float* __restrict mean, const float* __restrict offset_term, const float* __restrict slope,
                                       const float* __restrict factor, float* __restrict dx) {
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t offset = row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      dx[offset + c] = (g[offset + c] - offset_term[c] - (x[offset + c] - mean[c]) * slope[c]) * factor[c];
    }
  }
}

// Per-channel sums over the rows of a [rows, channels] matrix: one block of rows per thread,
// `add(first_row, rows, sums)` adding kRowsPerPartial rows at a time into zeroed float sums
// (`sums_per_row` x channels of them) that then join the block's float64 totals, the blocks'
// totals added in order.
template <typename AddRows>
std::vector<double> channel_sums(int64_t rows, int64_t channels, int64_t sums_per_row, const AddRows& add) {
  const int64_t width = channels * sums_per_row;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<double> partial(static_cast<size_t>(blocks * width), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> sums(static_cast<size_t>(width));
    for (int64_t block = first; block < last; ++block) {
      double* totals = partial.data() + block * width;
      const int64_t end = (block + 1) * rows / blocks;
      for (int64_t row = block * rows / blocks; row < end; row += kRowsPerPartial) {
        std::fill(sums.begin(), sums.end(), 0.0f);
        add(row, std::min(kRowsPerPartial, end - row), sums.data());
        for (int64_t i = 0; i < width; ++i) totals[i] += sums[i];
      }
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t i = 0; i < width; ++i) total[i] += partial[block * width + i];
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
    const auto sums = channel_sums(
        rows, channels, 1, [&](int64_t first, int64_t count, float* partial) { add_rows(x + first * channels, count, channels, partial); });
    auto mean = torch::empty({channels}, input.options().memory_format(torch::MemoryFormat::Contiguous));
    float* mean_data = mean.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) mean_data[c] = static_cast<float>(sums[c] / static_cast<double>(rows));
    const auto squares = channel_sums(rows, channels, 1, [&](int64_t first, int64_t count, float* partial) {
      add_squared_deviations(x + first * channels, count, channels, mean_data, partial);
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
    const float* r = residual.numel() > 0 ? residual.data_ptr<float>() : nullptr;
    over_rows(rows, channels, [&](int64_t first, int64_t last) {
      normalize_relu_rows(x + first * channels, r != nullptr ? r + first * channels : nullptr, last - first, channels, scale.data(),
                          shift.data(), y + first * channels);
    });
    context->save_for_backward({input, output, weight, mean, invstd});
    context->saved_data["residual"] = residual.numel() > 0;
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
    const auto sums = channel_sums(rows, channels, 2, [&](int64_t first, int64_t count, float* partial) {
      const int64_t offset = first * channels;
      relu_gradient_rows(dy + offset, y + offset, x + offset, count, channels, mu, g + offset, partial);
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
        const int64_t offset = first * channels;
        input_gradient_rows(g + offset, x + offset, last - first, channels, mu, offset_term.data(), slope.data(), factor.data(),
                            dx + offset);
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
  if (!float32_cpu(input) || input.dim() != 4 || !input.is_contiguous(torch::MemoryFormat::ChannelsLast) ||
      at::autocast::is_cpu_enabled()) {
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
  // No residual: an empty tensor, as autograd takes no undefined inputs.
  const auto residual =
      layer.residual.defined() ? layer.residual.contiguous(torch::MemoryFormat::ChannelsLast) : torch::empty({0}, input.options());
  auto outputs = BatchNormReluFunction::apply(input, layer.weight, layer.bias, residual, layer.eps);
  statistics.mean = outputs[1];
  statistics.variance = outputs[2];
  statistics.count = input.numel() / input.size(1);
  return outputs[0];
}

}  // namespace vt::kernels
