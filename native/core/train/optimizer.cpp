#include "train/optimizer.h"

#include <ATen/record_function.h>
#include <algorithm>
#include <cmath>
#include <functional>

#include <ATen/Parallel.h>

#include "common/error.h"
#include "nn/layers.h"

namespace vt {

namespace {

// Whether the AdamW update can walk the four tensors as one flat float32 array each.
bool flat_float32_alike(const torch::Tensor& parameter, const std::initializer_list<const torch::Tensor*>& others) {
  if (!parameter.device().is_cpu() || parameter.scalar_type() != torch::kFloat32 || !parameter.is_non_overlapping_and_dense()) return false;
  for (const auto* other : others) {
    if (!other->device().is_cpu() || other->scalar_type() != torch::kFloat32 || other->strides() != parameter.strides() ||
        other->sizes() != parameter.sizes()) {
      return false;
    }
  }
  return true;
}

// The loops below are compiled twice: for the baseline ISA and for AVX-512, picked at run time
// where the CPU has it. The file is built with -fno-math-errno (an errno-setting sqrt kept the
// AdamW loop scalar: 111 ms per 86M parameters here, 56 ms vectorized) and without contraction
// into FMA, so both variants round exactly as torch's separate kernels do.
#if defined(__x86_64__) && defined(__GNUC__)
#define VT_TWO_ISAS 1
#define VT_INLINE_BODY inline __attribute__((always_inline))
bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#else
#define VT_TWO_ISAS 0
#define VT_INLINE_BODY inline
#endif

struct AdamWStep {
  float decay, beta1, beta2, one_minus_beta1, one_minus_beta2, bias_correction2_sqrt, eps, negative_step_size;
  float gradient_scale;  // clipping's grad.mul_(scale), rounded to float32 as that would round it, without the pass
};

// torch.optim.AdamW's single-tensor update of elements [begin, end) in one pass over memory
// instead of its seven kernels, each step in torch's order and rounded to float32 as torch's
// separate kernels round it.
VT_INLINE_BODY void adamw_update_body(const AdamWStep& s, float* p, const float* g, float* m, float* v, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float gradient = s.gradient_scale == 1.0f ? g[i] : g[i] * s.gradient_scale;
    const float weight = p[i] * s.decay;
    const float average = m[i] * s.beta1 + s.one_minus_beta1 * gradient;
    const float square = v[i] * s.beta2 + s.one_minus_beta2 * gradient * gradient;
    const float denominator = std::sqrt(square) / s.bias_correction2_sqrt + s.eps;
    m[i] = average;
    v[i] = square;
    p[i] = weight + s.negative_step_size * (average / denominator);
  }
}

void adamw_update_portable(const AdamWStep& s, float* p, const float* g, float* m, float* v, int64_t begin, int64_t end) {
  adamw_update_body(s, p, g, m, v, begin, end);
}

#if VT_TWO_ISAS
__attribute__((target("avx512f"))) void adamw_update_avx512(const AdamWStep& s, float* p, const float* g, float* m, float* v, int64_t begin,
                                                            int64_t end) {
  adamw_update_body(s, p, g, m, v, begin, end);
}
#endif

void fused_adamw_update(torch::Tensor& parameter, const torch::Tensor& grad, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                        double decay_factor, double beta1, double beta2, double bias_correction2_sqrt, double eps, double step_size,
                        double gradient_scale) {
  float* p = parameter.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const AdamWStep step{static_cast<float>(decay_factor), static_cast<float>(beta1),       static_cast<float>(beta2),
                       static_cast<float>(1.0 - beta1),  static_cast<float>(1.0 - beta2), static_cast<float>(bias_correction2_sqrt),
                       static_cast<float>(eps),          static_cast<float>(-step_size),  static_cast<float>(gradient_scale)};
  at::parallel_for(0, parameter.numel(), 16384, [&](int64_t begin, int64_t end) {
#if VT_TWO_ISAS
    if (cpu_has_avx512()) return adamw_update_avx512(step, p, g, m, v, begin, end);
#endif
    adamw_update_portable(step, p, g, m, v, begin, end);
  });
  // Written through raw pointers: tell whoever caches derived data (folded convolutions) as an
  // in-place torch operation would.
  for (auto* changed : {&parameter, &exp_avg, &exp_avg_sq}) changed->unsafeGetTensorImpl()->bump_version();
}

}  // namespace

