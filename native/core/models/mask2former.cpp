#include "models/mask2former.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "common/error.h"
#include "common/json_config.h"

namespace vt::mask2former {

namespace F = torch::nn::functional;

namespace {

// Mask2FormerConfig's default backbone when config.json has none.
nlohmann::json default_backbone_config() {
  return {{"model_type", "swin"},
          {"image_size", 224},
          {"num_channels", 3},
          {"patch_size", 4},
          {"embed_dim", 96},
          {"depths", {2, 2, 18, 2}},
          {"num_heads", {3, 6, 12, 24}},
          {"window_size", 7},
          {"drop_path_rate", 0.3},
          {"use_absolute_embeddings", false},
          {"out_features", {"stage1", "stage2", "stage3", "stage4"}}};
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

torch::Tensor bilinear_resize(const torch::Tensor& input, int64_t height, int64_t width) {
  return F::interpolate(input,
                        F::InterpolateFuncOptions().size(std::vector<int64_t>{height, width}).mode(torch::kBilinear).align_corners(false));
}

}  // namespace

Mask2FormerConfig Mask2FormerConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  Mask2FormerConfig config;
  nlohmann::json backbone = fields.has("backbone_config") ? json.at("backbone_config") : default_backbone_config();
  if (!backbone.is_object()) fields.fail_field("backbone_config", "an object (a Swin configuration)");
  const std::string backbone_type = backbone.value("model_type", "swin");
  VT_CHECK(backbone_type == "swin", source, ": backbone_config.model_type \"", backbone_type, "\" is not supported (swin)");
  config.backbone_config = swin::SwinConfig::from_json(backbone, source + " backbone_config");

  config.feature_size = fields.get_positive_int("feature_size", config.feature_size);
  config.mask_feature_size = fields.get_positive_int("mask_feature_size", config.mask_feature_size);
  config.hidden_dim = fields.get_positive_int("hidden_dim", config.hidden_dim);
  config.encoder_feedforward_dim = fields.get_positive_int("encoder_feedforward_dim", config.encoder_feedforward_dim);
  config.activation_function = fields.get_string("activation_function", config.activation_function);
  try {
    layers::activation(config.activation_function);
  } catch (const Error&) {
    fields.fail_field("activation_function", "an activation name (relu, gelu, ...)");
  }
  config.encoder_layers = fields.get_non_negative_int("encoder_layers", config.encoder_layers);
  config.decoder_layers = fields.get_positive_int("decoder_layers", config.decoder_layers);
  config.num_attention_heads = fields.get_positive_int("num_attention_heads", config.num_attention_heads);
  config.dropout = fields.get_probability("dropout", config.dropout);
  config.dim_feedforward = fields.get_positive_int("dim_feedforward", config.dim_feedforward);
  config.pre_norm = fields.get_bool("pre_norm", config.pre_norm);
  config.enforce_input_projection = fields.get_bool("enforce_input_projection", config.enforce_input_projection);
  config.common_stride = fields.get_positive_int("common_stride", config.common_stride);
  config.ignore_value = fields.get_int("ignore_value", config.ignore_value);
  config.num_queries = fields.get_positive_int("num_queries", config.num_queries);
  config.feature_strides = fields.get_positive_ints("feature_strides", config.feature_strides);
  config.init_std = fields.get_number("init_std", config.init_std);
  config.init_xavier_std = fields.get_number("init_xavier_std", config.init_xavier_std);
  auto& loss = config.loss;
  loss.no_object_weight = fields.get_number("no_object_weight", loss.no_object_weight);
  loss.class_weight = fields.get_number("class_weight", loss.class_weight);
  loss.mask_weight = fields.get_number("mask_weight", loss.mask_weight);
  loss.dice_weight = fields.get_number("dice_weight", loss.dice_weight);
  loss.train_num_points = fields.get_positive_int("train_num_points", loss.train_num_points);
  loss.oversample_ratio = fields.get_positive_number("oversample_ratio", loss.oversample_ratio);
  loss.importance_sample_ratio = fields.get_probability("importance_sample_ratio", loss.importance_sample_ratio);
  loss.use_auxiliary_loss = fields.get_bool("use_auxiliary_loss", loss.use_auxiliary_loss);
  config.head = HeadConfig::from_json(json, source);

