#include "nn/layers.h"

#include <cmath>
#include <map>

#include <torch/version.h>

#include "common/error.h"
#include "common/replica_group.h"
#include "kernels/batch_norm_relu.h"
#include "kernels/dnnl_linear.h"
#include "kernels/dnnl_winograd_conv.h"
#include "kernels/threaded.h"
#include "nn/sync_batch_norm.h"

namespace vt::layers {

namespace {

torch::Tensor gelu_tanh(const torch::Tensor& x) {
  // transformers' NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  return 0.5 * x * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
}

const std::map<std::string, Activation>& activations() {
  static const std::map<std::string, Activation> table = {
      {"gelu", [](const torch::Tensor& x) { return torch::gelu(x); }},
      {"gelu_python", [](const torch::Tensor& x) { return x * 0.5 * (1.0 + torch::erf(x / std::sqrt(2.0))); }},
      {"gelu_new", gelu_tanh},
      {"gelu_accurate",
       [](const torch::Tensor& x) { return 0.5 * x * (1 + torch::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * torch::pow(x, 3)))); }},
      {"gelu_pytorch_tanh", [](const torch::Tensor& x) { return torch::gelu(x, "tanh"); }},
      {"gelu_fast", [](const torch::Tensor& x) { return 0.5 * x * (1.0 + torch::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))); }},
      {"gelu_10", [](const torch::Tensor& x) { return torch::clamp(torch::gelu(x), -10.0, 10.0); }},
      {"quick_gelu", [](const torch::Tensor& x) { return x * torch::sigmoid(1.702 * x); }},
      {"relu", [](const torch::Tensor& x) { return torch::relu(x); }},
      {"relu6", [](const torch::Tensor& x) { return torch::clamp(x, 0.0, 6.0); }},
      {"relu2", [](const torch::Tensor& x) { return torch::square(torch::relu(x)); }},
      {"leaky_relu", [](const torch::Tensor& x) { return torch::leaky_relu(x); }},
      {"silu", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"swish", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"mish", [](const torch::Tensor& x) { return torch::mish(x); }},
      {"tanh", [](const torch::Tensor& x) { return torch::tanh(x); }},
      {"sigmoid", [](const torch::Tensor& x) { return torch::sigmoid(x); }},
      {"linear", [](const torch::Tensor& x) { return x; }},
      {"laplace",
       [](const torch::Tensor& x) {
         // transformers' LaplaceActivation with mu = 0.707107, sigma = 0.282095
         auto z = (x - 0.707107) / (0.282095 * std::sqrt(2.0));
         return 0.5 * (1.0 + torch::erf(z));
       }},
  };
  return table;
}

}  // namespace

Activation activation(const std::string& name) {
  const auto& table = activations();
  auto found = table.find(name);
  if (found == table.end()) {
    std::string known;
    for (const auto& [key, fn] : table) known += (known.empty() ? "" : ", ") + key;
    fail("unsupported activation \"", name, "\" (supported: ", known, ")");
  }
  return found->second;
}

namespace {
thread_local bool initialisation_deferred = false;
}  // namespace

DeferredInitialisation::DeferredInitialisation() : outer_(initialisation_deferred) { initialisation_deferred = true; }
DeferredInitialisation::~DeferredInitialisation() { initialisation_deferred = outer_; }
bool DeferredInitialisation::active() { return initialisation_deferred; }

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias) : in_features(in_features), out_features(out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", torch::empty({out_features}));
  initialisation_deferred_ = DeferredInitialisation::active();
  if (!initialisation_deferred_) reset_default();
}

void LinearImpl::reset_default() {
  // kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for the bias too.
  const double bound = in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(in_features)) : 0.0;
  torch::NoGradGuard no_grad;
  initialisation_deferred_ = false;
  weight.uniform_(-bound, bound);
  if (bias.defined()) bias.uniform_(-bound, bound);
}

