#include "kernels/dnnl_linear.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <ATen/record_function.h>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include "kernels/dnnl_support.h"
#include "kernels/packed_bf16_weights.h"
#endif

namespace vt::kernels {

#ifdef VISIONTORCH_WITH_DNNL

namespace {

using dnnl::memory;

// Distinct products (shapes, strides, dtypes, bias, activation) seen; past this many the cache
// starts over (a model has a handful of shapes per batch size).
constexpr size_t kMaxPlans = 512;

// out [m, n] = a [m, k] @ b [k, n] (+ bias [n]), then the activation; a and b of any strides.
struct MatmulKey {
  int64_t m, k, n;
  int64_t a_row_stride, a_column_stride, b_row_stride, b_column_stride;
  torch::ScalarType input_dtype, output_dtype, bias_dtype;  // bias_dtype Undefined: no bias
  FusedActivation activation;
  // Undefined: none; else a contiguous [m, n] tensor of this dtype added to the result.
  torch::ScalarType residual_dtype = torch::ScalarType::Undefined;
  // b comes packed in the layout the kernel chose (MatmulPlan::packed_b); its strides are unused.
  bool packed_b = false;
  auto tied() const {
    return std::tie(m, k, n, a_row_stride, a_column_stride, b_row_stride, b_column_stride, input_dtype, output_dtype, bias_dtype,
                    activation, residual_dtype, packed_b);
  }
  bool operator<(const MatmulKey& other) const { return tied() < other.tied(); }
};

struct MatmulPlan {
  dnnl::matmul primitive;
  memory::desc packed_b;  // the layout b is packed into, for keys with packed_b
};

// A matmul primitive per product, or none where oneDNN only has its slow reference kernel.
// Plans are shared: one in use survives the cache starting over.
class Plans {
 public:
  static Plans& instance() {
    static Plans plans;
    return plans;
  }

  std::shared_ptr<const MatmulPlan> find(const MatmulKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto found = plans_.find(key); found != plans_.end()) return found->second;
    if (plans_.size() >= kMaxPlans) plans_.clear();
    auto& slot = plans_[key];
    const memory::desc a({key.m, key.k}, dnnl_type(key.input_dtype), {key.a_row_stride, key.a_column_stride});
    const memory::desc b = key.packed_b ? memory::desc({key.k, key.n}, dnnl_type(key.input_dtype), memory::format_tag::any)
                                        : memory::desc({key.k, key.n}, dnnl_type(key.input_dtype), {key.b_row_stride, key.b_column_stride});
    const memory::desc out({key.m, key.n}, dnnl_type(key.output_dtype), memory::format_tag::ab);
    dnnl::primitive_attr attributes;
    dnnl::post_ops post_ops;
    if (key.activation != FusedActivation::None) {
      post_ops.append_eltwise(
          1.0f, key.activation == FusedActivation::Gelu ? dnnl::algorithm::eltwise_gelu_erf : dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    }
    if (key.residual_dtype != torch::ScalarType::Undefined) {
      post_ops.append_binary(dnnl::algorithm::binary_add,
                             memory::desc({key.m, key.n}, dnnl_type(key.residual_dtype), memory::format_tag::ab));
    }
    attributes.set_post_ops(post_ops);
    try {
      auto description =
          key.bias_dtype == torch::ScalarType::Undefined
              ? dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, out), attributes, engine_)
              : dnnl::matmul::primitive_desc(
                    dnnl::matmul::desc(a, b, memory::desc({1, key.n}, dnnl_type(key.bias_dtype), memory::format_tag::ab), out), attributes,
                    engine_);
      if (!is_reference_kernel(description)) {
        slot = std::make_shared<const MatmulPlan>(MatmulPlan{dnnl::matmul(description), description.weights_desc()});
      }
    } catch (const dnnl::error&) {
      // No implementation for this combination: torch's own path computes it.
    }
    return slot;
  }

  const dnnl::engine& engine() const { return engine_; }

 private:
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mutex_;
  std::map<MatmulKey, std::shared_ptr<const MatmulPlan>> plans_;  // null: no fast kernel
};

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad() && torch::GradMode::is_enabled(); }

bool float_or_bfloat16(torch::ScalarType type) { return type == torch::kFloat32 || type == torch::kBFloat16; }