  // What transformers would fail on, said up front.
  const auto features = static_cast<int64_t>(config.backbone_config.out_features.size());
  VT_CHECK(features >= kFeatureLevels, source, ": the backbone must give at least ", kFeatureLevels,
           " feature maps (backbone_config.out_features), got ", features);
  VT_CHECK(static_cast<int64_t>(config.feature_strides.size()) == features, source, ": feature_strides has ", config.feature_strides.size(),
           " entries for ", features, " backbone feature maps");
  VT_CHECK(config.feature_size % 32 == 0, source, ": feature_size must be a multiple of 32 (GroupNorm with 32 groups), got ",
           config.feature_size);
  VT_CHECK(config.feature_size % config.num_attention_heads == 0 && config.hidden_dim % config.num_attention_heads == 0, source,
           ": feature_size (", config.feature_size, ") and hidden_dim (", config.hidden_dim, ") must be multiples of num_attention_heads (",
           config.num_attention_heads, ")");
  VT_CHECK(config.hidden_dim % 2 == 0, source, ": hidden_dim must be even (sine position embeddings), got ", config.hidden_dim);
  VT_CHECK(loss.oversample_ratio >= 1.0, source, ": oversample_ratio must be at least 1, got ", loss.oversample_ratio);
  VT_CHECK(loss.class_weight != 0 || loss.mask_weight != 0 || loss.dice_weight != 0, source,
           ": class_weight, mask_weight and dice_weight cannot all be 0");
  const int64_t smallest_stride = *std::min_element(config.feature_strides.end() - kFeatureLevels, config.feature_strides.end());
  const double fpn_levels = std::log2(static_cast<double>(smallest_stride)) - std::log2(static_cast<double>(config.common_stride));
  if (fpn_levels < 0 || fpn_levels > static_cast<double>(features)) {
    fields.fail_field("common_stride", "at most the smallest of the last three feature_strides, and a power-of-2 fraction of it");
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Pixel decoder

torch::Tensor sine_position_embedding(const torch::Tensor& like, int64_t num_pos_feats) {
  const double scale = 2 * M_PI;
  auto options = like.options().dtype(torch::kFloat32);
  auto not_mask = torch::ones({like.size(0), like.size(2), like.size(3)}, options);
  auto y_embed = not_mask.cumsum(1);
  auto x_embed = not_mask.cumsum(2);
  y_embed = y_embed / (y_embed.slice(1, -1) + 1e-6) * scale;
  x_embed = x_embed / (x_embed.slice(2, -1) + 1e-6) * scale;
  auto dim_t = torch::arange(num_pos_feats, options);
  dim_t = torch::pow(10000.0, 2 * torch::div(dim_t, 2, "floor") / static_cast<double>(num_pos_feats));
  using torch::indexing::None;
  using torch::indexing::Slice;
  auto interleave = [&](const torch::Tensor& embed) {
    auto pos = embed.unsqueeze(-1) / dim_t;
    return torch::stack({pos.index({"...", Slice(0, None, 2)}).sin(), pos.index({"...", Slice(1, None, 2)}).cos()}, 4).flatten(3);
  };
  return torch::cat({interleave(y_embed), interleave(x_embed)}, 3).permute({0, 3, 1, 2}).to(like.scalar_type());
}

torch::Tensor multi_scale_deformable_attention(const torch::Tensor& value, const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes,
                                               const torch::Tensor& sampling_locations, const torch::Tensor& attention_weights) {
  const int64_t batch = value.size(0), heads = value.size(2), head_dim = value.size(3);
  const int64_t queries = sampling_locations.size(1), levels = sampling_locations.size(3), points = sampling_locations.size(4);
  std::vector<int64_t> sizes;
  for (const auto& [h, w] : spatial_shapes) sizes.push_back(h * w);
  auto value_list = value.split_with_sizes(sizes, 1);
  auto grids = 2 * sampling_locations - 1;
  std::vector<torch::Tensor> sampled;
  for (int64_t level = 0; level < levels; ++level) {
    const auto [height, width] = spatial_shapes[static_cast<size_t>(level)];
    // [B, h*w, heads, head_dim] -> [B * heads, head_dim, h, w]
    auto level_value = value_list[static_cast<size_t>(level)].flatten(2).transpose(1, 2).reshape({batch * heads, head_dim, height, width});
    // [B, Q, heads, points, 2] -> [B * heads, Q, points, 2]
    auto level_grid = grids.select(3, level).transpose(1, 2).flatten(0, 1);
    sampled.push_back(F::grid_sample(level_value, level_grid,
                                     F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros).align_corners(false)));
  }
  auto weights = attention_weights.transpose(1, 2).reshape({batch * heads, 1, queries, levels * points});
  auto output = (torch::stack(sampled, -2).flatten(-2) * weights).sum(-1).view({batch, heads * head_dim, queries});
  return output.transpose(1, 2).contiguous();
}

MultiscaleDeformableAttentionImpl::MultiscaleDeformableAttentionImpl(int64_t embed_dim, int64_t num_heads, int64_t n_levels,
                                                                     int64_t n_points)
    : embed_dim(embed_dim), num_heads(num_heads), n_levels(n_levels), n_points(n_points) {
  sampling_offsets = register_module("sampling_offsets", layers::Linear(embed_dim, num_heads * n_levels * n_points * 2));
  attention_weights = register_module("attention_weights", layers::Linear(embed_dim, num_heads * n_levels * n_points));
  value_proj = register_module("value_proj", layers::Linear(embed_dim, embed_dim));
  output_proj = register_module("output_proj", layers::Linear(embed_dim, embed_dim));
}

torch::Tensor MultiscaleDeformableAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& position,
                                                         const torch::Tensor& reference_points,
                                                         const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes) {
  const int64_t batch = hidden.size(0), length = hidden.size(1);
  auto query = hidden + position;
  // No padding mask: transformers' Mask2Former never pads its feature maps.
  auto value = value_proj(hidden).view({batch, length, num_heads, embed_dim / num_heads});
  auto offsets = sampling_offsets(query).view({batch, length, num_heads, n_levels, n_points, 2});
  auto weights = torch::softmax(attention_weights(query).view({batch, length, num_heads, n_levels * n_points}), -1)
                     .view({batch, length, num_heads, n_levels, n_points});
  std::vector<float> normalizer;  // (width, height) per level
  for (const auto& [h, w] : spatial_shapes) {
    normalizer.push_back(static_cast<float>(w));
    normalizer.push_back(static_cast<float>(h));
  }
  auto offset_normalizer = torch::tensor(normalizer, hidden.options().dtype(torch::kFloat32)).view({1, 1, 1, n_levels, 1, 2});
  using torch::indexing::None;
  using torch::indexing::Slice;
  auto locations =
      reference_points.index({Slice(), Slice(), None, Slice(), None, Slice()}) + offsets / offset_normalizer.to(offsets.scalar_type());
  return output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights));
}