torch::Tensor linear(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                     kernels::PackedLinearWeights* packed) {
  if (kernels::dnnl_linear_applies(input, weight, bias)) {
    return kernels::dnnl_linear(input, weight, bias, kernels::FusedActivation::None, packed);
  }
  if (kernels::autocast_linear_applies(input, weight, bias)) return kernels::autocast_linear(input, weight, bias);
  return kernels::linear(input, weight, bias);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& input) {
  if (int8_ && !is_training()) return int8_->forward(input);
  return linear(input, weight, bias, packed_.get());
}

torch::Tensor LinearImpl::forward_add(const torch::Tensor& input, const torch::Tensor& residual) {
  if (!(int8_ && !is_training()) && kernels::autocast_linear_applies(input, weight, bias)) {
    return kernels::autocast_linear(input, weight, bias, residual);
  }
  return forward(input) + residual;
}

torch::Tensor LinearImpl::forward_then(const torch::Tensor& input, const std::string& activation_name) {
  const auto fused = activation_name == "gelu"   ? kernels::FusedActivation::Gelu
                     : activation_name == "relu" ? kernels::FusedActivation::Relu
                                                 : kernels::FusedActivation::None;
  if (fused != kernels::FusedActivation::None && !(int8_ && !is_training()) && kernels::dnnl_linear_applies(input, weight, bias, fused)) {
    return kernels::dnnl_linear(input, weight, bias, fused, packed_.get());
  }
  if (fused == kernels::FusedActivation::Gelu && !(int8_ && !is_training()) && kernels::autocast_linear_applies(input, weight, bias)) {
    return kernels::autocast_gelu(kernels::autocast_linear(input, weight, bias));
  }
  return activation(activation_name)(forward(input));
}

void LinearImpl::quantize_int8() { int8_ = std::make_shared<const kernels::Int8Linear>(weight, bias); }

void LinearImpl::reset_parameters(double std) {
  torch::NoGradGuard no_grad;
  initialisation_deferred_ = false;
  trunc_normal_(weight, 0.0, std);
  if (bias.defined()) bias.zero_();
}

LayerNormImpl::LayerNormImpl(int64_t features, double eps) : features(features), eps(eps) {
  weight = register_parameter("weight", torch::ones({features}));
  bias = register_parameter("bias", torch::zeros({features}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& input) {
  // libtorch 1.13's bfloat16 layer norm on CPU is an order of magnitude slower than its float32
  // one with the conversions around it (which is also the more accurate of the two).
  if (input.scalar_type() == torch::kBFloat16 && input.device().is_cpu()) {
    return torch::layer_norm(input.to(torch::kFloat32), {features}, weight.to(torch::kFloat32), bias.to(torch::kFloat32), eps)
        .to(torch::kBFloat16);
  }
  return torch::layer_norm(input, {features}, weight, bias, eps);
}

void LayerNormImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1.0);
  bias.zero_();
}

torch::Tensor scaled_dot_product_attention(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                           const torch::Tensor& additive_mask, double dropout, bool training,
                                           std::optional<double> requested_scale) {
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(query.size(-1)));
  const double scale = requested_scale.value_or(default_scale);
  const bool drops = dropout > 0.0 && training;
  if (!drops && kernels::fuses_attention(query, key, value, additive_mask)) {
    return kernels::attention(query, key, value, additive_mask, scale);
  }
  // The fused kernel reads a per-window mask for each image; the other paths want it repeated.
  torch::Tensor mask = additive_mask;
  if (mask.defined() && mask.dim() == 4 && mask.size(0) > 1 && mask.size(0) < query.size(0) && query.size(0) % mask.size(0) == 0) {
    mask = mask.repeat({query.size(0) / mask.size(0), 1, 1, 1});
  }
  if (!drops && kernels::training_attention_applies(query, key, value, mask)) {
    return kernels::training_attention(query, key, value, scale);
  }
#if TORCH_VERSION_MAJOR >= 2
  // libtorch 2.x: flash / memory-efficient kernels on CUDA, with the same default scale.
  if (!query.device().is_cpu()) {
    const auto sdpa_mask = mask.defined() ? c10::optional<torch::Tensor>(mask) : c10::nullopt;
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
    return at::scaled_dot_product_attention(query, key, value, sdpa_mask, drops ? dropout : 0.0, /*is_causal=*/false, scale);
#else
    // 2.0 has no scale argument: fold the requested scale into the query.
    auto scaled_query = scale == default_scale ? query : query * (scale / default_scale);
    return at::scaled_dot_product_attention(scaled_query, key, value, sdpa_mask, drops ? dropout : 0.0);
#endif
  }