MatmulKey matmul_key(const torch::Tensor& a, const torch::Tensor& b, torch::ScalarType output_dtype, const torch::Tensor& bias,
                     FusedActivation activation) {
  return {a.size(0),   a.size(1),   b.size(1),       a.stride(0),  a.stride(1),
          b.stride(0), b.stride(1), a.scalar_type(), output_dtype, bias.defined() ? bias.scalar_type() : torch::ScalarType::Undefined,
          activation};
}

bool matmul_operands_fit(const torch::Tensor& a, const torch::Tensor& b, torch::ScalarType output_dtype, const torch::Tensor& bias) {
  if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0) || a.numel() == 0 || b.numel() == 0) return false;
  if (!a.device().is_cpu() || !b.device().is_cpu() || a.scalar_type() != b.scalar_type() || !float_or_bfloat16(a.scalar_type()))
    return false;
  if (!float_or_bfloat16(output_dtype) || (output_dtype != a.scalar_type() && output_dtype != torch::kFloat32)) return false;
  return !bias.defined() || (bias.device().is_cpu() && bias.dim() == 1 && bias.is_contiguous() && bias.size(0) == b.size(1) &&
                             float_or_bfloat16(bias.scalar_type()));
}

// Whether `residual` can be added by the product's kernel (key.residual_dtype set to it).
bool residual_fits(const torch::Tensor& residual, MatmulKey& key) {
  if (!residual.defined()) return true;
  if (!residual.device().is_cpu() || !float_or_bfloat16(residual.scalar_type()) || !residual.is_contiguous() || residual.dim() != 2 ||
      residual.size(0) != key.m || residual.size(1) != key.n) {
    return false;
  }
  key.residual_dtype = residual.scalar_type();
  return true;
}

torch::Tensor execute_matmul(const MatmulPlan& plan, const MatmulKey& key, const torch::Tensor& a, const memory& b,
                             const torch::Tensor& bias, const torch::Tensor& residual);

// Runs the product (plus `residual` [m, n], when defined) where a plan exists; undefined otherwise.
torch::Tensor run_matmul(const torch::Tensor& a, const torch::Tensor& b, torch::ScalarType output_dtype, const torch::Tensor& bias,
                         FusedActivation activation, const torch::Tensor& residual = {}) {
  if (!matmul_operands_fit(a, b, output_dtype, bias)) return {};
  auto key = matmul_key(a, b, output_dtype, bias, activation);
  if (!residual_fits(residual, key)) return {};
  const auto plan = Plans::instance().find(key);
  if (plan == nullptr) return {};
  const memory b_memory({{key.k, key.n}, dnnl_type(key.input_dtype), {key.b_row_stride, key.b_column_stride}}, Plans::instance().engine(),
                        b.data_ptr());
  return execute_matmul(*plan, key, a, b_memory, bias, residual);
}

torch::Tensor execute_matmul(const MatmulPlan& plan, const MatmulKey& key, const torch::Tensor& a, const memory& b,
                             const torch::Tensor& bias, const torch::Tensor& residual) {
  const auto output_dtype = key.output_dtype;
  auto output = torch::empty({key.m, key.n}, a.options().dtype(output_dtype));
  const auto& engine = Plans::instance().engine();
  const auto input_type = dnnl_type(key.input_dtype);
  std::unordered_map<int, memory> arguments{
      {DNNL_ARG_SRC, memory({{key.m, key.k}, input_type, {key.a_row_stride, key.a_column_stride}}, engine, a.data_ptr())},
      {DNNL_ARG_WEIGHTS, b},
      {DNNL_ARG_DST, memory({{key.m, key.n}, dnnl_type(output_dtype), memory::format_tag::ab}, engine, output.data_ptr())}};
  if (bias.defined()) {
    arguments.emplace(DNNL_ARG_BIAS, memory({{1, key.n}, dnnl_type(key.bias_dtype), memory::format_tag::ab}, engine, bias.data_ptr()));
  }
  if (residual.defined()) {
    const int post_op_index = key.activation == FusedActivation::None ? 0 : 1;
    arguments.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(post_op_index) | DNNL_ARG_SRC_1,
                      memory({{key.m, key.n}, dnnl_type(key.residual_dtype), memory::format_tag::ab}, engine, residual.data_ptr()));
  }
  run_primitive(plan.primitive, engine, arguments);
  return output;
}