PixelDecoderEncoderLayerImpl::PixelDecoderEncoderLayerImpl(const Mask2FormerConfig& config) : dropout(config.dropout) {
  const int64_t dim = config.feature_size;
  self_attn = register_module("self_attn", MultiscaleDeformableAttention(dim, config.num_attention_heads, kFeatureLevels, kSamplingPoints));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layers::LayerNorm(dim, 1e-5));
  fc1 = register_module("fc1", layers::Linear(dim, config.encoder_feedforward_dim));
  fc2 = register_module("fc2", layers::Linear(config.encoder_feedforward_dim, dim));
  final_layer_norm = register_module("final_layer_norm", layers::LayerNorm(dim, 1e-5));
}

torch::Tensor PixelDecoderEncoderLayerImpl::forward(const torch::Tensor& input, const torch::Tensor& position,
                                                    const torch::Tensor& reference_points,
                                                    const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes) {
  const bool training = is_training();
  auto attended = self_attn->forward(input, position, reference_points, spatial_shapes);
  auto hidden = self_attn_layer_norm(input + torch::dropout(attended, dropout, training));
  auto residual = hidden;
  // The pixel decoder's activation is ReLU whatever activation_function says, as transformers.
  hidden = torch::dropout(torch::relu(fc1(hidden)), dropout, training);
  hidden = final_layer_norm(residual + torch::dropout(fc2(hidden), dropout, training));
  if (training && (hidden.isinf().any().item<bool>() || hidden.isnan().any().item<bool>())) {
    const double clamp = static_cast<double>(std::numeric_limits<float>::max()) - 1000;
    hidden = hidden.clamp(-clamp, clamp);
  }
  return hidden;
}

ConvGroupNorm::ConvGroupNorm(torch::nn::Module& parent, const std::string& name, int64_t in_channels, int64_t out_channels, int64_t kernel,
                             bool bias) {
  auto sequence = layers::add_container(parent, name);
  convolution = sequence->register_module(
      "0", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, kernel).padding(kernel / 2).bias(bias)));
  norm = sequence->register_module("1", torch::nn::GroupNorm(torch::nn::GroupNormOptions(32, out_channels)));
}