#endif
  // Same order of operations as transformers, (q k^T) / sqrt(d), except in bfloat16 on CPU:
  // scaling q first costs a third of scaling the scores with libtorch's slow bfloat16 multiply.
  const bool scale_query = query.scalar_type() == torch::kBFloat16 && query.device().is_cpu();
  // A scale of 1 (DETR's queries come scaled) costs no multiply.
  torch::Tensor scores;
  if (scale == 1.0) {
    scores = torch::matmul(query, key.transpose(-1, -2));
  } else {
    scores = scale_query ? torch::matmul(query * scale, key.transpose(-1, -2)) : torch::matmul(query, key.transpose(-1, -2)) * scale;
  }
  if (mask.defined()) scores = scores + mask;
  // In the scores' own dtype, as PyTorch eager and autocast do: libtorch's bf16 softmax is
  // several times faster than a float32 one with conversions around it.
  auto probs = torch::softmax(scores, -1);
  if (drops) probs = torch::dropout(probs, dropout, training);
  return torch::matmul(probs, value);
}

// torchvision's FrozenBatchNorm2d, as transformers' DETR copies it.
constexpr double kFrozenBatchNormEps = 1e-5;

FrozenBatchNorm2dImpl::FrozenBatchNorm2dImpl(int64_t channels) {
  weight = register_buffer("weight", torch::ones({channels}));
  bias = register_buffer("bias", torch::zeros({channels}));
  running_mean = register_buffer("running_mean", torch::zeros({channels}));
  running_var = register_buffer("running_var", torch::ones({channels}));
}

torch::Tensor FrozenBatchNorm2dImpl::forward(const torch::Tensor& input) {
  auto scale = weight.reshape({1, -1, 1, 1}) * (running_var.reshape({1, -1, 1, 1}) + kFrozenBatchNormEps).rsqrt();
  auto shift = bias.reshape({1, -1, 1, 1}) - running_mean.reshape({1, -1, 1, 1}) * scale;
  return input * scale + shift;
}

BatchNorm2dSlot::BatchNorm2dSlot(torch::nn::Module& parent, const std::string& name, int64_t channels, bool frozen_statistics) {
  if (frozen_statistics) {
    frozen = parent.register_module(name, FrozenBatchNorm2d(channels));
  } else {
    trainable = parent.register_module(name, torch::nn::BatchNorm2d(channels));
  }
}

torch::Tensor batch_norm(torch::nn::BatchNorm2d& norm, const torch::Tensor& input) {
  ReplicaGroup* group = ReplicaScope::batch_norm_group();
  if (group != nullptr && norm->is_training()) return synchronized_batch_norm(*norm, input, *group);
  return norm(input);
}

torch::Tensor BatchNorm2dSlot::operator()(const torch::Tensor& input) { return frozen ? frozen(input) : batch_norm(trainable, input); }

torch::Tensor BatchNorm2dSlot::with_relu(const torch::Tensor& input, const torch::Tensor& residual) {
  if (trainable && trainable->is_training() && trainable->options.affine() && ReplicaScope::batch_norm_group() == nullptr) {
    const kernels::BatchNormRelu layer{trainable->weight, trainable->bias, trainable->options.eps(), residual};
    if (kernels::batch_norm_relu_applies(input, layer)) {
      kernels::BatchStatistics statistics;
      auto output = kernels::batch_norm_relu(input, layer, statistics);
      update_running_statistics(*trainable, statistics.mean, statistics.variance, static_cast<double>(statistics.count));
      return output;
    }
  }
  auto output = (*this)(input);
  return torch::relu(residual.defined() ? output + residual : output);
}