// Float32 sums of the columns of a contiguous bfloat16 [m, n] matrix (a bias's gradient): one
// pass over the bfloat16 data, where torch's sum(dtype=float32) first converts all of it.
torch::Tensor bfloat16_column_sums(const torch::Tensor& rows) {
  const int64_t m = rows.size(0), n = rows.size(1);
  auto sums = torch::zeros({n}, rows.options().dtype(torch::kFloat32));
  const auto* data = rows.data_ptr<c10::BFloat16>();
  float* out = sums.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < m; ++i) {
      const c10::BFloat16* row = data + i * n;
#pragma omp simd
      for (int64_t j = begin; j < end; ++j) out[j] += static_cast<float>(row[j]);
    }
  });
  return sums;
}

torch::Tensor rows_of(const torch::Tensor& x) { return x.reshape({-1, x.size(-1)}); }

// The product of a linear layer as the functions below run it: the input's rows made contiguous,
// the weights [out, in] read in place as the [in, out] operand.
MatmulKey linear_key(const torch::Tensor& input, const torch::Tensor& weight, torch::ScalarType input_dtype, torch::ScalarType bias_dtype,
                     FusedActivation activation) {
  const int64_t in_features = weight.size(1);
  return {input.numel() / in_features,
          in_features,
          weight.size(0),
          in_features,
          1,
          1,
          in_features,
          input_dtype,
          input_dtype,
          bias_dtype,
          activation};
}

std::vector<int64_t> with_last(const torch::Tensor& x, int64_t last) {
  auto sizes = x.sizes().vec();
  sizes.back() = last;
  return sizes;
}

// The products of a training linear layer that read its weights packed (pack_bf16_weights):
// the forward one, operand W^T, and the input gradient's, operand W. Keys and layouts are
// checked against the plans oneDNN makes; where either differs, the weights are read plain.
MatmulKey forward_with_packed_weights_key(int64_t rows, int64_t out_features, int64_t in_features, torch::ScalarType output_dtype,
                                          torch::ScalarType bias_dtype) {
  MatmulKey key{rows, in_features, out_features, in_features, 1, 0, 0, torch::kBFloat16, output_dtype, bias_dtype, FusedActivation::None};
  key.packed_b = true;
  return key;
}

MatmulKey input_gradient_with_packed_weights_key(int64_t rows, int64_t out_features, int64_t in_features, torch::ScalarType input_dtype) {
  MatmulKey key{rows,
                out_features,
                in_features,
                out_features,
                1,
                0,
                0,
                torch::kBFloat16,
                input_dtype,
                torch::ScalarType::Undefined,
                FusedActivation::None};
  key.packed_b = true;
  return key;
}

// Whether the plan reads its [k, n] operand in the layout pack_bf16_weights writes.
bool reads_packed_bf16_weights(const std::shared_ptr<const MatmulPlan>& plan, int64_t k, int64_t n) {
  if (plan == nullptr) return false;
  const auto& desc = plan->packed_b.data;
  if (desc.data_type != dnnl_bf16 || desc.ndims != 2 || desc.format_kind != dnnl_blocked || desc.offset0 != 0 || desc.extra.flags != 0 ||
      desc.padded_dims[0] != k || desc.padded_dims[1] != n) {
    return false;
  }
  const auto& blocking = desc.format_desc.blocking;
  return blocking.inner_nblks == 3 && blocking.inner_blks[0] == 16 && blocking.inner_idxs[0] == 0 && blocking.inner_blks[1] == 64 &&
         blocking.inner_idxs[1] == 1 && blocking.inner_blks[2] == 2 && blocking.inner_idxs[2] == 0 && blocking.strides[0] == 2048 &&
         blocking.strides[1] == k * 64 && plan->packed_b.get_size() == static_cast<size_t>(k * n * 2);
}

