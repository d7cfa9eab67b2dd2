#include "models/vit.h"

#include <cmath>

#include "common/error.h"
#include "common/json_config.h"
#include "losses/classification.h"

namespace vt::vit {

ViTConfig ViTConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  ViTConfig config;
  config.hidden_size = fields.get_positive_int("hidden_size", config.hidden_size);
  config.num_hidden_layers = fields.get_non_negative_int("num_hidden_layers", config.num_hidden_layers);
  config.num_attention_heads = fields.get_positive_int("num_attention_heads", config.num_attention_heads);
  config.intermediate_size = fields.get_positive_int("intermediate_size", config.intermediate_size);
  config.hidden_act = fields.get_string("hidden_act", config.hidden_act);
  layers::activation(config.hidden_act);  // rejects unknown names now, not at the first forward
  config.hidden_dropout_prob = fields.get_probability("hidden_dropout_prob", 0.0);
  config.attention_probs_dropout_prob = fields.get_probability("attention_probs_dropout_prob", 0.0);
  config.layer_norm_eps = fields.get_positive_number("layer_norm_eps", config.layer_norm_eps);
  std::tie(config.image_height, config.image_width) = fields.get_size_pair("image_size", 224);
  std::tie(config.patch_height, config.patch_width) = fields.get_size_pair("patch_size", 16);
  config.num_channels = fields.get_positive_int("num_channels", config.num_channels);
  config.qkv_bias = fields.get_bool("qkv_bias", config.qkv_bias);
  config.head = HeadConfig::from_json(json, source);
  if (config.hidden_size % config.num_attention_heads != 0) {
    fail(source, ": hidden_size (", config.hidden_size, ") is not a multiple of num_attention_heads (", config.num_attention_heads, ")");
  }
  if (config.patch_height > config.image_height || config.patch_width > config.image_width) {
    fail(source, ": patch_size (", config.patch_height, "x", config.patch_width, ") is larger than image_size (", config.image_height, "x",
         config.image_width, ")");
  }
  // The patch count sizes the position embeddings: bounded before it can wrap around.
  constexpr int64_t kMaxPatches = int64_t{1} << 31;
  if (config.grid_height() > kMaxPatches / config.grid_width()) {
    fail(source, ": image_size (", config.image_height, "x", config.image_width, ") makes more than 2^31 patches of ", config.patch_height,
         "x", config.patch_width);
  }
  return config;
}

ViTEmbeddingsImpl::ViTEmbeddingsImpl(const ViTConfig& config) : config(config) {
  cls_token = register_parameter("cls_token", torch::randn({1, 1, config.hidden_size}));
  auto patch_embeddings = layers::add_container(*this, "patch_embeddings");
  projection = patch_embeddings->register_module(
      "projection",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(config.num_channels, config.hidden_size, {config.patch_height, config.patch_width})
                            .stride({config.patch_height, config.patch_width})));
  position_embeddings = register_parameter("position_embeddings", torch::randn({1, config.num_patches() + 1, config.hidden_size}));
}

torch::Tensor ViTEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  check_pixel_values(pixel_values, config.num_channels);
  const int64_t batch = pixel_values.size(0);
  VT_CHECK(pixel_values.size(2) == config.image_height && pixel_values.size(3) == config.image_width, "pixel_values: input image size (",
           pixel_values.size(2), "*", pixel_values.size(3), ") doesn't match model (", config.image_height, "*", config.image_width, ")");
  // The convolution's kernel equals its stride: the same as a linear layer over the flattened
  // patches, whose backward (the weights' gradient) is many times cheaper than a convolution's.
  const int64_t grid_height = config.grid_height(), grid_width = config.grid_width();
  auto flattened = pixel_values.to(projection->weight.scalar_type())
                       .slice(2, 0, grid_height * config.patch_height)
                       .slice(3, 0, grid_width * config.patch_width)
                       .reshape({batch, config.num_channels, grid_height, config.patch_height, grid_width, config.patch_width})
                       .permute({0, 2, 4, 1, 3, 5})
                       .reshape({batch, grid_height * grid_width, -1});
  auto patches = layers::linear(flattened, projection->weight.flatten(1), projection->bias);
  auto cls = cls_token.expand({batch, -1, -1});
  auto embeddings = torch::cat({cls, patches}, 1) + position_embeddings;
  return torch::dropout(embeddings, config.hidden_dropout_prob, is_training());
}