namespace {

// The convolution's geometry when it is one kernels::FusedConvolution takes.
std::optional<kernels::ConvolutionBatchNorm> convolution_geometry(const torch::nn::Conv2d& convolution) {
  const auto& options = convolution->options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
  if (convolution->bias.defined() || options.groups() != 1 || padding == nullptr) return std::nullopt;
  const auto stride = *options.stride(), dilation = *options.dilation(), pad = **padding;
  if (stride[0] != stride[1] || dilation[0] != dilation[1] || pad[0] != pad[1]) return std::nullopt;
  kernels::ConvolutionBatchNorm layer;
  layer.weight = convolution->weight;
  layer.stride = stride[0];
  layer.padding = pad[0];
  layer.dilation = dilation[0];
  return layer;
}

// A convolution followed by a frozen normalization, for kernels::FusedConvolution; nullopt for
// convolutions it does not cover (groups, a bias, asymmetric or "same" padding).
std::optional<kernels::ConvolutionBatchNorm> fusable(const torch::nn::Conv2d& convolution, const FrozenBatchNorm2d& norm) {
  auto fused = convolution_geometry(convolution);
  if (!fused) return std::nullopt;
  fused->norm_weight = norm->weight, fused->norm_bias = norm->bias;
  fused->running_mean = norm->running_mean, fused->running_var = norm->running_var;
  fused->eps = kFrozenBatchNormEps;
  return fused;
}

}  // namespace

torch::Tensor conv2d(torch::nn::Conv2d convolution, const torch::Tensor& input) {
  const auto& options = convolution->options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&options.padding());
  const auto& weight = convolution->weight;
  const bool wants_gradient = torch::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad() ||
                                                                (convolution->bias.defined() && convolution->bias.requires_grad()));
  if (wants_gradient && c10::get_if<torch::enumtype::kZeros>(&options.padding_mode())) {
    if (const auto geometry = convolution_geometry(convolution)) {
      auto output = kernels::winograd_training_convolution(input, weight, {geometry->stride, geometry->padding, geometry->dilation, 1});
      if (output.defined()) return output;
    }
  }
  if (padding == nullptr || !c10::get_if<torch::enumtype::kZeros>(&options.padding_mode()) || wants_gradient || !input.device().is_cpu() ||
      input.scalar_type() != torch::kFloat32 || weight.scalar_type() != torch::kFloat32 || input.dim() != 4 ||
      input.size(1) != weight.size(1) * options.groups() || input.numel() == 0) {
    return convolution->forward(input);
  }
  return at::mkldnn_convolution(input, weight, convolution->bias.defined() ? c10::optional<torch::Tensor>(convolution->bias) : c10::nullopt,
                                **padding, *options.stride(), *options.dilation(), options.groups());
}

ConvolutionNorm::ConvolutionNorm(torch::nn::Conv2d convolution, BatchNorm2dSlot normalization)
    : convolution(std::move(convolution)), normalization(std::move(normalization)) {}

ConvolutionNorm::ConvolutionNorm(torch::nn::Conv2d convolution, FrozenBatchNorm2d frozen) : convolution(std::move(convolution)) {
  normalization.frozen = std::move(frozen);
}

torch::Tensor ConvolutionNorm::fused(const torch::Tensor& input, const torch::Tensor& residual, bool relu, bool may_overwrite_residual) {
  auto layer = normalization.after(convolution);
  return layer ? kernel_.run(input, *layer, residual, relu, may_overwrite_residual) : torch::Tensor();
}

torch::Tensor ConvolutionNorm::operator()(const torch::Tensor& input, const torch::Tensor& residual, bool relu,
                                          bool may_overwrite_residual) {
  if (auto output = fused(input, residual, relu, may_overwrite_residual); output.defined()) return output;
  auto convolved = conv2d(convolution, input);
  if (relu) return normalization.with_relu(convolved, residual);
  auto output = normalization(convolved);
  return residual.defined() ? output + residual : output;
}

std::optional<kernels::ConvolutionBatchNorm> BatchNorm2dSlot::after(const torch::nn::Conv2d& convolution) const {
  if (frozen) return fusable(convolution, frozen);
  auto fused = convolution_geometry(convolution);
  if (!fused) return std::nullopt;
  // A trainable normalization uses its running statistics only in evaluation mode.
  if (trainable->is_training() || !trainable->options.track_running_stats() || !trainable->options.affine()) return std::nullopt;
  fused->norm_weight = trainable->weight, fused->norm_bias = trainable->bias;
  fused->running_mean = trainable->running_mean, fused->running_var = trainable->running_var;
  fused->eps = trainable->options.eps();
  return fused;
}