// Autograd of a linear layer inside a bfloat16 autocast region: the products in bfloat16 through
// oneDNN both ways, gradients of float32 parameters computed straight into float32. With a
// `residual` (an empty tensor stands for none: autograd takes no undefined input), returns
// residual + linear(input) in the residual's dtype, the sum made by the product's kernel as it
// writes (autocast's `linear(x) + residual`, less one rounding to bfloat16).
class AutocastLinear : public torch::autograd::Function<AutocastLinear> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& residual) {
    RECORD_FUNCTION("visiontorch::autocast_linear", std::vector<c10::IValue>());
    const auto input16 = rows_of(input).to(torch::kBFloat16).contiguous();
    context->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    context->saved_data["input_sizes"] = input.sizes().vec();
    context->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    context->saved_data["bias_dtype"] = static_cast<int64_t>(bias.scalar_type());
    const bool adds = residual.numel() > 0;
    const auto output_dtype = adds ? residual.scalar_type() : torch::kBFloat16;
    const auto residual_rows = adds ? rows_of(residual) : torch::Tensor();
    torch::Tensor output;
    if (auto packed = pack_weights(input16, weight, bias, output_dtype, residual_rows, input.scalar_type(), input.requires_grad())) {
      output = execute_matmul(*packed->forward_plan, packed->forward_key, input16,
                              memory(packed->forward_plan->packed_b, Plans::instance().engine(), packed->forward_operand.data_ptr()), bias,
                              residual_rows);
      context->save_for_backward({input16, packed->gradient_operand});
      context->saved_data["packed_weights"] = true;
    } else {
      const auto weight16 = weight.to(torch::kBFloat16);
      context->save_for_backward({input16, weight16});
      context->saved_data["packed_weights"] = false;
      output = run_matmul(input16, weight16.t(), output_dtype, bias.contiguous(), FusedActivation::None, residual_rows);
      if (!output.defined() && adds) {
        // No kernel with the sum fused for these dtypes: the product alone, then the sum.
        output = run_matmul(input16, weight16.t(), torch::kBFloat16, bias.contiguous(), FusedActivation::None);
        if (output.defined()) output = residual_rows + output;
      }
    }
    VT_CHECK(output.defined(), "no oneDNN kernel for a bfloat16 linear layer of ", weight.size(1), " -> ", weight.size(0), " features");
    return output.view(with_last(input, weight.size(0)));
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const auto& input16 = saved[0];
    const auto& weight_operand = saved[1];  // packed for the input gradient's product, or plain bfloat16 [out, in]
    const auto grad16 = rows_of(grad_outputs[0]).to(torch::kBFloat16).contiguous();
    const auto input_dtype = static_cast<torch::ScalarType>(context->saved_data["input_dtype"].toInt());
    const auto weight_dtype = static_cast<torch::ScalarType>(context->saved_data["weight_dtype"].toInt());
    torch::Tensor grad_input, grad_weight, grad_bias, grad_residual;
    if (context->needs_input_grad(0)) {
      RECORD_FUNCTION("visiontorch::linear_input_gradient", std::vector<c10::IValue>());
      if (context->saved_data["packed_weights"].toBool()) {
        const auto input_sizes = context->saved_data["input_sizes"].toIntVector();
        const int64_t out_features = grad16.size(1), in_features = input_sizes.back();
        const auto key = input_gradient_with_packed_weights_key(grad16.size(0), out_features, in_features, input_dtype);
        const auto plan = Plans::instance().find(key);
        VT_CHECK(plan != nullptr, "the input gradient's product of a bfloat16 linear layer lost its kernel");
        grad_input =
            execute_matmul(*plan, key, grad16, memory(plan->packed_b, Plans::instance().engine(), weight_operand.data_ptr()), {}, {});
      } else {
        grad_input = run_matmul(grad16, weight_operand, input_dtype, {}, FusedActivation::None);
        if (!grad_input.defined()) grad_input = grad16.mm(weight_operand).to(input_dtype);
      }
      grad_input = grad_input.view(context->saved_data["input_sizes"].toIntVector());
    }
    if (context->needs_input_grad(1)) {
      RECORD_FUNCTION("visiontorch::linear_weight_gradient", std::vector<c10::IValue>());
      grad_weight = run_matmul(grad16.t(), input16, weight_dtype, {}, FusedActivation::None);
      if (!grad_weight.defined()) grad_weight = grad16.t().mm(input16).to(weight_dtype);
    }
    if (context->needs_input_grad(2)) {
      RECORD_FUNCTION("visiontorch::linear_bias_gradient", std::vector<c10::IValue>());
      grad_bias = bfloat16_column_sums(grad16).to(static_cast<torch::ScalarType>(context->saved_data["bias_dtype"].toInt()));
    }
    if (context->needs_input_grad(3)) grad_residual = grad_outputs[0];
    return {grad_input, grad_weight, grad_bias, grad_residual};
  }

 private:
  struct PackedWeights {
    MatmulKey forward_key;
    std::shared_ptr<const MatmulPlan> forward_plan;
    torch::Tensor forward_operand, gradient_operand;  // bytes; gradient_operand empty where no input gradient is wanted
  };

  // float32 weights packed in one pass for the forward product and, when the input wants a
  // gradient, the input gradient's; nothing where either product reads another layout.
  static std::optional<PackedWeights> pack_weights(const torch::Tensor& input16, const torch::Tensor& weight, const torch::Tensor& bias,
                                                   torch::ScalarType output_dtype, const torch::Tensor& residual_rows,
                                                   torch::ScalarType input_dtype, bool input_wants_gradient) {
    const int64_t out_features = weight.size(0), in_features = weight.size(1), rows = input16.size(0);
    if (weight.scalar_type() != torch::kFloat32 || !weight.is_contiguous() || !bias.is_contiguous() ||
        !bf16_weight_packing_applies(out_features, in_features) || !float_or_bfloat16(input_dtype)) {
      return std::nullopt;
    }
    PackedWeights packed{};
    packed.forward_key = forward_with_packed_weights_key(rows, out_features, in_features, output_dtype, bias.scalar_type());
    if (!residual_fits(residual_rows, packed.forward_key)) return std::nullopt;
    packed.forward_plan = Plans::instance().find(packed.forward_key);
    if (!reads_packed_bf16_weights(packed.forward_plan, in_features, out_features)) return std::nullopt;
    if (input_wants_gradient) {
      const auto gradient_key = input_gradient_with_packed_weights_key(rows, out_features, in_features, input_dtype);
      if (!reads_packed_bf16_weights(Plans::instance().find(gradient_key), out_features, in_features)) return std::nullopt;
    }
    RECORD_FUNCTION("visiontorch::pack_bf16_weights", std::vector<c10::IValue>());
    const auto bytes = torch::dtype(torch::kUInt8);
    packed.forward_operand = torch::empty({out_features * in_features * 2}, bytes);
    packed.gradient_operand = input_wants_gradient ? torch::empty({out_features * in_features * 2}, bytes) : torch::empty({0}, bytes);
    pack_bf16_weights(weight.data_ptr<float>(), out_features, in_features, static_cast<uint16_t*>(packed.forward_operand.data_ptr()),
                      input_wants_gradient ? static_cast<uint16_t*>(packed.gradient_operand.data_ptr()) : nullptr);
    return packed;
  }
};

