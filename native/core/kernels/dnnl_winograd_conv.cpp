#include "kernels/dnnl_winograd_conv.h"

#include "common/error.h"

#ifdef VISIONTORCH_WITH_DNNL
#include <ATen/record_function.h>
#include <map>
#include <memory>
#include <mutex>
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

constexpr int64_t kChannelBlock = 16;  // the Winograd kernels' blocked layouts hold 16 channels a block
// ResNet-50's last stage (7x7 images) ran slower on the Winograd kernels than on the direct ones
// here, each of its first three stages (56x56 to 14x14) 1.3x-1.7x faster both ways.
constexpr int64_t kMinimumImageSide = 14;
constexpr size_t kMaxPlans = 64;  // distinct (batch, image, channels) shapes; past this the cache starts over

memory::dims dims_of(const torch::Tensor& t) { return memory::dims(t.sizes().begin(), t.sizes().end()); }

// A reorder between two layouts, none where they are the same.
class Reorder {
 public:
  Reorder() = default;
  Reorder(const dnnl::engine& engine, const memory::desc& from, const memory::desc& to) : to_(to) {
    if (from != to) primitive_.emplace(dnnl::reorder::primitive_desc(engine, from, engine, to));
  }

  // `from` in the destination layout: itself, or a copy in bytes from torch's allocator (which
  // the caching allocator hands back on the next step), kept alive in `buffers`.
  memory into(memory from, const dnnl::engine& engine, const dnnl::stream& stream, std::vector<torch::Tensor>& buffers) const {
    if (!primitive_) return from;
    buffers.push_back(torch::empty({static_cast<int64_t>(to_.get_size())}, torch::dtype(torch::kUInt8)));
    memory to(to_, engine, buffers.back().data_ptr());
    primitive_->execute(stream, from, to);
    return to;
  }

  // Writes `from` into `to`; nothing where the layouts agree (the primitive wrote `to` itself).
  void out_of(memory from, memory to, const dnnl::stream& stream) const {
    if (primitive_) primitive_->execute(stream, from, to);
  }

  bool needed() const { return primitive_.has_value(); }

 private:
  memory::desc to_;
  std::optional<dnnl::reorder> primitive_;
};

// The three Winograd primitives for one shape, with the reorders between the tensors' own
// layouts (channels-last images, the weight's strides) and the blocked ones they read and write.
struct Plan {
  memory::desc source, output, weights;  // the tensors' own layouts
  dnnl::convolution_forward forward;
  memory::desc forward_output;
  Reorder forward_source_in, forward_weights_in, forward_output_out;
  dnnl::convolution_backward_data backward_data;
  memory::desc data_diff_source;
  Reorder data_diff_output_in, data_weights_in, data_diff_source_out;
  dnnl::convolution_backward_weights backward_weights;
  memory::desc diff_weights;
  Reorder weights_source_in, weights_diff_output_in, diff_weights_out;
  bool diff_output_layouts_agree = false;  // both gradients read the output's gradient in one layout
};

struct PlanKey {
  std::vector<int64_t> input_sizes, weight_sizes, weight_strides;
  bool operator<(const PlanKey& other) const {
    return std::tie(input_sizes, weight_sizes, weight_strides) < std::tie(other.input_sizes, other.weight_sizes, other.weight_strides);
  }
};

class Plans {
 public:
  static Plans& instance() {
    static Plans plans;
    return plans;
  }

  const dnnl::engine& engine() const { return engine_; }