Optimizer::Optimizer(NamedParameters parameters, std::set<std::string> no_decay, OptimizerConfig config)
    : parameters_(std::move(parameters)), no_decay_(std::move(no_decay)), config_(std::move(config)) {
  VT_CHECK(config_.name == "adamw" || config_.name == "sgd", "optimizer must be adamw or sgd, got \"", config_.name, "\"");
}

void Optimizer::zero_grad() {
  // set_to_none, as the fixtures' opt.zero_grad(set_to_none=True)
  for (auto& [name, parameter] : parameters_) parameter.mutable_grad() = torch::Tensor();
}

void Optimizer::step(double lr, double gradient_scale) {
  RECORD_FUNCTION("visiontorch::adamw", std::vector<c10::IValue>());
  torch::NoGradGuard no_grad;
  ++steps_;
  const double step = static_cast<double>(steps_);
  for (auto& [name, parameter] : parameters_) {
    const torch::Tensor& raw_grad = parameter.grad();
    if (!raw_grad.defined()) continue;
    const double decay = no_decay_.count(name) ? 0.0 : config_.weight_decay;
    if (config_.name == "adamw") {
      auto& exp_avg = state_["exp_avg." + name];
      auto& exp_avg_sq = state_["exp_avg_sq." + name];
      if (!exp_avg.defined()) {
        exp_avg = torch::zeros_like(parameter, torch::MemoryFormat::Preserve);
        exp_avg_sq = torch::zeros_like(parameter, torch::MemoryFormat::Preserve);
      }
      // torch.optim.AdamW (_single_tensor_adamw): decoupled decay, then the Adam update.
      const double bias_correction1 = 1.0 - std::pow(config_.beta1, step);
      const double bias_correction2 = 1.0 - std::pow(config_.beta2, step);
      if (flat_float32_alike(parameter, {&raw_grad, &exp_avg, &exp_avg_sq})) {
        fused_adamw_update(parameter, raw_grad, exp_avg, exp_avg_sq, 1.0 - lr * decay, config_.beta1, config_.beta2,
                           std::sqrt(bias_correction2), config_.eps, lr / bias_correction1, gradient_scale);
        continue;
      }
      const torch::Tensor grad = gradient_scale == 1.0 ? raw_grad : raw_grad.mul(gradient_scale);
      if (decay != 0.0) parameter.mul_(1.0 - lr * decay);
      exp_avg.mul_(config_.beta1).add_(grad, 1.0 - config_.beta1);
      exp_avg_sq.mul_(config_.beta2).addcmul_(grad, grad, 1.0 - config_.beta2);
      auto denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(config_.eps);
      parameter.addcdiv_(exp_avg, denom, -lr / bias_correction1);
    } else {
      // torch.optim.SGD: L2 decay added to the gradient, heavy-ball momentum without dampening.
      const torch::Tensor grad = gradient_scale == 1.0 ? raw_grad : raw_grad.mul(gradient_scale);
      torch::Tensor direction = decay != 0.0 ? grad.add(parameter, decay) : grad;
      if (config_.momentum != 0.0) {
        auto& buffer = state_["momentum_buffer." + name];
        if (!buffer.defined()) {
          buffer = direction.clone().detach();
        } else {
          buffer.mul_(config_.momentum).add_(direction);
        }
        direction = buffer;
      }
      parameter.add_(direction, -lr);
    }
  }
}

TensorMap Optimizer::state() const {
  TensorMap state;
  for (const auto& [key, value] : state_) state[key] = value;
  return state;
}