ViTLayerImpl::ViTLayerImpl(const ViTConfig& config) : config(config) {
  layers::activation(config.hidden_act);  // an unknown name fails here, at construction
  const int64_t hidden = config.hidden_size;
  auto attention = layers::add_container(*this, "attention");
  auto self_attention = layers::add_container(*attention, "attention");
  query = self_attention->register_module("query", layers::Linear(hidden, hidden, config.qkv_bias));
  key = self_attention->register_module("key", layers::Linear(hidden, hidden, config.qkv_bias));
  value = self_attention->register_module("value", layers::Linear(hidden, hidden, config.qkv_bias));
  attention_output = layers::add_container(*attention, "output")->register_module("dense", layers::Linear(hidden, hidden));
  intermediate = layers::add_container(*this, "intermediate")->register_module("dense", layers::Linear(hidden, config.intermediate_size));
  output = layers::add_container(*this, "output")->register_module("dense", layers::Linear(config.intermediate_size, hidden));
  layernorm_before = register_module("layernorm_before", layers::LayerNorm(hidden, config.layer_norm_eps));
  layernorm_after = register_module("layernorm_after", layers::LayerNorm(hidden, config.layer_norm_eps));
}

torch::Tensor ViTLayerImpl::forward(const torch::Tensor& hidden_states) {
  const int64_t batch = hidden_states.size(0), tokens = hidden_states.size(1);
  const int64_t heads = config.num_attention_heads, head_dim = config.hidden_size / heads;
  const bool training = is_training();
  auto split_heads = [&](const torch::Tensor& x) { return x.view({batch, tokens, heads, head_dim}).transpose(1, 2); };

  auto normed = layernorm_before(hidden_states);
  auto context = layers::scaled_dot_product_attention(split_heads(query(normed)), split_heads(key(normed)), split_heads(value(normed)), {},
                                                      config.attention_probs_dropout_prob, training);
  context = context.transpose(1, 2).reshape({batch, tokens, config.hidden_size});
  const bool drops = training && config.hidden_dropout_prob > 0.0;
  auto attended = drops ? torch::dropout(attention_output(context), config.hidden_dropout_prob, training) + hidden_states
                        : attention_output->forward_add(context, hidden_states);

  auto mlp = intermediate->forward_then(layernorm_after(attended), config.hidden_act);
  return drops ? torch::dropout(output(mlp), config.hidden_dropout_prob, training) + attended : output->forward_add(mlp, attended);
}

ViTBody::ViTBody(const ViTConfig& config, torch::nn::Module& owner, bool add_pooling_layer) : config(config) {
  embeddings = owner.register_module("embeddings", ViTEmbeddings(config));
  auto encoder_layers = layers::add_container(*layers::add_container(owner, "encoder"), "layer");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    layers.push_back(encoder_layers->register_module(std::to_string(i), ViTLayer(config)));
  }
  layernorm = owner.register_module("layernorm", layers::LayerNorm(config.hidden_size, config.layer_norm_eps));
  if (add_pooling_layer) {
    pooler = layers::add_container(owner, "pooler")->register_module("dense", layers::Linear(config.hidden_size, config.hidden_size));
  }
}

std::pair<torch::Tensor, torch::Tensor> ViTBody::forward(const torch::Tensor& pixel_values, bool checkpoint_layers) {
  auto hidden = embeddings(pixel_values);
  for (auto& layer : layers) {
    if (checkpoint_layers && layer->is_training()) {
      hidden = layers::checkpoint([layer](const torch::Tensor& x) mutable { return layer->forward(x); }, hidden);
    } else {
      hidden = layer(hidden);
    }
  }
  auto sequence_output = layernorm(hidden);
  torch::Tensor pooled;
  if (pooler) pooled = torch::tanh(pooler(sequence_output.select(1, 0)));
  return {sequence_output, pooled};
}