  // The plan for these operands (input channels-last), or none where oneDNN has no Winograd
  // kernel for one of the three products on this CPU.
  std::shared_ptr<const Plan> find(const torch::Tensor& input, const torch::Tensor& weight) {
    PlanKey key{input.sizes().vec(), weight.sizes().vec(), weight.strides().vec()};
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto found = plans_.find(key); found != plans_.end()) return found->second;
    if (plans_.size() >= kMaxPlans) plans_.clear();
    return plans_[key] = make(input, weight);
  }

 private:
  std::shared_ptr<const Plan> make(const torch::Tensor& input, const torch::Tensor& weight) const {
    const auto f32 = memory::data_type::f32;
    const memory::dims output_dims{input.size(0), weight.size(0), input.size(2), input.size(3)};
    auto plan = std::make_shared<Plan>();
    plan->source = memory::desc(dims_of(input), f32, memory::format_tag::nhwc);
    plan->output = memory::desc(output_dims, f32, memory::format_tag::nhwc);
    plan->weights = memory::desc(dims_of(weight), f32, memory::dims(weight.strides().begin(), weight.strides().end()));
    const memory::desc any_source(dims_of(input), f32, memory::format_tag::any);
    const memory::desc any_output(output_dims, f32, memory::format_tag::any);
    const memory::desc any_weights(dims_of(weight), f32, memory::format_tag::any);
    const memory::dims strides{1, 1}, padding{1, 1};
    const auto winograd = dnnl::algorithm::convolution_winograd;
    try {
      dnnl::convolution_forward::primitive_desc forward(
          dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, winograd, any_source, any_weights, any_output, strides,
                                          padding, padding),
          engine_);
      dnnl::convolution_backward_data::primitive_desc backward_data(
          dnnl::convolution_backward_data::desc(winograd, any_source, any_weights, any_output, strides, padding, padding), engine_,
          forward);
      dnnl::convolution_backward_weights::primitive_desc backward_weights(
          dnnl::convolution_backward_weights::desc(winograd, any_source, any_weights, any_output, strides, padding, padding), engine_,
          forward);
      if (is_reference_kernel(forward) || is_reference_kernel(backward_data) || is_reference_kernel(backward_weights)) return nullptr;
      plan->forward = dnnl::convolution_forward(forward);
      plan->forward_output = forward.dst_desc();
      plan->forward_source_in = Reorder(engine_, plan->source, forward.src_desc());
      plan->forward_weights_in = Reorder(engine_, plan->weights, forward.weights_desc());
      plan->forward_output_out = Reorder(engine_, forward.dst_desc(), plan->output);
      plan->backward_data = dnnl::convolution_backward_data(backward_data);
      plan->data_diff_source = backward_data.diff_src_desc();
      plan->data_diff_output_in = Reorder(engine_, plan->output, backward_data.diff_dst_desc());
      plan->data_weights_in = Reorder(engine_, plan->weights, backward_data.weights_desc());
      plan->data_diff_source_out = Reorder(engine_, backward_data.diff_src_desc(), plan->source);
      plan->backward_weights = dnnl::convolution_backward_weights(backward_weights);
      plan->diff_weights = backward_weights.diff_weights_desc();
      plan->weights_source_in = Reorder(engine_, plan->source, backward_weights.src_desc());
      plan->weights_diff_output_in = Reorder(engine_, plan->output, backward_weights.diff_dst_desc());
      plan->diff_weights_out = Reorder(engine_, backward_weights.diff_weights_desc(), plan->weights);
      plan->diff_output_layouts_agree = backward_data.diff_dst_desc() == backward_weights.diff_dst_desc();
    } catch (const dnnl::error&) {
      return nullptr;  // no Winograd kernel for these shapes on this CPU
    }
    return plan;
  }

  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mutex_;
  std::map<PlanKey, std::shared_ptr<const Plan>> plans_;
};

memory plain(const memory::desc& desc, const torch::Tensor& t) { return memory(desc, Plans::instance().engine(), t.data_ptr()); }

// Runs `primitive`, its result (argument `result`, in `layout`) landing in `target`: written there
// directly where `out` has nothing to reorder, else through scratch memory and `out`.
void run_into(const dnnl::primitive& primitive, std::unordered_map<int, memory> arguments, int result, const memory::desc& layout,
              const Reorder& out, const memory& target, const dnnl::stream& stream, std::vector<torch::Tensor>& buffers) {
  memory written = target;
  if (out.needed()) {
    buffers.push_back(torch::empty({static_cast<int64_t>(layout.get_size())}, torch::dtype(torch::kUInt8)));
    written = memory(layout, Plans::instance().engine(), buffers.back().data_ptr());
  }
  arguments.emplace(result, written);
  primitive.execute(stream, arguments);
  out.out_of(written, target, stream);
}

