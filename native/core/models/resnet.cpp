#include "models/resnet.h"

#include <algorithm>

#include "common/error.h"
#include "common/json_config.h"
#include "losses/classification.h"

namespace vt::resnet {

ResNetConfig ResNetConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  ResNetConfig config;
  config.num_channels = fields.get_positive_int("num_channels", config.num_channels);
  config.embedding_size = fields.get_positive_int("embedding_size", config.embedding_size);
  config.hidden_sizes = fields.get_positive_ints("hidden_sizes", config.hidden_sizes);
  config.depths = fields.get_positive_ints("depths", config.depths);
  config.layer_type = fields.get_string("layer_type", config.layer_type);
  config.hidden_act = fields.get_string("hidden_act", config.hidden_act);
  config.downsample_in_first_stage = fields.get_bool("downsample_in_first_stage", false);
  config.head = HeadConfig::from_json(json, source);
  if (config.layer_type != "basic" && config.layer_type != "bottleneck") {
    fields.fail_field("layer_type", "\"basic\" or \"bottleneck\"");
  }
  layers::activation(config.hidden_act);
  VT_CHECK(!config.hidden_sizes.empty() && config.hidden_sizes.size() == config.depths.size(), source, ": hidden_sizes (",
           config.hidden_sizes.size(), " entries) and depths (", config.depths.size(), " entries) must describe the same stages");
  std::vector<std::string> default_names{"stem"};
  for (size_t i = 1; i <= config.depths.size(); ++i) default_names.push_back("stage" + std::to_string(i));
  config.stage_names = fields.get_strings("stage_names", default_names);
  VT_CHECK(config.stage_names.size() == config.depths.size() + 1, source, ": stage_names must name the stem and each of the ",
           config.depths.size(), " stages");
  config.out_features = fields.get_strings("out_features", {config.stage_names.back()});
  for (const auto& feature : config.out_features) {
    VT_CHECK(std::find(config.stage_names.begin(), config.stage_names.end(), feature) != config.stage_names.end(), source,
             ": out_features names \"", feature, "\", which is not one of stage_names");
  }
  return config;
}

ConvLayerImpl::ConvLayerImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
                             std::optional<std::string> activation_name, bool frozen_batch_norm)
    : relu(activation_name == "relu") {
  convolution = register_module(
      "convolution",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(in_channels, out_channels, kernel_size).stride(stride).padding(kernel_size / 2).bias(false)));
  normalization = layers::BatchNorm2dSlot(*this, "normalization", out_channels, frozen_batch_norm);
  fused = layers::ConvolutionNorm(convolution, normalization);
  if (activation_name) activation = layers::activation(*activation_name);
}

torch::Tensor ConvLayerImpl::forward(const torch::Tensor& input) {
  if (!activation || relu) return forward_with(input, {}, relu);
  return (*activation)(normalization(layers::conv2d(convolution, input)));
}

torch::Tensor ConvLayerImpl::forward_with(const torch::Tensor& input, const torch::Tensor& residual, bool with_relu,
                                          bool may_overwrite_residual) {
  return fused(input, residual, with_relu, may_overwrite_residual);
}

ResidualLayerImpl::ResidualLayerImpl(const ResNetConfig& config, int64_t in_channels, int64_t out_channels, int64_t stride)
    : activation(layers::activation(config.hidden_act)), relu(config.hidden_act == "relu") {
  if (in_channels != out_channels || stride != 1) {
    auto shortcut = layers::add_container(*this, "shortcut");
    shortcut_convolution = shortcut->register_module(
        "convolution", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 1).stride(stride).bias(false)));
    shortcut_normalization = layers::BatchNorm2dSlot(*shortcut, "normalization", out_channels, config.frozen_batch_norm);
    this->shortcut = layers::ConvolutionNorm(shortcut_convolution, shortcut_normalization);
  }
  auto sequence = layers::add_container(*this, "layer");
  const bool frozen = config.frozen_batch_norm;
  // transformers' inner convolutions use ReLU whatever hidden_act says; hidden_act applies after
  // the residual sum.
  if (config.layer_type == "bottleneck") {
    const int64_t reduced = out_channels / 4;
    layer.push_back(sequence->register_module("0", ConvLayer(in_channels, reduced, 1, 1, "relu", frozen)));
    layer.push_back(sequence->register_module("1", ConvLayer(reduced, reduced, 3, stride, "relu", frozen)));
    layer.push_back(sequence->register_module("2", ConvLayer(reduced, out_channels, 1, 1, std::nullopt, frozen)));
  } else {
    layer.push_back(sequence->register_module("0", ConvLayer(in_channels, out_channels, 3, stride, "relu", frozen)));
    layer.push_back(sequence->register_module("1", ConvLayer(out_channels, out_channels, 3, 1, std::nullopt, frozen)));
  }
}

torch::Tensor ResidualLayerImpl::forward(const torch::Tensor& input) { return run(input, false); }

torch::Tensor ResidualLayerImpl::forward_consuming(torch::Tensor&& input) {
  // Only the caller's handle, which it gives up, and no view of the memory.
  return run(input, input.use_count() == 1 && input.storage().use_count() == 1);
}