void ViTModuleBase::init_module(const std::string& name, torch::nn::Module& module) {
  const double std = config.head.initializer_range;
  if (auto* linear = dynamic_cast<layers::LinearImpl*>(&module)) {
    linear->reset_parameters(std);
  } else if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(&module)) {
    layers::trunc_normal_(conv->weight, 0.0, std);
    if (conv->bias.defined()) {
      torch::NoGradGuard no_grad;
      conv->bias.zero_();
    }
  } else if (auto* norm = dynamic_cast<layers::LayerNormImpl*>(&module)) {
    norm->reset_parameters();
  } else if (auto* embeddings = dynamic_cast<ViTEmbeddingsImpl*>(&module)) {
    layers::trunc_normal_(embeddings->position_embeddings, 0.0, std);
    layers::trunc_normal_(embeddings->cls_token, 0.0, std);
  }
}

bool ViTModuleBase::adapt_checkpoint_tensor(const std::string& key, torch::Tensor& tensor, torch::IntArrayRef target_shape) {
  // Position embeddings of a checkpoint trained at another image size: resample the patch grid
  // bicubically (as transformers' interpolate_pos_encoding does), keep the class token's.
  const std::string suffix = "embeddings.position_embeddings";
  if (key.size() < suffix.size() || key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  if (tensor.dim() != 3 || target_shape.size() != 3 || tensor.size(2) != target_shape[2]) return false;
  const int64_t source_patches = tensor.size(1) - 1;
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(source_patches))));
  if (side * side != source_patches || target_shape[1] - 1 != config.num_patches()) return false;
  auto grid = tensor.slice(1, 1).reshape({1, side, side, tensor.size(2)}).permute({0, 3, 1, 2}).to(torch::kFloat32);
  auto resized = torch::nn::functional::interpolate(grid, torch::nn::functional::InterpolateFuncOptions()
                                                              .size(std::vector<int64_t>{config.grid_height(), config.grid_width()})
                                                              .mode(torch::kBicubic)
                                                              .align_corners(false));
  resized = resized.permute({0, 2, 3, 1}).reshape({1, config.num_patches(), tensor.size(2)});
  tensor = torch::cat({tensor.slice(1, 0, 1).to(torch::kFloat32), resized}, 1).to(tensor.scalar_type());
  return true;
}

ViTModel::ViTModel(const ViTConfig& config, bool add_pooling_layer) : ViTModuleBase(config) {
  body = std::make_unique<ViTBody>(config, *this, add_pooling_layer);
}

ModelOutputs ViTModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "ViTModel has no task head, so it takes no labels");
  auto [sequence_output, pooled] = body->forward(inputs.pixel_values, gradient_checkpointing());
  ModelOutputs outputs{{"last_hidden_state", sequence_output}};
  if (pooled.defined()) outputs.emplace_back("pooler_output", pooled);
  return outputs;
}

bool ViTModel::is_head_key(const std::string& key) const { return key.rfind("pooler.", 0) == 0; }

ViTForImageClassification::ViTForImageClassification(const ViTConfig& config) : ViTModuleBase(config) {
  vit = std::make_unique<ViTBody>(config, *layers::add_container(*this, "vit"), /*add_pooling_layer=*/false);
  if (config.head.num_labels() > 0) {
    classifier = register_module("classifier", layers::Linear(config.hidden_size, config.head.num_labels()));
  }
}

ModelOutputs ViTForImageClassification::forward(const ModelInputs& inputs) {
  auto [sequence_output, pooled] = vit->forward(inputs.pixel_values, gradient_checkpointing());
  auto cls = sequence_output.select(1, 0);
  auto logits = classifier ? classifier(cls) : cls;
  return classification_outputs(logits, inputs.labels, config.head.problem_type);
}

bool ViTForImageClassification::is_head_key(const std::string& key) const { return key.rfind("classifier.", 0) == 0; }

}  // namespace vt::vit
