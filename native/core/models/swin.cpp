#include "models/swin.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/error.h"
#include "common/json_config.h"
#include "losses/classification.h"

namespace vt::swin {

std::vector<std::string> SwinConfig::stage_names() const {
  std::vector<std::string> names{"stem"};
  for (size_t i = 1; i <= depths.size(); ++i) names.push_back("stage" + std::to_string(i));
  return names;
}

int64_t SwinConfig::num_features() const { return embed_dim << (depths.size() - 1); }

int64_t SwinConfig::channels_of(const std::string& stage) const {
  const auto names = stage_names();
  const auto index = std::find(names.begin(), names.end(), stage) - names.begin();
  VT_CHECK(index < static_cast<int64_t>(names.size()), "Swin has no stage \"", stage, "\"");
  // SwinBackbone.num_features: the stem and the first stage have embed_dim channels, then each stage doubles.
  return index == 0 ? embed_dim : embed_dim << (index - 1);
}

SwinConfig SwinConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  SwinConfig c;
  std::tie(c.image_height, c.image_width) = fields.get_size_pair("image_size", 224);
  std::tie(c.patch_height, c.patch_width) = fields.get_size_pair("patch_size", 4);
  c.num_channels = fields.get_positive_int("num_channels", c.num_channels);
  c.embed_dim = fields.get_positive_int("embed_dim", c.embed_dim);
  c.depths = fields.get_positive_ints("depths", c.depths);
  c.num_heads = fields.get_positive_ints("num_heads", c.num_heads);
  c.window_size = fields.get_positive_int("window_size", c.window_size);
  c.mlp_ratio = fields.get_positive_number("mlp_ratio", c.mlp_ratio);
  c.qkv_bias = fields.get_bool("qkv_bias", c.qkv_bias);
  c.hidden_dropout_prob = fields.get_probability("hidden_dropout_prob", c.hidden_dropout_prob);
  c.attention_probs_dropout_prob = fields.get_probability("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  c.drop_path_rate = fields.get_probability("drop_path_rate", c.drop_path_rate);
  c.hidden_act = fields.get_string("hidden_act", c.hidden_act);
  layers::activation(c.hidden_act);
  c.use_absolute_embeddings = fields.get_bool("use_absolute_embeddings", false);
  // transformers sizes the table num_patches + 1 and adds it to num_patches tokens: its forward fails.
  VT_CHECK(!c.use_absolute_embeddings, source,
           ": use_absolute_embeddings: true is not supported (transformers' Swin cannot run with it either)");
  c.layer_norm_eps = fields.get_positive_number("layer_norm_eps", c.layer_norm_eps);
  VT_CHECK(c.num_heads.size() == c.depths.size(), source, ": num_heads has ", c.num_heads.size(), " entries but depths has ",
           c.depths.size());
  VT_CHECK(c.depths.size() < 16, source, ": depths has ", c.depths.size(), " stages; at most 15 are supported");
  for (size_t i = 0; i < c.depths.size(); ++i) {
    const int64_t dim = c.embed_dim << i;
    VT_CHECK(dim % c.num_heads[i] == 0, source, ": stage ", i + 1, " has ", dim, " channels, not a multiple of num_heads[", i, "] (",
             c.num_heads[i], ")");
  }
  // BackboneMixin's alignment of out_features and out_indices; neither given means the last stage.
  const auto names = c.stage_names();
  if (fields.has("out_features")) {
    c.out_features = fields.get_strings("out_features", {});
    for (const auto& stage : c.out_features) {
      VT_CHECK(std::find(names.begin(), names.end(), stage) != names.end(), source, ": out_features names \"", stage,
               "\", which is not one of the stages (stem, stage1 ... stage", c.depths.size(), ")");
    }
  } else if (fields.has("out_indices")) {
    for (const double index : fields.get_numbers("out_indices", {})) {
      const auto position = static_cast<int64_t>(index < 0 ? index + static_cast<double>(names.size()) : index);
      VT_CHECK(index == std::floor(index) && position >= 0 && position < static_cast<int64_t>(names.size()), source, ": out_indices holds ",
               index, ", outside the ", names.size(), " stages");
      c.out_features.push_back(names[static_cast<size_t>(position)]);
    }
  } else {
    c.out_features = {names.back()};
  }
  c.head = HeadConfig::from_json(json, source);
  return c;
}

namespace {

// [B, H, W, C] -> [B * (H / window) * (W / window), window * window, C], windows in row-major order per image.
torch::Tensor window_partition(const torch::Tensor& x, int64_t window) {
  const int64_t batch = x.size(0), height = x.size(1), width = x.size(2), channels = x.size(3);
  return x.view({batch, height / window, window, width / window, window, channels})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({-1, window * window, channels});
}

torch::Tensor window_reverse(const torch::Tensor& windows, int64_t window, int64_t height, int64_t width) {
  const int64_t channels = windows.size(-1);
  return windows.view({-1, height / window, width / window, window, window, channels})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({-1, height, width, channels});
}

// Index of each (query, key) pair of a window into the relative position bias table of a
// `table_window` window (the layer's own, or larger for a map smaller than the window).
torch::Tensor relative_position_index_for(int64_t window, int64_t table_window) {
  auto coords = torch::stack(torch::meshgrid({torch::arange(window), torch::arange(window)}, "ij")).flatten(1);  // [2, w*w]
  auto relative = (coords.unsqueeze(2) - coords.unsqueeze(1)).permute({1, 2, 0}).contiguous();                   // [w*w, w*w, 2]
  auto rows = (relative.select(2, 0) + (table_window - 1)) * (2 * table_window - 1);
  auto cols = relative.select(2, 1) + (table_window - 1);
  return rows + cols;
}

// The shifted-window attention mask: tokens that the cyclic shift brought together from different
// regions of the padded map may not attend to each other (-100 before the softmax).
torch::Tensor shifted_window_mask(int64_t height, int64_t width, int64_t window, int64_t shift, const torch::TensorOptions& options) {
  auto regions = torch::zeros({1, height, width, 1}, options);
  const std::pair<int64_t, int64_t> bands[3] = {{0, -window}, {-window, -shift}, {-shift, 0}};
  auto end_of = [](int64_t end, int64_t size) { return end <= 0 ? size + end : end; };
  auto start_of = [](int64_t start, int64_t size) { return start < 0 ? size + start : start; };
  double region = 0;
  for (const auto& [row_start, row_end] : bands) {
    for (const auto& [col_start, col_end] : bands) {
      const int64_t r0 = std::max<int64_t>(0, start_of(row_start, height)), r1 = std::max<int64_t>(0, end_of(row_end, height));
      const int64_t c0 = std::max<int64_t>(0, start_of(col_start, width)), c1 = std::max<int64_t>(0, end_of(col_end, width));
      if (r1 > r0 && c1 > c0) regions.slice(1, r0, r1).slice(2, c0, c1).fill_(region);
      region += 1;
    }
  }
  auto windows = window_partition(regions, window).squeeze(-1);  // [nW, w*w]
  auto difference = windows.unsqueeze(1) - windows.unsqueeze(2);
  return torch::zeros_like(difference).masked_fill(difference.ne(0), -100.0);
}

}  // namespace

SwinLayerImpl::SwinLayerImpl(const SwinConfig& config, int64_t dim, int64_t num_heads, int64_t shift_size, double drop_path)
    : config(config), dim(dim), num_heads(num_heads), shift_size(shift_size), drop_path(drop_path) {
  layernorm_before = register_module("layernorm_before", layers::LayerNorm(dim, config.layer_norm_eps));
  auto attention = layers::add_container(*this, "attention");
  auto self = layers::add_container(*attention, "self");
  const int64_t window = config.window_size;
  relative_position_bias_table =
      self->register_parameter("relative_position_bias_table", torch::zeros({(2 * window - 1) * (2 * window - 1), num_heads}));
  relative_position_index = self->register_buffer("relative_position_index", relative_position_index_for(window, window));
  query = self->register_module("query", layers::Linear(dim, dim, config.qkv_bias));
  key = self->register_module("key", layers::Linear(dim, dim, config.qkv_bias));
  value = self->register_module("value", layers::Linear(dim, dim, config.qkv_bias));
  attention_output = layers::add_container(*attention, "output")->register_module("dense", layers::Linear(dim, dim));
  layernorm_after = register_module("layernorm_after", layers::LayerNorm(dim, config.layer_norm_eps));
  const auto inner = static_cast<int64_t>(config.mlp_ratio * static_cast<double>(dim));
  intermediate = layers::add_container(*this, "intermediate")->register_module("dense", layers::Linear(dim, inner));
  output = layers::add_container(*this, "output")->register_module("dense", layers::Linear(inner, dim));
}

torch::Tensor SwinLayerImpl::forward(const torch::Tensor& tokens, int64_t height, int64_t width, bool always_partition) {
  const bool training = is_training();
  int64_t window = config.window_size, shift = shift_size;
  // SwinModel attends a map no larger than the window as a single unshifted window (transformers
  // stores that change on the layer; here it holds for this call only).
  const bool whole_map = !always_partition && std::min(height, width) <= window;
  if (whole_map) {
    window = std::min(height, width);
    shift = 0;
  }
  const int64_t batch = tokens.size(0), channels = tokens.size(2), head_dim = channels / num_heads;
  auto hidden = layernorm_before(tokens).view({batch, height, width, channels});
  const int64_t pad_right = (window - width % window) % window, pad_bottom = (window - height % window) % window;
  if (pad_right > 0 || pad_bottom > 0) hidden = torch::constant_pad_nd(hidden, {0, 0, 0, pad_right, 0, pad_bottom});
  const int64_t padded_height = height + pad_bottom, padded_width = width + pad_right;
  if (shift > 0) hidden = torch::roll(hidden, {-shift, -shift}, {1, 2});
  auto windows = window_partition(hidden, window);  // [B * nW, w*w, C]
  const int64_t tokens_per_window = window * window;

  // The bias of each head for every (query, key) pair. A window shrunk to a small map reads its
  // pairs' entries from the full table (transformers fails on such maps: its bias keeps the full size).
  torch::Tensor index = relative_position_index;
  if (window != config.window_size) index = relative_position_index_for(window, config.window_size).to(relative_position_index.device());
  auto bias = relative_position_bias_table.index_select(0, index.reshape(-1))
                  .view({tokens_per_window, tokens_per_window, num_heads})
                  .permute({2, 0, 1})
                  .unsqueeze(0);  // [1, heads, T, T]
  torch::Tensor additive = bias.to(windows.scalar_type());
  auto split = [&](const torch::Tensor& x) { return x.view({x.size(0), tokens_per_window, num_heads, head_dim}).transpose(1, 2); };
  auto query_heads = split(query(windows)), key_heads = split(key(windows)), value_heads = split(value(windows));
  if (shift > 0) {
    // [nW, heads, T, T]: window w's mask, which each image's window w reads.
    additive = additive + shifted_window_mask(padded_height, padded_width, window, shift, windows.options()).unsqueeze(1);
  }
  auto context =
      layers::scaled_dot_product_attention(query_heads, key_heads, value_heads, additive, config.attention_probs_dropout_prob, training);
  context = context.reshape({-1, num_heads, tokens_per_window, head_dim}).transpose(1, 2).reshape({-1, tokens_per_window, channels});
  // SwinSelfOutput's dropout uses the attention probability, as transformers' does.
  auto attended = torch::dropout(attention_output(context), config.attention_probs_dropout_prob, training);
  auto merged = window_reverse(attended.view({-1, window, window, channels}), window, padded_height, padded_width);
  if (shift > 0) merged = torch::roll(merged, {shift, shift}, {1, 2});
  if (pad_right > 0 || pad_bottom > 0) merged = merged.slice(1, 0, height).slice(2, 0, width);
  auto residual = tokens + layers::drop_path(merged.reshape({batch, height * width, channels}), drop_path, training);

  // The activation, and without dropout the residual sum, made by the products' kernels.
  auto mlp = intermediate->forward_then(layernorm_after(residual), config.hidden_act);
  // transformers applies no drop path to the MLP branch of a Swin layer.
  if (training && config.hidden_dropout_prob > 0) return residual + torch::dropout(output(mlp), config.hidden_dropout_prob, training);
  return output->forward_add(mlp, residual);
}

SwinBody::SwinBody(const SwinConfig& config, torch::nn::Module& owner) : config(config) {
  auto embeddings = layers::add_container(owner, "embeddings");
  patch_projection =
      layers::add_container(*embeddings, "patch_embeddings")
          ->register_module("projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(config.num_channels, config.embed_dim,
                                                                                     {config.patch_height, config.patch_width})
                                                                .stride({config.patch_height, config.patch_width})));
  embeddings_norm = embeddings->register_module("norm", layers::LayerNorm(config.embed_dim, 1e-5));
  auto stages = layers::add_container(*layers::add_container(owner, "encoder"), "layers");
  int64_t total_depth = 0;
  for (const int64_t depth : config.depths) total_depth += depth;
  int64_t index = 0;
  for (size_t i = 0; i < config.depths.size(); ++i) {
    const int64_t dim = config.embed_dim << i;
    auto stage = layers::add_container(*stages, std::to_string(i));
    auto block_list = layers::add_container(*stage, "blocks");
    std::vector<SwinLayer> stage_blocks;
    for (int64_t j = 0; j < config.depths[i]; ++j, ++index) {
      // torch.linspace(0, drop_path_rate, sum(depths))
      const double rate = total_depth > 1 ? config.drop_path_rate * static_cast<double>(index) / static_cast<double>(total_depth - 1) : 0.0;
      const int64_t shift = j % 2 == 0 ? 0 : config.window_size / 2;
      stage_blocks.push_back(
          block_list->register_module(std::to_string(j), SwinLayer(this->config, dim, config.num_heads[i], shift, rate)));
    }
    blocks.push_back(std::move(stage_blocks));
    if (i + 1 < config.depths.size()) {
      auto downsample = layers::add_container(*stage, "downsample");
      merge_reductions.push_back(downsample->register_module("reduction", layers::Linear(4 * dim, 2 * dim, false)));
      merge_norms.push_back(downsample->register_module("norm", layers::LayerNorm(4 * dim, 1e-5)));
    }
  }
}

