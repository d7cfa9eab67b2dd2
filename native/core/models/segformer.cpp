#include "models/segformer.h"

#include <cmath>

#include "common/error.h"
#include "common/json_config.h"
#include "losses/semantic_segmentation.h"

namespace vt::segformer {

SegformerConfig SegformerConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  SegformerConfig c;
  c.num_channels = fields.get_positive_int("num_channels", c.num_channels);
  c.num_encoder_blocks = fields.get_positive_int("num_encoder_blocks", c.num_encoder_blocks);
  c.depths = fields.get_positive_ints("depths", c.depths);
  c.sr_ratios = fields.get_positive_ints("sr_ratios", c.sr_ratios);
  c.hidden_sizes = fields.get_positive_ints("hidden_sizes", c.hidden_sizes);
  c.patch_sizes = fields.get_positive_ints("patch_sizes", c.patch_sizes);
  c.strides = fields.get_positive_ints("strides", c.strides);
  c.num_attention_heads = fields.get_positive_ints("num_attention_heads", c.num_attention_heads);
  c.mlp_ratios = fields.get_positive_ints("mlp_ratios", c.mlp_ratios);
  c.hidden_act = fields.get_string("hidden_act", c.hidden_act);
  layers::activation(c.hidden_act);
  c.hidden_dropout_prob = fields.get_probability("hidden_dropout_prob", 0.0);
  c.attention_probs_dropout_prob = fields.get_probability("attention_probs_dropout_prob", 0.0);
  c.classifier_dropout_prob = fields.get_probability("classifier_dropout_prob", c.classifier_dropout_prob);
  c.drop_path_rate = fields.get_probability("drop_path_rate", c.drop_path_rate);
  c.decoder_hidden_size = fields.get_positive_int("decoder_hidden_size", c.decoder_hidden_size);
  c.reshape_last_stage = fields.get_bool("reshape_last_stage", true);
  c.semantic_loss_ignore_index = fields.get_int("semantic_loss_ignore_index", 255);
  c.head = HeadConfig::from_json(json, source);
  const auto n = static_cast<size_t>(c.num_encoder_blocks);
  for (const auto& [name, values] : {std::pair<const char*, const std::vector<int64_t>*>{"depths", &c.depths},
                                     {"sr_ratios", &c.sr_ratios},
                                     {"hidden_sizes", &c.hidden_sizes},
                                     {"patch_sizes", &c.patch_sizes},
                                     {"strides", &c.strides},
                                     {"num_attention_heads", &c.num_attention_heads},
                                     {"mlp_ratios", &c.mlp_ratios}}) {
    VT_CHECK(values->size() >= n, source, ": ", name, " has ", values->size(), " entries but num_encoder_blocks is ", n);
  }
  for (size_t i = 0; i < n; ++i) {
    VT_CHECK(c.hidden_sizes[i] % c.num_attention_heads[i] == 0, source, ": hidden_sizes[", i, "] (", c.hidden_sizes[i],
             ") is not a multiple of num_attention_heads[", i, "] (", c.num_attention_heads[i], ")");
  }
  return c;
}

MixLayerImpl::MixLayerImpl(const SegformerConfig& config, int64_t hidden, int64_t heads, int64_t sr_ratio, int64_t mlp_ratio,
                           double drop_path)
    : config(config),
      hidden_size(hidden),
      heads(heads),
      sr_ratio(sr_ratio),
      drop_path(drop_path),
      act(layers::activation(config.hidden_act)) {
  layer_norm_1 = register_module("layer_norm_1", layers::LayerNorm(hidden, 1e-5));
  auto attention = layers::add_container(*this, "attention");
  auto self = layers::add_container(*attention, "self");
  query = self->register_module("query", layers::Linear(hidden, hidden));
  key = self->register_module("key", layers::Linear(hidden, hidden));
  value = self->register_module("value", layers::Linear(hidden, hidden));
  if (sr_ratio > 1) {
    sr = self->register_module("sr", torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden, hidden, sr_ratio).stride(sr_ratio)));
    sr_norm = self->register_module("layer_norm", layers::LayerNorm(hidden, 1e-5));
  }
  attention_output = layers::add_container(*attention, "output")->register_module("dense", layers::Linear(hidden, hidden));
  layer_norm_2 = register_module("layer_norm_2", layers::LayerNorm(hidden, 1e-5));
  auto mlp = layers::add_container(*this, "mlp");
  const int64_t inner = hidden * mlp_ratio;
  dense1 = mlp->register_module("dense1", layers::Linear(hidden, inner));
  dwconv = layers::add_container(*mlp, "dwconv")
               ->register_module("dwconv", torch::nn::Conv2d(torch::nn::Conv2dOptions(inner, inner, 3).padding(1).groups(inner)));
  dense2 = mlp->register_module("dense2", layers::Linear(inner, hidden));
}