// Autograd of a float32 training linear layer, each product one oneDNN matmul reading its
// operands where they are: the weights [out, in] as the forward's [in, out] operand and as the
// input gradient's [out, in] one, the gradient transposed for the weight gradient's. Here they
// ran 1.4-1.6x faster than an OpenBLAS call per thread's block of rows (kernels::linear).
class Float32Linear : public torch::autograd::Function<Float32Linear> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias) {
    RECORD_FUNCTION("visiontorch::float32_linear", std::vector<c10::IValue>());
    const auto rows = rows_of(input).contiguous();
    context->save_for_backward({rows, weight});
    context->saved_data["input_sizes"] = input.sizes().vec();
    auto output = run_matmul(rows, weight.t(), torch::kFloat32, bias, FusedActivation::None);
    if (!output.defined()) output = torch::addmm(bias, rows, weight.t());
    return output.view(with_last(input, weight.size(0)));
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const auto &rows = saved[0], &weight = saved[1];
    const auto grad_rows = rows_of(grad_outputs[0]).contiguous();
    torch::Tensor grad_input, grad_weight, grad_bias;
    if (context->needs_input_grad(0)) {
      RECORD_FUNCTION("visiontorch::linear_input_gradient", std::vector<c10::IValue>());
      grad_input = run_matmul(grad_rows, weight, torch::kFloat32, {}, FusedActivation::None);
      if (!grad_input.defined()) grad_input = grad_rows.mm(weight);
      grad_input = grad_input.view(context->saved_data["input_sizes"].toIntVector());
    }
    if (context->needs_input_grad(1)) {
      RECORD_FUNCTION("visiontorch::linear_weight_gradient", std::vector<c10::IValue>());
      grad_weight = run_matmul(grad_rows.t(), rows, torch::kFloat32, {}, FusedActivation::None);
      if (!grad_weight.defined()) grad_weight = grad_rows.t().mm(rows);
    }
    if (context->needs_input_grad(2)) {
      RECORD_FUNCTION("visiontorch::linear_bias_gradient", std::vector<c10::IValue>());
      grad_bias = grad_rows.sum(0);
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

// The exact (erf) GELU of a contiguous bfloat16 tensor through oneDNN's eltwise kernels, both
// ways: libtorch 1.13's bfloat16 gelu_backward adds conversions around the same kernel.
class AutocastGelu : public torch::autograd::Function<AutocastGelu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& input) {
    RECORD_FUNCTION("visiontorch::autocast_gelu", std::vector<c10::IValue>());
    auto output = torch::empty_like(input);
    const auto& plan = plan_for(input.numel());
    run(plan.forward, {{DNNL_ARG_SRC, memory(plan.data, Plans::instance().engine(), input.data_ptr())},
                       {DNNL_ARG_DST, memory(plan.data, Plans::instance().engine(), output.data_ptr())}});
    context->save_for_backward({input});
    return output;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto input = context->get_saved_variables()[0];
    const auto grad_output = grad_outputs[0].to(torch::kBFloat16).contiguous();
    auto grad_input = torch::empty_like(input);
    const auto& plan = plan_for(input.numel());
    const auto& engine = Plans::instance().engine();
    run(plan.backward, {{DNNL_ARG_SRC, memory(plan.data, engine, input.data_ptr())},
                        {DNNL_ARG_DIFF_DST, memory(plan.data, engine, grad_output.data_ptr())},
                        {DNNL_ARG_DIFF_SRC, memory(plan.data, engine, grad_input.data_ptr())}});
    return {grad_input};
  }

