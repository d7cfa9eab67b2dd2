#include "models/convnext.h"

#include "common/error.h"
#include "common/json_config.h"
#include "losses/classification.h"

namespace vt::convnext {

namespace {
constexpr double kInnerNormEps = 1e-6;  // transformers hard-codes it for every norm but the last
}

ConvNextConfig ConvNextConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  ConvNextConfig config;
  config.num_channels = fields.get_positive_int("num_channels", config.num_channels);
  config.patch_size = fields.get_positive_int("patch_size", config.patch_size);
  config.hidden_sizes = fields.get_positive_ints("hidden_sizes", config.hidden_sizes);
  config.depths = fields.get_positive_ints("depths", config.depths);
  const int64_t num_stages = fields.get_positive_int("num_stages", static_cast<int64_t>(config.depths.size()));
  config.hidden_act = fields.get_string("hidden_act", config.hidden_act);
  layers::activation(config.hidden_act);
  config.initializer_range = fields.get_number("initializer_range", config.initializer_range);
  config.layer_norm_eps = fields.get_positive_number("layer_norm_eps", config.layer_norm_eps);
  config.layer_scale_init_value = fields.get_number("layer_scale_init_value", config.layer_scale_init_value);
  config.drop_path_rate = fields.get_probability("drop_path_rate", 0.0);
  config.head = HeadConfig::from_json(json, source);
  VT_CHECK(static_cast<int64_t>(config.depths.size()) >= num_stages && static_cast<int64_t>(config.hidden_sizes.size()) >= num_stages,
           source, ": num_stages is ", num_stages, " but depths has ", config.depths.size(), " and hidden_sizes ",
           config.hidden_sizes.size(), " entries");
  config.depths.resize(static_cast<size_t>(num_stages));
  config.hidden_sizes.resize(static_cast<size_t>(num_stages));
  return config;
}

ChannelLayerNormImpl::ChannelLayerNormImpl(int64_t channels, double eps, bool channels_first)
    : channels(channels), eps(eps), channels_first(channels_first) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

torch::Tensor ChannelLayerNormImpl::forward(const torch::Tensor& x) {
  if (!channels_first) return torch::layer_norm(x, {channels}, weight, bias, eps);
  // transformers' channels_first branch, step by step (its rounding, not layer_norm's).
  auto mean = x.mean(1, true);
  auto variance = (x - mean).pow(2).mean(1, true);
  auto normalized = (x - mean) / torch::sqrt(variance + eps);
  return weight.view({-1, 1, 1}) * normalized + bias.view({-1, 1, 1});
}

ConvNextLayerImpl::ConvNextLayerImpl(const ConvNextConfig& config, int64_t dim, double drop_path)
    : hidden_act(config.hidden_act), drop_path(drop_path) {
  dwconv = register_module("dwconv", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim, 7).padding(3).groups(dim)));
  layernorm = register_module("layernorm", ChannelLayerNorm(dim, kInnerNormEps, /*channels_first=*/false));
  pwconv1 = register_module("pwconv1", layers::Linear(dim, 4 * dim));
  pwconv2 = register_module("pwconv2", layers::Linear(4 * dim, dim));
  if (config.layer_scale_init_value > 0) {
    layer_scale_parameter = register_parameter("layer_scale_parameter", torch::full({dim}, config.layer_scale_init_value));
  }
}

torch::Tensor ConvNextLayerImpl::forward(const torch::Tensor& input) {
  auto x = layers::conv2d(dwconv, input).permute({0, 2, 3, 1});
  x = pwconv2(pwconv1->forward_then(layernorm(x), hidden_act));
  if (layer_scale_parameter.defined()) x = layer_scale_parameter * x;
  x = x.permute({0, 3, 1, 2});
  return input + layers::drop_path(x, drop_path, is_training());
}