torch::Tensor ConvGroupNorm::operator()(const torch::Tensor& input) { return norm->forward(layers::conv2d(convolution, input)); }

PixelDecoderImpl::PixelDecoderImpl(const Mask2FormerConfig& config, const std::vector<int64_t>& feature_channels) : config(config) {
  const int64_t dim = config.feature_size;
  const auto features = static_cast<int64_t>(feature_channels.size());
  level_embed = register_parameter("level_embed", torch::zeros({kFeatureLevels, dim}));
  auto projections = layers::add_container(*this, "input_projections");
  // Lowest resolution first: input_projections.0 takes the last feature map.
  for (int64_t level = 0; level < kFeatureLevels; ++level) {
    input_projections.emplace_back(*projections, std::to_string(level), feature_channels[static_cast<size_t>(features - 1 - level)], dim, 1,
                                   true);
  }
  auto encoder = layers::add_container(*this, "encoder");
  auto encoder_list = layers::add_container(*encoder, "layers");
  for (int64_t i = 0; i < config.encoder_layers; ++i) {
    encoder_layers.push_back(encoder_list->register_module(std::to_string(i), PixelDecoderEncoderLayer(config)));
  }
  mask_projection = register_module("mask_projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, config.mask_feature_size, 1)));
  // FPN levels below the deformable encoder's finest stride, down to common_stride.
  const int64_t stride = *std::min_element(config.feature_strides.end() - kFeatureLevels, config.feature_strides.end());
  num_fpn_levels = static_cast<int64_t>(std::log2(static_cast<double>(stride)) - std::log2(static_cast<double>(config.common_stride)));
  VT_CHECK(num_fpn_levels <= features, "config.json: common_stride ", config.common_stride, " needs ", num_fpn_levels,
           " FPN levels, the backbone gives ", features, " feature maps");
  for (int64_t i = 0; i < num_fpn_levels; ++i) {
    adapters.emplace_back(*this, "adapter_" + std::to_string(i + 1), feature_channels[static_cast<size_t>(i)], dim, 1, false);
    layers.emplace_back(*this, "layer_" + std::to_string(i + 1), dim, dim, 3, false);
  }
}

PixelDecoderOutput PixelDecoderImpl::forward(const std::vector<torch::Tensor>& features) {
  const auto count = static_cast<int64_t>(features.size());
  const int64_t batch = features[0].size(0);
  std::vector<torch::Tensor> embeds, positions;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int64_t level = 0; level < kFeatureLevels; ++level) {
    const auto& x = features[static_cast<size_t>(count - 1 - level)];
    auto embed = input_projections[static_cast<size_t>(level)](x);
    shapes.emplace_back(embed.size(2), embed.size(3));
    embeds.push_back(embed.flatten(2).transpose(1, 2));
    auto position = sine_position_embedding(x, config.feature_size / 2).flatten(2).transpose(1, 2);
    positions.push_back(position + level_embed[level].view({1, 1, -1}));
  }
  auto hidden = torch::cat(embeds, 1);
  auto position = torch::cat(positions, 1);

  // Reference points: every position's centre, normalised to [0, 1] (no padding: valid ratios 1).
  auto float_options = hidden.options().dtype(torch::kFloat32);
  std::vector<torch::Tensor> references;
  for (const auto& [height, width] : shapes) {
    auto grid = torch::meshgrid(
        {torch::linspace(0.5, height - 0.5, height, float_options), torch::linspace(0.5, width - 0.5, width, float_options)}, "ij");
    auto ref_y = grid[0].reshape(-1) / static_cast<double>(height);
    auto ref_x = grid[1].reshape(-1) / static_cast<double>(width);
    references.push_back(torch::stack({ref_x, ref_y}, -1));
  }
  auto reference_points = torch::cat(references, 0).view({1, -1, 1, 2}).expand({batch, -1, kFeatureLevels, 2}).to(hidden.scalar_type());

  for (auto& layer : encoder_layers) hidden = layer(hidden, position, reference_points, shapes);

  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (const auto& [height, width] : shapes) {
    outputs.push_back(hidden.narrow(1, start, height * width).transpose(1, 2).reshape({batch, -1, height, width}));
    start += height * width;
  }
  // FPN: from the finest encoder level up to common_stride, nearest the backbone's first maps.
  for (int64_t idx = 0; idx < num_fpn_levels; ++idx) {
    const auto level = static_cast<size_t>(num_fpn_levels - 1 - idx);
    auto lateral = adapters[level](features[level]);
    auto out = lateral + bilinear_resize(outputs.back(), lateral.size(2), lateral.size(3));
    outputs.push_back(torch::relu(layers[level](out)));
  }
  PixelDecoderOutput result;
  result.multi_scale_features.assign(outputs.begin(), outputs.begin() + kFeatureLevels);
  result.mask_features = layers::conv2d(mask_projection, outputs.back());
  return result;
}