 private:
  struct Plan {
    memory::desc data;
    dnnl::eltwise_forward forward;
    dnnl::eltwise_backward backward;
  };

  static const Plan& plan_for(int64_t numel) {
    static std::mutex mutex;
    static std::map<int64_t, Plan> plans;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto found = plans.find(numel); found != plans.end()) return found->second;
    if (plans.size() >= kMaxPlans) plans.clear();
    const auto& engine = Plans::instance().engine();
    const memory::desc data({numel}, memory::data_type::bf16, memory::format_tag::a);
    dnnl::eltwise_forward::primitive_desc forward(
        dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_gelu_erf, data), engine);
    dnnl::eltwise_backward::primitive_desc backward(dnnl::eltwise_backward::desc(dnnl::algorithm::eltwise_gelu_erf, data, data), engine,
                                                    forward);
    return plans.emplace(numel, Plan{data, dnnl::eltwise_forward(forward), dnnl::eltwise_backward(backward)}).first->second;
  }

  static void run(const dnnl::primitive& primitive, const std::unordered_map<int, memory>& arguments) {
    run_primitive(primitive, Plans::instance().engine(), arguments);
  }
};

}  // namespace

struct PackedLinearWeights::State {
  struct Plan {
    std::optional<dnnl::matmul> matmul;  // none: no fast kernel with packed weights
    memory weights;
  };
  std::mutex mutex;
  std::pair<const void*, int64_t> source{nullptr, -1};  // the weights' storage and version
  std::map<MatmulKey, Plan> plans;
  std::vector<memory> packings;  // distinct packed layouts, shared between plans