namespace {

// Tokens [batch, height * width, channels] as the image [batch, channels, height, width] they
// are, channels-last in memory, no copy. Made by permuting [batch, height, width, channels], so
// that the strides read as channels-last even for a single image (libtorch 1.13 took a
// transposed token view with batch 1 for a plain layout: its convolutions copied it, and its
// bilinear resize went through a strided path 8x slower).
torch::Tensor channels_last_grid(const torch::Tensor& tokens, int64_t height, int64_t width) {
  return tokens.reshape({tokens.size(0), height, width, tokens.size(2)}).permute({0, 3, 1, 2});
}

}  // namespace

torch::Tensor MixLayerImpl::forward(const torch::Tensor& input, int64_t height, int64_t width) {
  const bool training = is_training();
  const int64_t batch = input.size(0), tokens = input.size(1), head_dim = hidden_size / heads;
  auto split = [&](const torch::Tensor& x) { return x.view({batch, -1, heads, head_dim}).transpose(1, 2); };

  // Efficient self-attention: keys and values from a sequence shortened by sr_ratio^2.
  auto normed = layer_norm_1(input);
  auto reduced = normed;
  if (sr) {
    auto grid = channels_last_grid(normed, height, width);
    reduced = sr_norm(layers::conv2d(sr, grid).reshape({batch, hidden_size, -1}).permute({0, 2, 1}));
  }
  auto context = layers::scaled_dot_product_attention(split(query(normed)), split(key(reduced)), split(value(reduced)), {},
                                                      config.attention_probs_dropout_prob, training);
  context = context.transpose(1, 2).reshape({batch, tokens, hidden_size});
  auto attended = torch::dropout(attention_output(context), config.hidden_dropout_prob, training);
  auto hidden = layers::drop_path(attended, drop_path, training) + input;

  // Mix-FFN: the depthwise 3x3 convolution gives the MLP its positional information.
  auto mlp = dense1(layer_norm_2(hidden));
  mlp = layers::conv2d(dwconv, channels_last_grid(mlp, height, width)).flatten(2).transpose(1, 2);
  mlp = torch::dropout(act(mlp), config.hidden_dropout_prob, training);
  mlp = torch::dropout(dense2(mlp), config.hidden_dropout_prob, training);
  return layers::drop_path(mlp, drop_path, training) + hidden;
}

MixTransformer::MixTransformer(const SegformerConfig& config, torch::nn::Module& owner) : config(config) {
  auto encoder = layers::add_container(owner, "encoder");
  auto embeddings = layers::add_container(*encoder, "patch_embeddings");
  auto block_list = layers::add_container(*encoder, "block");
  auto norm_list = layers::add_container(*encoder, "layer_norm");
  int64_t total_depth = 0;
  for (int64_t i = 0; i < config.num_encoder_blocks; ++i) total_depth += config.depths[static_cast<size_t>(i)];
  int64_t index = 0;
  for (size_t i = 0; i < static_cast<size_t>(config.num_encoder_blocks); ++i) {
    const int64_t in_channels = i == 0 ? config.num_channels : config.hidden_sizes[i - 1];
    auto embedding = layers::add_container(*embeddings, std::to_string(i));
    patch_projections.push_back(embedding->register_module(
        "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, config.hidden_sizes[i], config.patch_sizes[i])
                                      .stride(config.strides[i])
                                      .padding(config.patch_sizes[i] / 2))));
    patch_norms.push_back(embedding->register_module("layer_norm", layers::LayerNorm(config.hidden_sizes[i], 1e-5)));
    auto stage = layers::add_container(*block_list, std::to_string(i));
    std::vector<MixLayer> layers_of_stage;
    for (int64_t j = 0; j < config.depths[i]; ++j, ++index) {
      // torch.linspace(0, drop_path_rate, sum(depths))
      const double rate = total_depth > 1 ? config.drop_path_rate * static_cast<double>(index) / static_cast<double>(total_depth - 1) : 0.0;
      layers_of_stage.push_back(stage->register_module(
          std::to_string(j),
          MixLayer(this->config, config.hidden_sizes[i], config.num_attention_heads[i], config.sr_ratios[i], config.mlp_ratios[i], rate)));
    }
    blocks.push_back(std::move(layers_of_stage));
    // transformers builds every LayerNorm of SegFormer with PyTorch's default eps; config.layer_norm_eps goes unused.
    stage_norms.push_back(norm_list->register_module(std::to_string(i), layers::LayerNorm(config.hidden_sizes[i], 1e-5)));
  }
}