// ---------------------------------------------------------------------------------------------
// Transformer decoder

MaskedCrossAttentionImpl::MaskedCrossAttentionImpl(int64_t embed_dim, int64_t num_heads, double dropout)
    : embed_dim(embed_dim), num_heads(num_heads), dropout(dropout) {
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * embed_dim, embed_dim}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * embed_dim}));
  out_proj = register_module("out_proj", layers::Linear(embed_dim, embed_dim));
  torch::nn::init::xavier_uniform_(in_proj_weight);  // nn.MultiheadAttention's own initialisation
}

torch::Tensor MaskedCrossAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                                                const torch::Tensor& mask) {
  const int64_t batch = query.size(0), targets = query.size(1), head_dim = embed_dim / num_heads;
  auto weights = in_proj_weight.chunk(3);
  auto biases = in_proj_bias.chunk(3);
  // [B, T, C] -> [B * heads, T, head_dim], batch-major as nn.MultiheadAttention orders its heads.
  auto split = [&](const torch::Tensor& x) {
    return x.view({batch, -1, num_heads, head_dim}).transpose(1, 2).reshape({batch * num_heads, -1, head_dim});
  };
  auto q = split(layers::linear(query, weights[0], biases[0])) / std::sqrt(static_cast<double>(head_dim));
  auto k = split(layers::linear(key, weights[1], biases[1]));
  auto v = split(layers::linear(value, weights[2], biases[2]));
  torch::Tensor scores;
  if (mask.defined()) {
    auto additive = torch::zeros(mask.sizes(), q.options()).masked_fill(mask, -std::numeric_limits<double>::infinity());
    scores = torch::baddbmm(additive, q, k.transpose(1, 2));
  } else {
    scores = torch::bmm(q, k.transpose(1, 2));
  }
  auto probabilities = torch::dropout(torch::softmax(scores, -1), dropout, is_training());
  auto context =
      torch::bmm(probabilities, v).view({batch, num_heads, targets, head_dim}).transpose(1, 2).reshape({batch, targets, embed_dim});
  return out_proj(context);
}

MaskedAttentionDecoderLayerImpl::MaskedAttentionDecoderLayerImpl(const Mask2FormerConfig& config)
    : pre_norm(config.pre_norm), dropout(config.dropout), activation_function(config.activation_function) {
  const int64_t dim = config.hidden_dim;
  self_attn = register_module("self_attn", detr::DetrAttention(dim, config.num_attention_heads, config.dropout));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layers::LayerNorm(dim, 1e-5));
  cross_attn = register_module("cross_attn", MaskedCrossAttention(dim, config.num_attention_heads, config.dropout));
  cross_attn_layer_norm = register_module("cross_attn_layer_norm", layers::LayerNorm(dim, 1e-5));
  fc1 = register_module("fc1", layers::Linear(dim, config.dim_feedforward));
  fc2 = register_module("fc2", layers::Linear(config.dim_feedforward, dim));
  final_layer_norm = register_module("final_layer_norm", layers::LayerNorm(dim, 1e-5));
}

torch::Tensor MaskedAttentionDecoderLayerImpl::forward(const torch::Tensor& input, const torch::Tensor& query_position,
                                                       const torch::Tensor& features, const torch::Tensor& features_position,
                                                       const torch::Tensor& attention_mask) {
  const bool training = is_training();
  // Masked cross-attention, then self-attention, then the FFN; post- or pre-LayerNorm.
  auto hidden = input;
  auto residual = hidden;
  if (pre_norm) hidden = cross_attn_layer_norm(hidden);
  hidden = cross_attn(hidden + query_position, features + features_position, features, attention_mask);
  hidden = residual + torch::dropout(hidden, dropout, training);
  if (!pre_norm) hidden = cross_attn_layer_norm(hidden);

  residual = hidden;
  if (pre_norm) hidden = self_attn_layer_norm(hidden);
  hidden = residual + torch::dropout(self_attn->forward(hidden, query_position, {}, {}, {}), dropout, training);
  if (!pre_norm) hidden = self_attn_layer_norm(hidden);

  residual = hidden;
  if (pre_norm) hidden = final_layer_norm(hidden);
  hidden = torch::dropout(fc1->forward_then(hidden, activation_function), dropout, training);
  hidden = residual + torch::dropout(fc2(hidden), dropout, training);
  if (!pre_norm) hidden = final_layer_norm(hidden);
  return hidden;
}