  Plan& plan(const MatmulKey& key, const torch::Tensor& weight) {
    const std::pair<const void*, int64_t> current{weight.data_ptr(), weight._version()};
    if (current != source) {
      plans.clear();
      packings.clear();
      source = current;
    }
    if (auto found = plans.find(key); found != plans.end()) return found->second;
    if (plans.size() >= kMaxPlans) plans.clear();
    auto& plan = plans[key];
    const auto& engine = Plans::instance().engine();
    const auto type = dnnl_type(key.input_dtype);
    const memory::desc a({key.m, key.k}, type, memory::format_tag::ab);
    const memory::desc any_weights({key.k, key.n}, type, memory::format_tag::any);
    const memory::desc out({key.m, key.n}, dnnl_type(key.output_dtype), memory::format_tag::ab);
    dnnl::primitive_attr attributes;
    if (key.activation != FusedActivation::None) {
      dnnl::post_ops post_ops;
      post_ops.append_eltwise(
          1.0f, key.activation == FusedActivation::Gelu ? dnnl::algorithm::eltwise_gelu_erf : dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attributes.set_post_ops(post_ops);
    }
    std::optional<dnnl::matmul::primitive_desc> description;
    try {
      if (key.bias_dtype == torch::ScalarType::Undefined) {
        description.emplace(dnnl::matmul::desc(a, any_weights, out), attributes, engine);
      } else {
        const memory::desc bias({1, key.n}, dnnl_type(key.bias_dtype), memory::format_tag::ab);
        description.emplace(dnnl::matmul::desc(a, any_weights, bias, out), attributes, engine);
      }
    } catch (const dnnl::error&) {
      return plan;
    }
    if (is_reference_kernel(*description)) return plan;
    for (const auto& candidate : packings) {
      if (candidate.get_desc() == description->weights_desc()) plan.weights = candidate;
    }
    if (!plan.weights) {
      plan.weights = memory(description->weights_desc(), engine);
      memory plain({{key.k, key.n}, type, memory::format_tag::ba}, engine, weight.data_ptr());
      dnnl::stream stream(engine);
      dnnl::reorder(plain, plan.weights).execute(stream, plain, plan.weights);
      stream.wait();
      packings.push_back(plan.weights);
    }
    plan.matmul.emplace(*description);
    return plan;
  }
};

PackedLinearWeights::PackedLinearWeights() : state_(std::make_unique<State>()) {}
PackedLinearWeights::~PackedLinearWeights() = default;

bool dnnl_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias, FusedActivation activation) {
  if (input.dim() < 1 || weight.dim() != 2 || input.size(-1) != weight.size(1) || input.numel() == 0) return false;
  if (weight.scalar_type() != input.scalar_type() || (bias.defined() && bias.scalar_type() != input.scalar_type())) return false;
  if (needs_grad(input) || needs_grad(weight) || needs_grad(bias) || at::autocast::is_cpu_enabled() || at::in_parallel_region())
    return false;
  if (!weight.is_contiguous() || !matmul_operands_fit(rows_of(input), weight.t(), input.scalar_type(), bias)) return false;
  const auto bias_dtype = bias.defined() ? bias.scalar_type() : torch::ScalarType::Undefined;
  return Plans::instance().find(linear_key(input, weight, input.scalar_type(), bias_dtype, activation)) != nullptr;
}

torch::Tensor dnnl_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias, FusedActivation activation,
                          PackedLinearWeights* packed) {
  RECORD_FUNCTION("visiontorch::linear", std::vector<c10::IValue>());
  const auto rows = rows_of(input).contiguous();
  if (packed != nullptr) {
    auto& state = packed->state();
    std::lock_guard<std::mutex> lock(state.mutex);
    const auto key =
        linear_key(input, weight, input.scalar_type(), bias.defined() ? bias.scalar_type() : torch::ScalarType::Undefined, activation);
    auto& plan = state.plan(key, weight);
    if (plan.matmul) {
      auto output = torch::empty({key.m, key.n}, input.options());
      const auto& engine = Plans::instance().engine();
      std::unordered_map<int, memory> arguments{
          {DNNL_ARG_SRC, memory({{key.m, key.k}, dnnl_type(key.input_dtype), memory::format_tag::ab}, engine, rows.data_ptr())},
          {DNNL_ARG_WEIGHTS, plan.weights},
          {DNNL_ARG_DST, memory({{key.m, key.n}, dnnl_type(key.output_dtype), memory::format_tag::ab}, engine, output.data_ptr())}};
      if (bias.defined()) {
        arguments.emplace(DNNL_ARG_BIAS, memory({{1, key.n}, dnnl_type(key.bias_dtype), memory::format_tag::ab}, engine, bias.data_ptr()));
      }
      dnnl::stream stream(engine);
      plan.matmul->execute(stream, arguments);
      stream.wait();
      return output.view(with_last(input, weight.size(0)));
    }
  }
  auto output = run_matmul(rows, weight.t(), input.scalar_type(), bias, activation);
  VT_CHECK(output.defined(), "no oneDNN kernel for a ", input.scalar_type(), " linear layer of ", weight.size(1), " -> ", weight.size(0),
           " features");
  return output.view(with_last(input, weight.size(0)));
}