std::vector<SwinBody::StageOutput> SwinBody::forward(const torch::Tensor& pixel_values, bool always_partition,
                                                     bool gradient_checkpointing) {
  check_pixel_values(pixel_values, config.num_channels);
  auto pixels = pixel_values.to(patch_projection->weight.scalar_type());
  // Padded on the right and bottom to a multiple of the patch size.
  const int64_t pad_right = (config.patch_width - pixels.size(3) % config.patch_width) % config.patch_width;
  const int64_t pad_bottom = (config.patch_height - pixels.size(2) % config.patch_height) % config.patch_height;
  if (pad_right > 0 || pad_bottom > 0) pixels = torch::constant_pad_nd(pixels, {0, pad_right, 0, pad_bottom});
  auto projected = layers::conv2d(patch_projection, pixels);
  int64_t height = projected.size(2), width = projected.size(3);
  auto tokens = embeddings_norm(projected.flatten(2).transpose(1, 2));
  tokens = torch::dropout(tokens, config.hidden_dropout_prob, patch_projection->is_training());

  std::vector<StageOutput> outputs{{tokens, height, width}};
  const bool checkpointing = gradient_checkpointing && patch_projection->is_training() && torch::GradMode::is_enabled();
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (auto& block : blocks[i]) {
      // By value: gradient checkpointing runs this again in the backward pass.
      auto run = [block, height, width, always_partition](const torch::Tensor& input) mutable {
        return block->forward(input, height, width, always_partition);
      };
      tokens = checkpointing ? layers::checkpoint(run, tokens) : run(tokens);
    }
    outputs.push_back({tokens, height, width});
    if (i < merge_reductions.size()) {
      // Patch merging: each 2x2 neighbourhood concatenated as (0,0), (1,0), (0,1), (1,1), then normalised and projected.
      const int64_t batch = tokens.size(0), channels = tokens.size(2);
      auto grid = tokens.view({batch, height, width, channels});
      if (height % 2 == 1 || width % 2 == 1) grid = torch::constant_pad_nd(grid, {0, 0, 0, width % 2, 0, height % 2});
      using torch::indexing::Slice;
      auto merged = torch::cat({grid.index({Slice(), Slice(0, torch::indexing::None, 2), Slice(0, torch::indexing::None, 2)}),
                                grid.index({Slice(), Slice(1, torch::indexing::None, 2), Slice(0, torch::indexing::None, 2)}),
                                grid.index({Slice(), Slice(0, torch::indexing::None, 2), Slice(1, torch::indexing::None, 2)}),
                                grid.index({Slice(), Slice(1, torch::indexing::None, 2), Slice(1, torch::indexing::None, 2)})},
                               -1);
      height = (height + 1) / 2;
      width = (width + 1) / 2;
      tokens = merge_reductions[i](merge_norms[i](merged.reshape({batch, height * width, 4 * channels})));
    }
  }
  return outputs;
}