torch::Tensor drop_path(const torch::Tensor& x, double p, bool training) {
  if (p == 0.0 || !training) return x;
  const double keep = 1.0 - p;
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  auto mask = (keep + torch::rand(shape, x.options())).floor_();
  return x.div(keep) * mask;
}

bool init_normal(torch::nn::Module& module, double std) {
  torch::NoGradGuard no_grad;
  if (auto* linear = dynamic_cast<LinearImpl*>(&module)) {
    linear->weight.normal_(0.0, std);
    if (linear->bias.defined()) linear->bias.zero_();
  } else if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(&module)) {
    conv->weight.normal_(0.0, std);
    if (conv->bias.defined()) conv->bias.zero_();
  } else if (auto* norm = dynamic_cast<LayerNormImpl*>(&module)) {
    norm->reset_parameters();
  } else {
    return false;
  }
  return true;
}

void trunc_normal_(torch::Tensor& tensor, double mean, double std, double a, double b) {
  torch::NoGradGuard no_grad;
  auto norm_cdf = [](double x) { return (1.0 + std::erf(x / std::sqrt(2.0))) / 2.0; };
  double low = norm_cdf((a - mean) / std);
  double high = norm_cdf((b - mean) / std);
  // Sampled in float32 like transformers' _init_weights, then cast back.
  auto sample = torch::empty(tensor.sizes(), tensor.options().dtype(torch::kFloat32));
  sample.uniform_(2 * low - 1, 2 * high - 1);
  sample.erfinv_();
  sample.mul_(std * std::sqrt(2.0));
  sample.add_(mean);
  sample.clamp_(a, b);
  tensor.copy_(sample);
}

}  // namespace vt::layers

namespace vt::layers {

std::shared_ptr<torch::nn::Module> add_container(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>(name));
}

}  // namespace vt::layers

#include <ATen/autocast_mode.h>

namespace vt::layers {

namespace {

struct CheckpointState : torch::CustomClassHolder {
  std::function<torch::Tensor(const torch::Tensor&)> fn;
  at::Generator generator_state;  // a clone of the CPU generator at forward time
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor input, c10::intrusive_ptr<CheckpointState> state) {
    ctx->save_for_backward({input});
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    torch::NoGradGuard no_grad;
    return state->fn(input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grad_outputs) {
    auto state = c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    auto input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    auto generator = at::detail::getDefaultCPUGenerator();
    // Replay the forward's random stream (dropout), then give the caller's stream back. The
    // generator's lock is held only while swapping states: sampling takes it too.
    at::Generator current;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      current = generator.clone();
      generator.set_state(state->generator_state.get_state());
    }
    const bool was_autocast = at::autocast::is_cpu_enabled();
    const auto was_dtype = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_cpu_enabled(state->autocast);
    at::autocast::set_autocast_cpu_dtype(state->autocast_dtype);
    torch::Tensor output;
    {
      torch::AutoGradMode enable_grad(true);
      output = state->fn(input);
    }
    at::autocast::set_cpu_enabled(was_autocast);
    at::autocast::set_autocast_cpu_dtype(was_dtype);
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(current.get_state());
    }
    torch::autograd::backward({output}, {grad_outputs[0]});
    return {input.grad(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpoint(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& input) {
  if (!torch::GradMode::is_enabled()) return fn(input);
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = fn;
  auto generator = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    state->generator_state = generator.clone();
  }
  state->autocast = at::autocast::is_cpu_enabled();
  state->autocast_dtype = at::autocast::get_autocast_cpu_dtype();
  // The input must be part of the graph for backward to reach this function.
  torch::Tensor tracked = input.requires_grad() ? input : input.detach().requires_grad_(true);
  return CheckpointFunction::apply(tracked, state);
}

}  // namespace vt::layers