TransformerModuleImpl::TransformerModuleImpl(const Mask2FormerConfig& config) : config(config) {
  const int64_t dim = config.hidden_dim;
  queries_embedder =
      layers::add_container(*this, "queries_embedder")->register_parameter("weight", torch::randn({config.num_queries, dim}));
  queries_features =
      layers::add_container(*this, "queries_features")->register_parameter("weight", torch::randn({config.num_queries, dim}));
  if (config.feature_size != dim || config.enforce_input_projection) {
    for (int64_t i = 0; i < kFeatureLevels; ++i) {
      torch::nn::Conv2d projection(torch::nn::Conv2dOptions(config.feature_size, dim, 1));
      torch::NoGradGuard no_grad;
      torch::nn::init::xavier_uniform_(projection->weight, config.init_xavier_std);
      projection->bias.zero_();
      input_projections.push_back(projection);
    }
  }
  auto decoder = layers::add_container(*this, "decoder");
  auto decoder_list = layers::add_container(*decoder, "layers");
  for (int64_t i = 0; i + 1 < config.decoder_layers; ++i) {
    decoder_layers.push_back(decoder_list->register_module(std::to_string(i), MaskedAttentionDecoderLayer(config)));
  }
  decoder_layernorm = decoder->register_module("layernorm", layers::LayerNorm(dim, 1e-5));
  auto embedder = layers::add_container(*layers::add_container(*decoder, "mask_predictor"), "mask_embedder");
  for (int64_t i = 0; i < 3; ++i) {
    auto block = layers::add_container(*embedder, std::to_string(i));
    mask_embedder.push_back(block->register_module("0", layers::Linear(dim, i == 2 ? config.mask_feature_size : dim)));
  }
  level_embed = layers::add_container(*this, "level_embed")->register_parameter("weight", torch::randn({kFeatureLevels, dim}));
}

std::pair<torch::Tensor, torch::Tensor> TransformerModuleImpl::predict_masks(const torch::Tensor& hidden,
                                                                             const torch::Tensor& mask_features,
                                                                             std::pair<int64_t, int64_t> attention_size) {
  auto embeddings = hidden;
  for (size_t i = 0; i < mask_embedder.size(); ++i) {
    embeddings = i + 1 < mask_embedder.size() ? mask_embedder[i]->forward_then(embeddings, "relu") : mask_embedder[i](embeddings);
  }
  auto masks = torch::einsum("bqc,bchw->bqhw", {embeddings, mask_features});
  torch::Tensor attention_mask;
  {
    torch::NoGradGuard no_grad;
    auto resized = bilinear_resize(masks, attention_size.first, attention_size.second);
    attention_mask = resized.sigmoid().flatten(2).unsqueeze(1).repeat({1, config.num_attention_heads, 1, 1}).flatten(0, 1) < 0.5;
  }
  return {masks, attention_mask};
}

DecoderOutput TransformerModuleImpl::forward(const std::vector<torch::Tensor>& multi_scale_features, const torch::Tensor& mask_features) {
  const bool training = is_training();
  const int64_t batch = mask_features.size(0);
  // Batch-first throughout ([B, tokens, C]); transformers' sequence-first layout gives the same numbers.
  std::vector<torch::Tensor> features, positions;
  std::vector<std::pair<int64_t, int64_t>> sizes;
  for (int64_t i = 0; i < kFeatureLevels; ++i) {
    const auto& map = multi_scale_features[static_cast<size_t>(i)];
    sizes.emplace_back(map.size(2), map.size(3));
    positions.push_back(sine_position_embedding(map, config.hidden_dim / 2).flatten(2).transpose(1, 2));
    torch::Tensor projected = map;
    if (!input_projections.empty()) {
      auto& projection = input_projections[static_cast<size_t>(i)];
      projection->to(map.device(), map.scalar_type());
      projected = projection(map);
    }
    features.push_back((projected.flatten(2) + level_embed[i].view({1, -1, 1})).transpose(1, 2));
  }
  auto query_position = queries_embedder.unsqueeze(0).expand({batch, -1, -1});
  auto hidden = queries_features.unsqueeze(0).expand({batch, -1, -1});

  DecoderOutput output;
  auto intermediate = decoder_layernorm(hidden);
  auto [masks, attention_mask] = predict_masks(intermediate, mask_features, sizes[0]);
  output.intermediate_hidden_states.push_back(intermediate);
  output.masks_queries_logits.push_back(masks);
  for (size_t idx = 0; idx < decoder_layers.size(); ++idx) {
    // transformers 4.31 draws the LayerDrop probability for every layer, in evaluation too: the
    // draw is part of the random stream the loss's point sampling continues.
    const double dropout_probability = torch::rand({}).item<double>();
    if (training && dropout_probability < config.dropout) continue;
    const auto level = static_cast<size_t>(idx % kFeatureLevels);
    // A query whose mask covers nothing attends everywhere.
    auto fully_masked = attention_mask.all(-1, /*keepdim=*/true);
    attention_mask = attention_mask & ~fully_masked;
    hidden = decoder_layers[idx](hidden, query_position, features[level], positions[level], attention_mask);
    intermediate = decoder_layernorm(hidden);
    std::tie(masks, attention_mask) = predict_masks(intermediate, mask_features, sizes[(idx + 1) % kFeatureLevels]);
    output.intermediate_hidden_states.push_back(intermediate);
    output.masks_queries_logits.push_back(masks);
  }
  output.last_hidden_state = hidden;
  return output;
}

