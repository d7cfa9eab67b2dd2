#include "kernels/dnnl_conv.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <ATen/record_function.h>
#include <optional>
#include <unordered_map>
#include <vector>

#include <ATen/autocast_mode.h>

#include "kernels/dnnl_support.h"
#endif

namespace vt::kernels {

#ifdef VISIONTORCH_WITH_DNNL

namespace {

using dnnl::memory;

bool needs_grad(const torch::Tensor& t) { return t.defined() && t.requires_grad() && torch::GradMode::is_enabled(); }

// More input shapes than this (batch sizes x image sizes) start the plan cache over.
constexpr size_t kMaxPlans = 16;

}  // namespace

struct FusedConvolution::State {
  struct Plan {
    std::optional<dnnl::convolution_forward> convolution;  // none: no fast kernel, torch computes
    memory weights;                                        // folded and packed for this plan's kernel
    // Winograd kernels read and write oneDNN's blocked layout: the input is reordered into it
    // and the output back out of it around the convolution.
    std::optional<dnnl::reorder> to_blocked, from_blocked;
    memory::desc blocked_source, blocked_output;
  };
  // How the residual is added: none, read from its own memory (binary post-op), or accumulated
  // into the output, which starts as the residual (sum post-op, a faster kernel family).
  enum class ResidualSum { None, Read, InPlace };
  // (batch, height, width, residual sum, relu)
  using PlanKey = std::tuple<int64_t, int64_t, int64_t, ResidualSum, bool>;

  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;
  // What the folded weights were computed from: each tensor's storage and version.
  std::vector<std::pair<const void*, int64_t>> source;
  torch::ScalarType dtype = torch::kFloat32;
  torch::Tensor folded_weight;  // [out, in, kh, kw] in dtype, plain layout
  torch::Tensor folded_bias;    // float32 [out]
  std::map<PlanKey, Plan> plans;
  std::vector<memory> packings;

  static std::vector<std::pair<const void*, int64_t>> fingerprint(const ConvolutionBatchNorm& layer) {
    std::vector<std::pair<const void*, int64_t>> parts;
    for (const auto* t : {&layer.weight, &layer.norm_weight, &layer.norm_bias, &layer.running_mean, &layer.running_var}) {
      parts.emplace_back(t->data_ptr(), t->_version());
    }
    return parts;
  }

  // Folds the normalization into the weights once per change of weights or statistics.
  void refresh(const ConvolutionBatchNorm& layer) {
    auto parts = fingerprint(layer);
    if (parts == source && layer.weight.scalar_type() == dtype) return;
    torch::NoGradGuard no_grad;
    const auto scale = layer.norm_weight.to(torch::kFloat32) * (layer.running_var.to(torch::kFloat32) + layer.eps).rsqrt();
    folded_weight = (layer.weight.to(torch::kFloat32) * scale.view({-1, 1, 1, 1})).to(layer.weight.scalar_type()).contiguous();
    folded_bias = (layer.norm_bias.to(torch::kFloat32) - layer.running_mean.to(torch::kFloat32) * scale).contiguous();
    dtype = layer.weight.scalar_type();
    source = std::move(parts);
    plans.clear();
    packings.clear();
  }