ConvNextBody::ConvNextBody(const ConvNextConfig& config, torch::nn::Module& owner) : config(config) {
  auto embeddings = layers::add_container(owner, "embeddings");
  patch_embeddings = embeddings->register_module(
      "patch_embeddings",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(config.num_channels, config.hidden_sizes[0], config.patch_size).stride(config.patch_size)));
  embeddings_norm = embeddings->register_module("layernorm", ChannelLayerNorm(config.hidden_sizes[0], kInnerNormEps, true));

  int64_t total_depth = 0;
  for (int64_t depth : config.depths) total_depth += depth;
  // torch.linspace(0, drop_path_rate, sum(depths)): deeper layers drop more.
  auto rate = [&](int64_t index) {
    return total_depth > 1 ? config.drop_path_rate * static_cast<double>(index) / static_cast<double>(total_depth - 1) : 0.0;
  };
  auto stage_list = layers::add_container(*layers::add_container(owner, "encoder"), "stages");
  int64_t previous = config.hidden_sizes[0], index = 0;
  for (size_t i = 0; i < config.depths.size(); ++i) {
    const int64_t channels = config.hidden_sizes[i];
    auto stage_module = layers::add_container(*stage_list, std::to_string(i));
    ConvNextStage stage;
    if (previous != channels || i > 0) {
      auto downsampling = layers::add_container(*stage_module, "downsampling_layer");
      stage.downsample_norm = downsampling->register_module("0", ChannelLayerNorm(previous, kInnerNormEps, true));
      stage.downsample_conv =
          downsampling->register_module("1", torch::nn::Conv2d(torch::nn::Conv2dOptions(previous, channels, 2).stride(2)));
    }
    auto layer_list = layers::add_container(*stage_module, "layers");
    for (int64_t j = 0; j < config.depths[i]; ++j) {
      stage.layers.push_back(layer_list->register_module(std::to_string(j), ConvNextLayer(config, channels, rate(index++))));
    }
    stages.push_back(std::move(stage));
    previous = channels;
  }
  layernorm = owner.register_module("layernorm", layers::LayerNorm(config.hidden_sizes.back(), config.layer_norm_eps));
}

std::pair<torch::Tensor, torch::Tensor> ConvNextBody::forward(const torch::Tensor& pixel_values) {
  check_pixel_values(pixel_values, config.num_channels);
  auto hidden = embeddings_norm(layers::conv2d(patch_embeddings, pixel_values.to(patch_embeddings->weight.scalar_type())));
  for (auto& stage : stages) {
    if (stage.downsample_conv) hidden = layers::conv2d(stage.downsample_conv, stage.downsample_norm(hidden));
    for (auto& layer : stage.layers) hidden = layer(hidden);
  }
  return {hidden, layernorm(hidden.mean({-2, -1}))};
}

void ConvNextModuleBase::init_module(const std::string& name, torch::nn::Module& module) {
  layers::init_normal(module, config.head.initializer_range);
}

ConvNextModel::ConvNextModel(const ConvNextConfig& config) : ConvNextModuleBase(config) {
  body = std::make_unique<ConvNextBody>(config, *this);
}

ModelOutputs ConvNextModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "ConvNextModel has no task head, so it takes no labels");
  auto [last, pooled] = body->forward(inputs.pixel_values);
  return {{"last_hidden_state", last}, {"pooler_output", pooled}};
}

ConvNextForImageClassification::ConvNextForImageClassification(const ConvNextConfig& config) : ConvNextModuleBase(config) {
  convnext = std::make_unique<ConvNextBody>(config, *layers::add_container(*this, "convnext"));
  if (config.head.num_labels() > 0) {
    classifier = register_module("classifier", layers::Linear(config.hidden_sizes.back(), config.head.num_labels()));
  }
}

ModelOutputs ConvNextForImageClassification::forward(const ModelInputs& inputs) {
  auto pooled = convnext->forward(inputs.pixel_values).second;
  auto logits = classifier ? classifier(pooled) : pooled;
  return classification_outputs(logits, inputs.labels, config.head.problem_type);
}

}  // namespace vt::convnext