SwinBackbone::SwinBackbone(const SwinConfig& config, torch::nn::Module& owner) {
  body = std::make_unique<SwinBody>(config, owner);
  auto norms = layers::add_container(owner, "hidden_states_norms");
  // SwinBackbone builds these with PyTorch's default eps, not the config's.
  for (const auto& stage : config.out_features) {
    hidden_states_norms.push_back(norms->register_module(stage, layers::LayerNorm(config.channels_of(stage), 1e-5)));
  }
}

std::vector<torch::Tensor> SwinBackbone::forward(const torch::Tensor& pixel_values, bool gradient_checkpointing) {
  const auto stages = body->forward(pixel_values, /*always_partition=*/true, gradient_checkpointing);
  const auto names = body->config.stage_names();
  std::vector<torch::Tensor> maps;
  size_t norm = 0;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (std::find(body->config.out_features.begin(), body->config.out_features.end(), names[i]) == body->config.out_features.end())
      continue;
    const auto& stage = stages[i];
    auto normed = hidden_states_norms[norm++](stage.tokens);
    maps.push_back(normed.view({normed.size(0), stage.height, stage.width, normed.size(2)}).permute({0, 3, 1, 2}).contiguous());
  }
  return maps;
}

std::vector<int64_t> SwinBackbone::channels() const {
  std::vector<int64_t> result;
  for (const auto& stage : body->config.out_features) result.push_back(body->config.channels_of(stage));
  return result;
}