// ---------------------------------------------------------------------------------------------
// Models

Mask2FormerBody::Mask2FormerBody(const Mask2FormerConfig& config, torch::nn::Module& owner) : config(config) {
  auto pixel_level_module = layers::add_container(owner, "pixel_level_module");
  auto encoder = layers::add_container(*pixel_level_module, "encoder");
  backbone = std::make_unique<swin::SwinBackbone>(config.backbone_config, *encoder);
  pixel_decoder = pixel_level_module->register_module("decoder", PixelDecoder(config, backbone->channels()));
  transformer_module = owner.register_module("transformer_module", TransformerModule(config));
}

Mask2FormerOutputs Mask2FormerBody::forward(const torch::Tensor& pixel_values, bool training, bool gradient_checkpointing) {
  check_pixel_values(pixel_values, config.backbone_config.num_channels);
  auto feature_maps = backbone->forward(pixel_values, gradient_checkpointing);
  VT_CHECK(feature_maps.size() == config.feature_strides.size(), "Mask2Former: the backbone gave ", feature_maps.size(),
           " feature maps, feature_strides has ", config.feature_strides.size());
  PixelDecoderOutput pixel = pixel_decoder(feature_maps);
  Mask2FormerOutputs outputs;
  outputs.encoder_last_hidden_state = feature_maps.back();
  outputs.pixel_decoder_last_hidden_state = pixel.mask_features;
  outputs.decoder = transformer_module(pixel.multi_scale_features, pixel.mask_features);
  outputs.transformer_decoder_last_hidden_state = outputs.decoder.last_hidden_state;
  return outputs;
}

void Mask2FormerPreTrainedModel::init_module(const std::string& full_name, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  const std::string name = full_name.rfind(prefix_, 0) == 0 ? full_name.substr(prefix_.size()) : full_name;
  const double std = config.init_std;
  auto* linear = dynamic_cast<layers::LinearImpl*>(&module);
  auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(&module);
  auto* layer_norm = dynamic_cast<layers::LayerNormImpl*>(&module);
  auto* group_norm = dynamic_cast<torch::nn::GroupNormImpl*>(&module);
  if (layer_norm != nullptr) {
    layer_norm->reset_parameters();
  } else if (group_norm != nullptr) {
    group_norm->weight.fill_(1.0);
    group_norm->bias.zero_();
  } else if (name.rfind("pixel_level_module", 0) == 0) {
    // The pixel level module's own rule, applied last (after Swin's and the pixel decoder's):
    // every Linear and Conv2d normal(init_std) with zero bias.
    if (name.rfind("pixel_level_module.encoder", 0) == 0 && body_) body_->backbone->init_module(module);
    if (linear != nullptr || conv != nullptr) layers::init_normal(module, std);
    if (name == "pixel_level_module.decoder") body_->pixel_decoder->level_embed.zero_();
  } else if (name.rfind("transformer_module.decoder.layers.", 0) == 0) {
    // Every matrix of a decoder layer xavier_uniform(init_xavier_std); biases zero.
    const double gain = config.init_xavier_std;
    if (linear != nullptr) {
      torch::nn::init::xavier_uniform_(linear->weight, gain);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* cross = dynamic_cast<MaskedCrossAttentionImpl*>(&module)) {
      torch::nn::init::xavier_uniform_(cross->in_proj_weight, gain);
      cross->in_proj_bias.zero_();
    }
  } else if (linear != nullptr || conv != nullptr) {
    layers::init_normal(module, std);  // mask embedder, class predictor
  } else if (ends_with(name, "queries_embedder") || ends_with(name, "queries_features") || ends_with(name, "level_embed")) {
    for (auto& parameter : module.parameters(/*recurse=*/false)) parameter.normal_(0.0, std);  // nn.Embedding
  } else if (name == "criterion") {
    for (auto& buffer : module.buffers(/*recurse=*/false)) {
      buffer.fill_(1.0);
      buffer[-1] = config.loss.no_object_weight;
    }
  }
}