class WinogradConvolution : public torch::autograd::Function<WinogradConvolution> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& input, const torch::Tensor& weight,
                               std::shared_ptr<const Plan> plan) {
    RECORD_FUNCTION("visiontorch::winograd_convolution", std::vector<c10::IValue>());
    const auto& engine = Plans::instance().engine();
    auto output = torch::empty({input.size(0), weight.size(0), input.size(2), input.size(3)},
                               input.options().memory_format(torch::MemoryFormat::ChannelsLast));
    std::vector<torch::Tensor> buffers;
    dnnl::stream stream(engine);
    const auto source = plan->forward_source_in.into(plain(plan->source, input), engine, stream, buffers);
    const auto weights = plan->forward_weights_in.into(plain(plan->weights, weight), engine, stream, buffers);
    run_into(plan->forward, {{DNNL_ARG_SRC, source}, {DNNL_ARG_WEIGHTS, weights}}, DNNL_ARG_DST, plan->forward_output,
             plan->forward_output_out, plain(plan->output, output), stream, buffers);
    stream.wait();
    context->save_for_backward({input, weight});
    return output;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* context, torch::autograd::tensor_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const auto &input = saved[0], &weight = saved[1];
    const auto grad_output = grad_outputs[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const auto plan = Plans::instance().find(input, weight);
    VT_CHECK(plan != nullptr, "winograd convolution: no kernel for the backward pass of input ", input.sizes());
    const auto& engine = Plans::instance().engine();
    std::vector<torch::Tensor> buffers;
    dnnl::stream stream(engine);
    const auto plain_grad_output = plain(plan->output, grad_output);
    torch::Tensor grad_input, grad_weight;
    std::optional<memory> data_diff_output;
    if (context->needs_input_grad(0)) {
      RECORD_FUNCTION("visiontorch::winograd_input_gradient", std::vector<c10::IValue>());
      grad_input = torch::empty_like(input, torch::MemoryFormat::ChannelsLast);
      data_diff_output = plan->data_diff_output_in.into(plain_grad_output, engine, stream, buffers);
      const auto weights = plan->data_weights_in.into(plain(plan->weights, weight), engine, stream, buffers);
      run_into(plan->backward_data, {{DNNL_ARG_DIFF_DST, *data_diff_output}, {DNNL_ARG_WEIGHTS, weights}}, DNNL_ARG_DIFF_SRC,
               plan->data_diff_source, plan->data_diff_source_out, plain(plan->source, grad_input), stream, buffers);
    }
    if (context->needs_input_grad(1)) {
      RECORD_FUNCTION("visiontorch::winograd_weight_gradient", std::vector<c10::IValue>());
      grad_weight = torch::empty_strided(weight.sizes(), weight.strides(), weight.options());
      const auto diff_output = data_diff_output && plan->diff_output_layouts_agree
                                   ? *data_diff_output
                                   : plan->weights_diff_output_in.into(plain_grad_output, engine, stream, buffers);
      const auto source = plan->weights_source_in.into(plain(plan->source, input), engine, stream, buffers);
      run_into(plan->backward_weights, {{DNNL_ARG_DIFF_DST, diff_output}, {DNNL_ARG_SRC, source}}, DNNL_ARG_DIFF_WEIGHTS,
               plan->diff_weights, plan->diff_weights_out, plain(plan->weights, grad_weight), stream, buffers);
    }
    stream.wait();
    return {grad_input, grad_weight, torch::Tensor()};
  }
};

bool wants_gradient(const torch::Tensor& input, const torch::Tensor& weight) {
  return torch::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad());
}

}  // namespace

torch::Tensor winograd_training_convolution(const torch::Tensor& input, const torch::Tensor& weight, const ConvolutionGeometry& geometry) {
  if (!winograd_enabled() || !wants_gradient(input, weight) || at::autocast::is_cpu_enabled()) return {};
  if (!input.device().is_cpu() || !weight.device().is_cpu() || input.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32 || input.dim() != 4 || weight.dim() != 4) {
    return {};
  }
  if (geometry.stride != 1 || geometry.padding != 1 || geometry.dilation != 1 || geometry.groups != 1 || weight.size(2) != 3 ||
      weight.size(3) != 3 || input.size(1) != weight.size(1) || input.size(1) % kChannelBlock != 0 || weight.size(0) % kChannelBlock != 0 ||
      input.size(2) < kMinimumImageSide || input.size(3) < kMinimumImageSide || input.size(0) == 0) {
    return {};
  }
  // The weight's own strides are described to oneDNN (and its gradient made in them); any dense
  // layout will do.
  if (!weight.is_non_overlapping_and_dense()) return {};
  const auto source = input.contiguous(torch::MemoryFormat::ChannelsLast);
  auto plan = Plans::instance().find(source, weight);
  if (!plan) return {};
  return WinogradConvolution::apply(source, weight, std::move(plan));
}

#else  // without oneDNN

torch::Tensor winograd_training_convolution(const torch::Tensor&, const torch::Tensor&, const ConvolutionGeometry&) { return {}; }

#endif

}  // namespace vt::kernels