void SwinBackbone::init_module(torch::nn::Module& module) const { layers::init_normal(module, body->config.head.initializer_range); }

void SwinModuleBase::init_module(const std::string& name, torch::nn::Module& module) {
  layers::init_normal(module, config.head.initializer_range);
}

SwinModel::SwinModel(const SwinConfig& config) : SwinModuleBase(config) {
  body = std::make_unique<SwinBody>(config, *this);
  layernorm = register_module("layernorm", layers::LayerNorm(config.num_features(), config.layer_norm_eps));
}

ModelOutputs SwinModel::forward(const ModelInputs& inputs) {
  VT_CHECK(!inputs.has_labels(), "SwinModel has no task head, so it takes no labels");
  auto last = layernorm(body->forward(inputs.pixel_values, false, gradient_checkpointing()).back().tokens);
  return {{"last_hidden_state", last}, {"pooler_output", last.mean(1)}};
}

SwinForImageClassification::SwinForImageClassification(const SwinConfig& config) : SwinModuleBase(config) {
  auto container = layers::add_container(*this, "swin");
  swin = std::make_unique<SwinBody>(config, *container);
  layernorm = container->register_module("layernorm", layers::LayerNorm(config.num_features(), config.layer_norm_eps));
  if (config.head.num_labels() > 0)
    classifier = register_module("classifier", layers::Linear(config.num_features(), config.head.num_labels()));
}

ModelOutputs SwinForImageClassification::forward(const ModelInputs& inputs) {
  auto pooled = layernorm(swin->forward(inputs.pixel_values, false, gradient_checkpointing()).back().tokens).mean(1);
  auto logits = classifier ? classifier(pooled) : pooled;
  return classification_outputs(logits, inputs.labels, config.head.problem_type);
}

}  // namespace vt::swin