void Optimizer::load_state(const TensorMap& state, int64_t steps) {
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& [name, parameter] : parameters_) by_name[name] = parameter;
  TensorMap restored;
  for (const auto& [key, value] : state) {
    auto dot = key.find('.');
    VT_CHECK(dot != std::string::npos, "optimizer state: unexpected entry \"", key, "\"");
    const std::string kind = key.substr(0, dot), name = key.substr(dot + 1);
    VT_CHECK(kind == "exp_avg" || kind == "exp_avg_sq" || kind == "momentum_buffer", "optimizer state: unexpected entry \"", key, "\"");
    VT_CHECK((kind == "momentum_buffer") == (config_.name == "sgd"), "optimizer state: \"", key, "\" belongs to another optimizer than ",
             config_.name);
    auto parameter = by_name.find(name);
    VT_CHECK(parameter != by_name.end(), "optimizer state: \"", key, "\" names no trainable parameter of this model");
    VT_CHECK(value.sizes() == parameter->second.sizes(), "optimizer state: \"", key, "\" has shape ", value.sizes(),
             " but the parameter has ", parameter->second.sizes());
    restored[key] = value.to(parameter->second.device(), parameter->second.scalar_type()).clone();
  }
  state_ = std::move(restored);
  steps_ = steps;
}

std::set<std::string> no_decay_parameter_names(torch::nn::Module& module) {
  std::set<std::string> names;
  for (const auto& item : module.named_modules()) {
    const bool norm = dynamic_cast<layers::LayerNormImpl*>(item.value().get()) != nullptr ||
                      dynamic_cast<torch::nn::LayerNormImpl*>(item.value().get()) != nullptr ||
                      dynamic_cast<torch::nn::GroupNormImpl*>(item.value().get()) != nullptr;
    for (const auto& parameter : item.value()->named_parameters(/*recurse=*/false)) {
      const std::string name = item.key().empty() ? parameter.key() : item.key() + "." + parameter.key();
      if (norm || name.find("bias") != std::string::npos) names.insert(name);
    }
  }
  return names;
}

namespace {

// Sum of squares of values[begin, end): float lanes over runs of 4096, the runs added in double
// (closer to the exact sum than torch's float32 norm, and twice as fast here).
VT_INLINE_BODY double sum_of_squares_body(const float* values, int64_t begin, int64_t end) {
  double total = 0.0;
  for (int64_t start = begin; start < end; start += 4096) {
    const int64_t stop = std::min(end, start + 4096);
    float run = 0.0f;
#pragma omp simd reduction(+ : run)
    for (int64_t i = start; i < stop; ++i) run += values[i] * values[i];
    total += run;
  }
  return total;
}

double sum_of_squares_portable(const float* values, int64_t begin, int64_t end) { return sum_of_squares_body(values, begin, end); }

#if VT_TWO_ISAS
__attribute__((target("avx512f"))) double sum_of_squares_avx512(const float* values, int64_t begin, int64_t end) {
  return sum_of_squares_body(values, begin, end);
}
#endif

double sum_of_squares(const torch::Tensor& values) {
  const float* data = values.data_ptr<float>();
  return at::parallel_reduce(
      int64_t{0}, values.numel(), int64_t{65536}, 0.0,
      [&](int64_t begin, int64_t end, double partial) {
#if VT_TWO_ISAS
        if (cpu_has_avx512()) return partial + sum_of_squares_avx512(data, begin, end);
#endif
        return partial + sum_of_squares_portable(data, begin, end);
      },
      std::plus<double>());
}

}  // namespace

double gradient_norm(const NamedParameters& parameters) {
  RECORD_FUNCTION("visiontorch::gradient_norm", std::vector<c10::IValue>());
  torch::NoGradGuard no_grad;
  double total = 0.0;
  for (const auto& [name, parameter] : parameters) {
    const auto& grad = parameter.grad();
    if (!grad.defined()) continue;
    if (grad.device().is_cpu() && grad.scalar_type() == torch::kFloat32 && grad.is_contiguous()) {
      total += sum_of_squares(grad);
    } else {
      total += grad.detach().to(torch::kFloat64).pow(2).sum().item<double>();
    }
  }
  return std::sqrt(total);
}

double clipping_scale(double max_norm, double total_norm) {
  if (max_norm <= 0) return 1.0;
  const double coefficient = max_norm / (total_norm + 1e-6);
  return coefficient < 1.0 ? coefficient : 1.0;
}

}  // namespace vt