  Plan& plan(const torch::Tensor& input, const ConvolutionBatchNorm& layer, const torch::Tensor& output, ResidualSum residual_sum,
             bool relu) {
    const PlanKey key{input.size(0), input.size(2), input.size(3), residual_sum, relu};
    if (auto found = plans.find(key); found != plans.end()) return found->second;
    if (plans.size() >= kMaxPlans) plans.clear();
    const auto type = dnnl_type(dtype);
    const memory::dims source_dims(input.sizes().begin(), input.sizes().end());
    const memory::dims output_dims(output.sizes().begin(), output.sizes().end());
    const memory::dims weight_dims(folded_weight.sizes().begin(), folded_weight.sizes().end());
    const memory::desc source_desc(source_dims, type, memory::format_tag::nhwc);
    const memory::desc output_desc(output_dims, type, memory::format_tag::nhwc);
    const memory::desc any_weights(weight_dims, type, memory::format_tag::any);
    const memory::desc bias_desc({weight_dims[0]}, memory::data_type::f32, memory::format_tag::a);
    dnnl::post_ops post_ops;
    if (residual_sum == ResidualSum::Read) post_ops.append_binary(dnnl::algorithm::binary_add, output_desc);
    if (residual_sum == ResidualSum::InPlace) post_ops.append_sum(1.0f);
    if (relu) post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attributes;
    attributes.set_post_ops(post_ops);
    auto find_primitive = [&](dnnl::algorithm algorithm, const memory::desc& source, const memory::desc& destination) {
      std::optional<dnnl::convolution_forward::primitive_desc> found;
      try {
        found.emplace(dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, algorithm, source, any_weights, bias_desc,
                                                      destination, {layer.stride, layer.stride}, {layer.dilation - 1, layer.dilation - 1},
                                                      {layer.padding, layer.padding}, {layer.padding, layer.padding}),
                      attributes, engine);
      } catch (const dnnl::error&) {}
      if (found && is_reference_kernel(*found)) found.reset();
      return found;
    };
    // float32 3x3 convolutions through oneDNN's Winograd kernels (F(4x4, 3x3), or F(2x2, 3x3)
    // where it prefers): a bottleneck's 3x3 ran in half the time here even with both reorders
    // (ResNet-50, batch 8, every stage), the outputs within 3e-6 of the direct kernel's relative
    // to their largest value.
    std::optional<dnnl::convolution_forward::primitive_desc> found_primitive;
    const bool winograd_shape = weight_dims[2] == 3 && weight_dims[3] == 3 && layer.stride == 1 && layer.dilation == 1 &&
                                layer.padding == 1 && weight_dims[0] % 16 == 0 && weight_dims[1] % 16 == 0;
    if (dtype == torch::kFloat32 && residual_sum == ResidualSum::None && winograd_shape && winograd_enabled()) {
      found_primitive = find_primitive(dnnl::algorithm::convolution_winograd, memory::desc(source_dims, type, memory::format_tag::any),
                                       memory::desc(output_dims, type, memory::format_tag::any));
    }
    const bool blocked = found_primitive.has_value();
    if (!blocked) found_primitive = find_primitive(dnnl::algorithm::convolution_direct, source_desc, output_desc);
    if (!found_primitive) return plans.emplace(key, Plan{}).first->second;
    const auto& primitive = *found_primitive;
    memory packed;
    for (const auto& candidate : packings) {
      if (candidate.get_desc() == primitive.weights_desc()) packed = candidate;
    }
    if (!packed) {
      packed = memory(primitive.weights_desc(), engine);
      memory plain({weight_dims, type, memory::format_tag::oihw}, engine, folded_weight.data_ptr());
      dnnl::stream stream(engine);
      dnnl::reorder(plain, packed).execute(stream, plain, packed);
      stream.wait();
      packings.push_back(packed);
    }
    Plan made;
    made.convolution.emplace(primitive);
    made.weights = packed;
    if (blocked) {
      made.blocked_source = primitive.src_desc();
      made.blocked_output = primitive.dst_desc();
      made.to_blocked.emplace(dnnl::reorder::primitive_desc(engine, source_desc, engine, made.blocked_source));
      made.from_blocked.emplace(dnnl::reorder::primitive_desc(engine, made.blocked_output, engine, output_desc));
    }
    return plans.emplace(key, std::move(made)).first->second;
  }
};

FusedConvolution::FusedConvolution() : state_(std::make_unique<State>()) {}
FusedConvolution::~FusedConvolution() = default;
FusedConvolution::FusedConvolution(FusedConvolution&&) noexcept = default;
FusedConvolution& FusedConvolution::operator=(FusedConvolution&&) noexcept = default;

namespace {

bool fusion_applies(const torch::Tensor& input, const ConvolutionBatchNorm& layer) {
  const auto dtype = input.scalar_type();
  if (!input.device().is_cpu() || (dtype != torch::kFloat32 && dtype != torch::kBFloat16)) return false;
  if (layer.weight.scalar_type() != dtype || !layer.weight.device().is_cpu() || input.dim() != 4 || layer.weight.dim() != 4 ||
      input.size(1) != layer.weight.size(1) || input.numel() == 0) {
    return false;
  }
  for (const auto* t : {&input, &layer.weight, &layer.norm_weight, &layer.norm_bias}) {
    if (needs_grad(*t)) return false;
  }
  return !at::autocast::is_cpu_enabled();
}

}  // namespace