torch::Tensor ResidualLayerImpl::run(const torch::Tensor& input, bool input_is_private) {
  torch::Tensor residual = input;
  // The sum is accumulated into the shortcut's memory where nothing else reads it: the block's
  // input when the caller gave it up, or the projection's fresh output. With gradients on, only
  // the identity's: accumulating into the projection moves DETR's tiny-model gradients (not its
  // outputs) past the parity tolerance.
  const bool residual_is_private = shortcut_convolution ? !torch::GradMode::is_enabled() : input_is_private;
  if (shortcut_convolution) residual = shortcut(input);
  torch::Tensor hidden = input;
  for (size_t i = 0; i + 1 < layer.size(); ++i) hidden = layer[i](hidden);
  // The last convolution, the sum and the activation in one pass where the kernel allows.
  if (relu) return layer.back()->forward_with(hidden, residual, true, residual_is_private);
  return activation(layer.back()(hidden) + residual);
}

ResNetBody::ResNetBody(const ResNetConfig& config, torch::nn::Module& owner) : config(config) {
  embedder = layers::add_container(owner, "embedder")
                 ->register_module(
                     "embedder", ConvLayer(config.num_channels, config.embedding_size, 7, 2, config.hidden_act, config.frozen_batch_norm));
  auto stage_list = layers::add_container(*layers::add_container(owner, "encoder"), "stages");
  int64_t in_channels = config.embedding_size;
  for (size_t i = 0; i < config.depths.size(); ++i) {
    const int64_t out_channels = config.hidden_sizes[i];
    const int64_t stride = i == 0 ? (config.downsample_in_first_stage ? 2 : 1) : 2;
    auto layer_list = layers::add_container(*layers::add_container(*stage_list, std::to_string(i)), "layers");
    std::vector<ResidualLayer> stage;
    for (int64_t j = 0; j < config.depths[i]; ++j) {
      stage.push_back(layer_list->register_module(
          std::to_string(j), ResidualLayer(config, j == 0 ? in_channels : out_channels, out_channels, j == 0 ? stride : 1)));
    }
    stages.push_back(std::move(stage));
    in_channels = out_channels;
  }
}

std::vector<torch::Tensor> ResNetBody::forward(const torch::Tensor& pixel_values) {
  check_pixel_values(pixel_values, config.num_channels);
  auto hidden = torch::max_pool2d(embedder(pixel_values.to(embedder->convolution->weight.scalar_type())), 3, 2, 1);
  std::vector<torch::Tensor> hidden_states{hidden};
  for (auto& stage : stages) {
    for (auto& layer : stage) hidden = layer->forward_consuming(std::move(hidden));
    hidden_states.push_back(hidden);
  }
  return hidden_states;
}

void ResNetModuleBase::init_module(const std::string& name, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(&module)) {
    torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
  } else if (auto* norm = dynamic_cast<torch::nn::BatchNorm2dImpl*>(&module)) {
    norm->weight.fill_(1.0);
    norm->bias.zero_();
  } else if (auto* linear = dynamic_cast<layers::LinearImpl*>(&module)) {
    // transformers leaves ResNet's classifier at PyTorch's default initialisation.
    linear->reset_default();
  }
}

ResNetModel::ResNetModel(const ResNetConfig& config) : ResNetModuleBase(config) { body = std::make_unique<ResNetBody>(config, *this); }

ModelOutputs ResNetModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "ResNetModel has no task head, so it takes no labels");
  auto last = body->forward(inputs.pixel_values).back();
  return {{"last_hidden_state", last}, {"pooler_output", torch::adaptive_avg_pool2d(last, {1, 1})}};
}

ResNetForImageClassification::ResNetForImageClassification(const ResNetConfig& config) : ResNetModuleBase(config) {
  resnet = std::make_unique<ResNetBody>(config, *layers::add_container(*this, "resnet"));
  if (config.head.num_labels() > 0) {
    classifier = layers::add_container(*this, "classifier")
                     ->register_module("1", layers::Linear(config.hidden_sizes.back(), config.head.num_labels()));
  }
}

ModelOutputs ResNetForImageClassification::forward(const ModelInputs& inputs) {
  auto pooled = torch::adaptive_avg_pool2d(resnet->forward(inputs.pixel_values).back(), {1, 1}).flatten(1);
  auto logits = classifier ? classifier(pooled) : pooled;
  return classification_outputs(logits, inputs.labels, config.head.problem_type);
}

ResNetBackbone::ResNetBackbone(const ResNetConfig& config) : ResNetModuleBase(config) {
  body = std::make_unique<ResNetBody>(config, *this);
}

std::vector<torch::Tensor> ResNetBackbone::feature_maps(const torch::Tensor& pixel_values) {
  auto hidden_states = body->forward(pixel_values);
  std::vector<torch::Tensor> maps;
  for (size_t i = 0; i < config.stage_names.size(); ++i) {
    const auto& name = config.stage_names[i];
    if (std::find(config.out_features.begin(), config.out_features.end(), name) != config.out_features.end()) {
      maps.push_back(hidden_states[i]);
    }
  }
  return maps;
}

std::vector<int64_t> ResNetBackbone::channels() const {
  std::vector<int64_t> result;
  for (size_t i = 0; i < config.stage_names.size(); ++i) {
    const auto& name = config.stage_names[i];
    if (std::find(config.out_features.begin(), config.out_features.end(), name) == config.out_features.end()) continue;
    result.push_back(i == 0 ? config.embedding_size : config.hidden_sizes[i - 1]);
  }
  return result;
}

ModelOutputs ResNetBackbone::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "ResNetBackbone has no task head, so it takes no labels");
  auto maps = feature_maps(inputs.pixel_values);
  ModelOutputs outputs;
  size_t next = 0;
  for (const auto& name : config.stage_names) {
    if (std::find(config.out_features.begin(), config.out_features.end(), name) != config.out_features.end()) {
      outputs.emplace_back("feature_maps." + name, maps[next++]);
    }
  }
  return outputs;
}

}  // namespace vt::resnet
