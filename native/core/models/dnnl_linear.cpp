#include "models/dnnl_linear.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace vt::kernels {

#ifdef VISIONTORCH_WITH_DNNL

namespace {

using dnnl::memory;

// Distinct (rows, in, out, dtypes, bias, activation) products seen; past this many the cache
// starts over (a model has a handful of shapes per batch size).
constexpr size_t kMaxPlans = 512;

memory::data_type dnnl_type(torch::ScalarType type) {
  return type == torch::kBFloat16 ? memory::data_type::bf16 : memory::data_type::f32;
}

struct PlanKey {
  int64_t rows, in_features, out_features;
  torch::ScalarType dtype, bias_dtype;  // bias_dtype Undefined: no bias
  FusedActivation activation;
  bool operator<(const PlanKey& other) const {
    return std::tie(rows, in_features, out_features, dtype, bias_dtype, activation) <
           std::tie(other.rows, other.in_features, other.out_features, other.dtype, other.bias_dtype, other.activation);
  }
};

// A matmul primitive per shape, or none where oneDNN only has its slow reference kernel.
class Plans {
 public:
  static Plans& instance() {
    static Plans plans;
    return plans;
  }

  const dnnl::matmul* find(const PlanKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto found = plans_.find(key); found != plans_.end()) return found->second ? &*found->second : nullptr;
    if (plans_.size() >= kMaxPlans) plans_.clear();
    auto& slot = plans_[key];
    // The weights stay [out, in] row-major, which is "ba" for the [in, out] operand.
    const memory::desc source({key.rows, key.in_features}, dnnl_type(key.dtype), memory::format_tag::ab);
    const memory::desc weights({key.in_features, key.out_features}, dnnl_type(key.dtype), memory::format_tag::ba);
    const memory::desc destination({key.rows, key.out_features}, dnnl_type(key.dtype), memory::format_tag::ab);
    dnnl::primitive_attr attributes;
    if (key.activation != FusedActivation::None) {
      dnnl::post_ops post_ops;
      post_ops.append_eltwise(1.0f, key.activation == FusedActivation::Gelu ? dnnl::algorithm::eltwise_gelu_erf : dnnl::algorithm::eltwise_relu,
                              0.0f, 0.0f);
      attributes.set_post_ops(post_ops);
    }
    try {
      auto description =
          key.bias_dtype == torch::ScalarType::Undefined
              ? dnnl::matmul::primitive_desc(dnnl::matmul::desc(source, weights, destination), attributes, engine_)
              : dnnl::matmul::primitive_desc(
                    dnnl::matmul::desc(source, weights,
                                       memory::desc({1, key.out_features}, dnnl_type(key.bias_dtype), memory::format_tag::ab),
                                       destination),
                    attributes, engine_);
      if (std::string(description.impl_info_str()).rfind("ref", 0) != 0) slot = dnnl::matmul(description);
    } catch (const dnnl::error&) {
      // No implementation for this combination: torch's own path computes it.
    }
    return slot ? &*slot : nullptr;
  }

  const dnnl::engine& engine() const { return engine_; }

 private:
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mutex_;
  std::map<PlanKey, std::optional<dnnl::matmul>> plans_;
};

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad() && torch::GradMode::is_enabled(); }

PlanKey plan_key(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias, FusedActivation activation) {
  const int64_t in_features = weight.size(1);
  return {input.numel() / std::max<int64_t>(1, in_features), in_features, weight.size(0), input.scalar_type(),
          bias.defined() ? bias.scalar_type() : torch::ScalarType::Undefined, activation};
}

}  // namespace

bool dnnl_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                         FusedActivation activation) {
  const auto dtype = input.scalar_type();
  if (!input.device().is_cpu() || !weight.device().is_cpu() || (dtype != torch::kFloat32 && dtype != torch::kBFloat16)) return false;
  if (weight.scalar_type() != dtype || weight.dim() != 2 || !weight.is_contiguous() || input.dim() < 1 ||
      input.size(-1) != weight.size(1) || input.numel() == 0) {
    return false;
  }
  if (bias.defined() && (!bias.device().is_cpu() || bias.dim() != 1 || !bias.is_contiguous() || bias.size(0) != weight.size(0))) return false;
  if (needs_grad(input) || needs_grad(weight) || needs_grad(bias) || at::autocast::is_cpu_enabled() || at::in_parallel_region()) return false;
  return Plans::instance().find(plan_key(input, weight, bias, activation)) != nullptr;
}

torch::Tensor dnnl_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                          FusedActivation activation) {
  const auto key = plan_key(input, weight, bias, activation);
  const auto* matmul = Plans::instance().find(key);
  VT_CHECK(matmul != nullptr, "no oneDNN kernel for a ", input.scalar_type(), " linear layer of ", key.in_features, " -> ",
           key.out_features, " features");
  const auto rows = input.reshape({key.rows, key.in_features}).contiguous();
  auto sizes = input.sizes().vec();
  sizes.back() = key.out_features;
  auto output = torch::empty({key.rows, key.out_features}, input.options());
  const auto& engine = Plans::instance().engine();
  const auto type = dnnl_type(key.dtype);
  std::unordered_map<int, memory> arguments{
      {DNNL_ARG_SRC, memory({{key.rows, key.in_features}, type, memory::format_tag::ab}, engine, rows.data_ptr())},
      {DNNL_ARG_WEIGHTS, memory({{key.in_features, key.out_features}, type, memory::format_tag::ba}, engine, weight.data_ptr())},
      {DNNL_ARG_DST, memory({{key.rows, key.out_features}, type, memory::format_tag::ab}, engine, output.data_ptr())}};
  if (bias.defined()) {
    arguments.emplace(DNNL_ARG_BIAS, memory({{1, key.out_features}, dnnl_type(key.bias_dtype), memory::format_tag::ab}, engine, bias.data_ptr()));
  }
  dnnl::stream stream(engine);
  matmul->execute(stream, arguments);
  stream.wait();
  return output.view(sizes);
}

#else  // without oneDNN

bool dnnl_linear_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, FusedActivation) { return false; }

torch::Tensor dnnl_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, FusedActivation) {
  fail("oneDNN linear layers are not available in this build");
}

#endif

}  // namespace vt::kernels