Mask2FormerModel::Mask2FormerModel(const Mask2FormerConfig& config) : Mask2FormerPreTrainedModel(config) {
  body_ = std::make_unique<Mask2FormerBody>(this->config, *this);
}

Mask2FormerOutputs Mask2FormerModel::run(const torch::Tensor& pixel_values) {
  const auto dtype = body_->pixel_decoder->level_embed.scalar_type();
  return body_->forward(pixel_values.to(dtype), is_training(), gradient_checkpointing());
}

ModelOutputs Mask2FormerModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "Mask2FormerModel has no task head, so it takes no labels");
  // pixel_mask is accepted and unused, as in transformers (its feature maps are never padded).
  Mask2FormerOutputs out = run(inputs.pixel_values);
  return {{"encoder_last_hidden_state", out.encoder_last_hidden_state},
          {"pixel_decoder_last_hidden_state", out.pixel_decoder_last_hidden_state},
          {"transformer_decoder_last_hidden_state", out.transformer_decoder_last_hidden_state}};
}

Mask2FormerForUniversalSegmentation::Mask2FormerForUniversalSegmentation(const Mask2FormerConfig& config)
    : Mask2FormerPreTrainedModel(config) {
  prefix_ = "model.";
  auto model = layers::add_container(*this, "model");
  body_ = std::make_unique<Mask2FormerBody>(this->config, *model);
  // One more class than labels: the last is "no object".
  class_predictor = register_module("class_predictor", layers::Linear(config.hidden_dim, config.num_labels() + 1));
  auto weight = torch::ones({config.num_labels() + 1});
  weight[-1] = config.loss.no_object_weight;
  empty_weight = layers::add_container(*this, "criterion")->register_buffer("empty_weight", weight);
}

bool Mask2FormerForUniversalSegmentation::is_head_key(const std::string& key) const {
  return key.rfind("class_predictor.", 0) == 0 || key == "criterion.empty_weight";
}

SegmentationOutputs Mask2FormerForUniversalSegmentation::run(const torch::Tensor& pixel_values) {
  const auto dtype = class_predictor->weight.scalar_type();
  SegmentationOutputs outputs;
  outputs.model = body_->forward(pixel_values.to(dtype), is_training(), gradient_checkpointing());
  for (const auto& hidden : outputs.model.decoder.intermediate_hidden_states) {
    outputs.class_queries_logits.push_back(class_predictor(hidden));
  }
  outputs.masks_queries_logits = outputs.model.decoder.masks_queries_logits;
  return outputs;
}

ModelOutputs Mask2FormerForUniversalSegmentation::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.labels.defined(), "labels: Mask2Former takes one {class_labels, mask_labels} per image, not a tensor");
  SegmentationOutputs out = run(inputs.pixel_values);
  ModelOutputs outputs;
  if (!inputs.targets.empty()) {
    const std::vector<torch::Tensor> aux_masks(out.masks_queries_logits.begin(), out.masks_queries_logits.end() - 1);
    const std::vector<torch::Tensor> aux_classes(out.class_queries_logits.begin(), out.class_queries_logits.end() - 1);
    auto loss = losses::mask2former_loss(config.loss, empty_weight, out.masks_queries_logits.back(), out.class_queries_logits.back(),
                                         aux_masks, aux_classes, inputs.targets);
    outputs.emplace_back("loss", loss.loss);
    for (auto& [name, value] : loss.parts) outputs.emplace_back("loss_dict." + name, value);
  }
  outputs.emplace_back("class_queries_logits", out.class_queries_logits.back());
  outputs.emplace_back("masks_queries_logits", out.masks_queries_logits.back());
  return outputs;
}

}  // namespace vt::mask2former