bool autocast_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!at::autocast::is_cpu_enabled() || at::autocast::get_autocast_cpu_dtype() != torch::kBFloat16 || at::in_parallel_region())
    return false;
  if (!input.device().is_cpu() || !weight.device().is_cpu() || !float_or_bfloat16(input.scalar_type()) ||
      !float_or_bfloat16(weight.scalar_type()) || weight.dim() != 2 || input.dim() < 1 || input.size(-1) != weight.size(1) ||
      input.numel() == 0 || (bias.defined() && (!bias.device().is_cpu() || !float_or_bfloat16(bias.scalar_type())))) {
    return false;
  }
  const auto bias_dtype = bias.defined() ? bias.scalar_type() : torch::kFloat32;  // zeros stand in for a missing bias
  return Plans::instance().find(linear_key(input, weight, torch::kBFloat16, bias_dtype, FusedActivation::None)) != nullptr;
}

torch::Tensor autocast_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& residual) {
  // The casts autocast would insert are done inside, once.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  // A layer without a bias gets zeros that need no gradient: the product adds them for free.
  const auto full_bias = bias.defined() ? bias : torch::zeros({weight.size(0)}, weight.options().dtype(torch::kFloat32));
  if (residual.defined() &&
      (residual.sizes() != with_last(input, weight.size(0)) || !residual.device().is_cpu() || !float_or_bfloat16(residual.scalar_type()))) {
    // Shapes that broadcast, or other dtypes: autocast's own sum.
    return AutocastLinear::apply(input, weight, full_bias, torch::empty({0})) + residual;
  }
  return AutocastLinear::apply(input, weight, full_bias, residual.defined() ? residual.contiguous() : torch::empty({0}));
}

bool float32_linear_applies(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  for (const auto* t : {&input, &weight, &bias}) {
    if (!t->defined() || !t->device().is_cpu() || t->scalar_type() != torch::kFloat32) return false;
  }
  if (input.dim() < 1 || input.size(-1) != weight.size(1) || input.numel() == 0 || weight.dim() != 2 || !weight.is_contiguous() ||
      bias.dim() != 1 || !bias.is_contiguous() || bias.size(0) != weight.size(0)) {
    return false;
  }
  if (at::autocast::is_cpu_enabled() || at::in_parallel_region()) return false;
  const int64_t rows = input.numel() / input.size(-1);
  MatmulKey key{rows,
                weight.size(1),
                weight.size(0),
                weight.size(1),
                1,
                1,
                weight.size(1),
                torch::kFloat32,
                torch::kFloat32,
                torch::kFloat32,
                FusedActivation::None};
  return Plans::instance().find(key) != nullptr;
}

torch::Tensor float32_linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias) {
  return Float32Linear::apply(input, weight, bias);
}

torch::Tensor autocast_gelu(const torch::Tensor& input) {
  if (input.scalar_type() != torch::kBFloat16 || !input.device().is_cpu() || !input.is_contiguous() || input.numel() == 0) {
    return torch::gelu(input);
  }
  return AutocastGelu::apply(input);
}

#else  // without oneDNN

bool dnnl_linear_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, FusedActivation) { return false; }

struct PackedLinearWeights::State {};
PackedLinearWeights::PackedLinearWeights() = default;
PackedLinearWeights::~PackedLinearWeights() = default;

torch::Tensor dnnl_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, FusedActivation, PackedLinearWeights*) {
  fail("oneDNN linear layers are not available in this build");
}

bool autocast_linear_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return false; }

bool float32_linear_applies(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return false; }

torch::Tensor float32_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  fail("oneDNN linear layers are not available in this build");
}

torch::Tensor autocast_gelu(const torch::Tensor& input) { return torch::gelu(input); }

torch::Tensor autocast_linear(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  fail("oneDNN linear layers are not available in this build");
}

#endif

}  // namespace vt::kernels