std::vector<torch::Tensor> MixTransformer::forward(const torch::Tensor& pixel_values) {
  check_pixel_values(pixel_values, config.num_channels);
  std::vector<torch::Tensor> states;
  auto hidden = pixel_values.to(patch_projections.front()->weight.scalar_type());
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto projected = layers::conv2d(patch_projections[i], hidden);
    const int64_t height = projected.size(2), width = projected.size(3);
    auto tokens = patch_norms[i](projected.flatten(2).transpose(1, 2));
    for (auto& layer : blocks[i]) tokens = layer->forward(tokens, height, width);
    tokens = stage_norms[i](tokens);
    const bool last = i + 1 == blocks.size();
    hidden = !last || config.reshape_last_stage ? channels_last_grid(tokens, height, width) : tokens;
    states.push_back(hidden);
  }
  return states;
}

void SegformerModuleBase::init_module(const std::string& name, torch::nn::Module& module) {
  layers::init_normal(module, config.head.initializer_range);
}

SegformerModel::SegformerModel(const SegformerConfig& config) : SegformerModuleBase(config) {
  encoder = std::make_unique<MixTransformer>(config, *this);
}

ModelOutputs SegformerModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "SegformerModel has no task head, so it takes no labels");
  return {{"last_hidden_state", encoder->forward(inputs.pixel_values).back()}};
}

SegformerForSemanticSegmentation::SegformerForSemanticSegmentation(const SegformerConfig& config) : SegformerModuleBase(config) {
  segformer = std::make_unique<MixTransformer>(config, *layers::add_container(*this, "segformer"));
  auto head = layers::add_container(*this, "decode_head");
  auto mlps = layers::add_container(*head, "linear_c");
  for (int64_t i = 0; i < config.num_encoder_blocks; ++i) {
    linear_c.push_back(
        layers::add_container(*mlps, std::to_string(i))
            ->register_module("proj", layers::Linear(config.hidden_sizes[static_cast<size_t>(i)], config.decoder_hidden_size)));
  }
  linear_fuse = head->register_module(
      "linear_fuse",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(config.decoder_hidden_size * config.num_encoder_blocks, config.decoder_hidden_size, 1).bias(false)));
  batch_norm = head->register_module("batch_norm", torch::nn::BatchNorm2d(config.decoder_hidden_size));
  VT_CHECK(config.head.num_labels() > 0, "SegformerForSemanticSegmentation needs at least one label");
  classifier = head->register_module("classifier",
                                     torch::nn::Conv2d(torch::nn::Conv2dOptions(config.decoder_hidden_size, config.head.num_labels(), 1)));
}

ModelOutputs SegformerForSemanticSegmentation::forward(const ModelInputs& inputs) {
  VT_CHECK(inputs.targets.empty(), "labels: semantic segmentation takes a label map tensor [batch, height, width]");
  auto states = segformer->forward(inputs.pixel_values);
  const auto target_size = std::vector<int64_t>{states.front().size(2), states.front().size(3)};
  // The all-MLP head: every stage projected to decoder_hidden_size and upsampled to the first
  // stage's resolution, concatenated deepest first.
  std::vector<torch::Tensor> projected;
  for (size_t i = 0; i < states.size(); ++i) {
    const auto& state = states[i];
    // [B, C, H, W], or [B, HW, C] for the last stage without reshape_last_stage (square)
    const bool flat = state.dim() == 3;
    const int64_t height = flat ? std::llround(std::sqrt(static_cast<double>(state.size(1)))) : state.size(2);
    const int64_t width = flat ? height : state.size(3);
    auto tokens = linear_c[i](flat ? state : state.flatten(2).transpose(1, 2));
    // At the target size, bilinear resizing (half-pixel centres) is the identity.
    auto grid = channels_last_grid(tokens, height, width);
    projected.push_back(
        height == target_size[0] && width == target_size[1]
            ? grid
            : torch::nn::functional::interpolate(
                  grid, torch::nn::functional::InterpolateFuncOptions().size(target_size).mode(torch::kBilinear).align_corners(false)));
  }
  std::reverse(projected.begin(), projected.end());
  auto hidden = torch::relu(layers::batch_norm(batch_norm, layers::conv2d(linear_fuse, torch::cat(projected, 1))));
  hidden = torch::dropout(hidden, config.classifier_dropout_prob, is_training());
  auto logits = layers::conv2d(classifier, hidden);
  ModelOutputs outputs;
  if (inputs.labels.defined()) {
    outputs.emplace_back("loss", losses::semantic_segmentation_loss(logits, inputs.labels, config.semantic_loss_ignore_index));
  }
  outputs.emplace_back("logits", logits);
  return outputs;
}

}  // namespace vt::segformer