torch::Tensor FusedConvolution::run(const torch::Tensor& input, const ConvolutionBatchNorm& layer, const torch::Tensor& residual, bool relu,
                                    bool may_overwrite_residual) {
  RECORD_FUNCTION("visiontorch::fused_convolution", std::vector<c10::IValue>());
  if (!fusion_applies(input, layer)) return {};
  const auto source = input.contiguous(torch::MemoryFormat::ChannelsLast);
  const int64_t kernel_h = layer.weight.size(2), kernel_w = layer.weight.size(3);
  const int64_t out_h = (input.size(2) + 2 * layer.padding - layer.dilation * (kernel_h - 1) - 1) / layer.stride + 1;
  const int64_t out_w = (input.size(3) + 2 * layer.padding - layer.dilation * (kernel_w - 1) - 1) / layer.stride + 1;
  VT_CHECK(out_h > 0 && out_w > 0, "convolution: input ", input.sizes(), " is smaller than the kernel ", layer.weight.sizes());
  const std::vector<int64_t> output_sizes{input.size(0), layer.weight.size(0), out_h, out_w};
  torch::Tensor output, residual_source;
  auto residual_sum = State::ResidualSum::None;
  if (residual.defined()) {
    VT_CHECK(residual.sizes() == output_sizes, "residual ", residual.sizes(), " does not match the convolution's output ", output_sizes);
    residual_source = residual.to(input.scalar_type()).contiguous(torch::MemoryFormat::ChannelsLast);
    // A residual of the caller's to overwrite, or a converted copy of ours: the output is
    // accumulated into it.
    const bool writable =
        (may_overwrite_residual || !residual_source.is_same(residual)) && residual_source.storage().data() != source.storage().data();
    residual_sum = writable ? State::ResidualSum::InPlace : State::ResidualSum::Read;
  }
  output = residual_sum == State::ResidualSum::InPlace
               ? residual_source
               : torch::empty(output_sizes, input.options().memory_format(torch::MemoryFormat::ChannelsLast));

  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->refresh(layer);
  auto& plan = state_->plan(source, layer, output, residual_sum, relu);
  if (!plan.convolution) return {};
  const auto type = dnnl_type(state_->dtype);
  const auto& engine = state_->engine;
  auto nhwc = [&](const torch::Tensor& t) {
    return memory({memory::dims(t.sizes().begin(), t.sizes().end()), type, memory::format_tag::nhwc}, engine, t.data_ptr());
  };
  std::unordered_map<int, memory> arguments{{DNNL_ARG_SRC, nhwc(source)},
                                            {DNNL_ARG_WEIGHTS, plan.weights},
                                            {DNNL_ARG_BIAS, memory({{layer.weight.size(0)}, memory::data_type::f32, memory::format_tag::a},
                                                                   engine, state_->folded_bias.data_ptr())},
                                            {DNNL_ARG_DST, nhwc(output)}};
  if (residual_sum == State::ResidualSum::Read)
    arguments.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, nhwc(residual_source));
  dnnl::stream stream(engine);
  if (plan.to_blocked) {
    auto scratch = [&](const memory::desc& desc) {
      // bytes from torch's allocator, so the caching allocator reuses them across calls
      auto bytes = torch::empty({static_cast<int64_t>(desc.get_size())}, torch::dtype(torch::kUInt8));
      return std::make_pair(memory(desc, engine, bytes.data_ptr()), bytes);
    };
    auto [blocked_source, source_bytes] = scratch(plan.blocked_source);
    auto [blocked_output, output_bytes] = scratch(plan.blocked_output);
    auto plain_source = arguments.at(DNNL_ARG_SRC);
    auto plain_output = arguments.at(DNNL_ARG_DST);
    plan.to_blocked->execute(stream, plain_source, blocked_source);
    arguments[DNNL_ARG_SRC] = blocked_source;
    arguments[DNNL_ARG_DST] = blocked_output;
    plan.convolution->execute(stream, arguments);
    plan.from_blocked->execute(stream, blocked_output, plain_output);
  } else {
    plan.convolution->execute(stream, arguments);
  }
  stream.wait();
  return output;
}

#else  // without oneDNN

struct FusedConvolution::State {};
FusedConvolution::FusedConvolution() = default;
FusedConvolution::~FusedConvolution() = default;
FusedConvolution::FusedConvolution(FusedConvolution&&) noexcept = default;
FusedConvolution& FusedConvolution::operator=(FusedConvolution&&) noexcept = default;

torch::Tensor FusedConvolution::run(const torch::Tensor&, const ConvolutionBatchNorm&, const torch::Tensor&, bool, bool) { return {}; }

#endif

}  // namespace vt::kernels
