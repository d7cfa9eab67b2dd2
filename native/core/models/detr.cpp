#include "models/detr.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/json_config.h"
#include "losses/detr_set_loss.h"

namespace vt::detr {

namespace {

constexpr int64_t kLearnedPositions = 50;  // transformers' DetrLearnedPositionEmbedding table size

struct TimmDepths {
  bool bottleneck;
  std::vector<int64_t> blocks;
};

TimmDepths timm_resnet(const std::string& name, const std::string& source) {
  if (name == "resnet18") return {false, {2, 2, 2, 2}};
  if (name == "resnet34") return {false, {3, 4, 6, 3}};
  if (name == "resnet50") return {true, {3, 4, 6, 3}};
  if (name == "resnet101") return {true, {3, 4, 23, 3}};
  if (name == "resnet152") return {true, {3, 8, 36, 3}};
  fail(source, ": backbone \"", name, "\" is not supported (timm ResNets: resnet18, resnet34, resnet50, resnet101, resnet152)");
}

}  // namespace

DetrConfig DetrConfig::from_json(const nlohmann::json& json, const std::string& source) {
  JsonConfig fields(json, source);
  DetrConfig config;
  config.model_type = fields.get_string("model_type", "detr");
  config.pre_norm = config.model_type == "table-transformer";
  config.d_model = fields.get_positive_int("d_model", config.d_model);
  config.encoder_layers = fields.get_non_negative_int("encoder_layers", config.encoder_layers);
  config.decoder_layers = fields.get_positive_int("decoder_layers", config.decoder_layers);
  config.encoder_attention_heads = fields.get_positive_int("encoder_attention_heads", config.encoder_attention_heads);
  config.decoder_attention_heads = fields.get_positive_int("decoder_attention_heads", config.decoder_attention_heads);
  config.encoder_ffn_dim = fields.get_positive_int("encoder_ffn_dim", config.encoder_ffn_dim);
  config.decoder_ffn_dim = fields.get_positive_int("decoder_ffn_dim", config.decoder_ffn_dim);
  config.activation_function = fields.get_string("activation_function", config.activation_function);
  layers::activation(config.activation_function);
  config.dropout = fields.get_probability("dropout", config.dropout);
  config.attention_dropout = fields.get_probability("attention_dropout", 0.0);
  config.activation_dropout = fields.get_probability("activation_dropout", 0.0);
  config.encoder_layerdrop = fields.get_probability("encoder_layerdrop", 0.0);
  config.decoder_layerdrop = fields.get_probability("decoder_layerdrop", 0.0);
  config.num_queries = fields.get_positive_int("num_queries", config.num_queries);
  config.position_embedding_type = fields.get_string("position_embedding_type", "sine");
  if (config.position_embedding_type != "sine" && config.position_embedding_type != "learned") {
    fields.fail_field("position_embedding_type", "\"sine\" or \"learned\"");
  }
  config.auxiliary_loss = fields.get_bool("auxiliary_loss", false);
  config.set_loss = losses::SetLossConfig::from_json(json, source);
  config.init_std = fields.get_number("init_std", 0.02);
  config.num_channels = fields.get_positive_int("num_channels", 3);
  config.use_timm_backbone = fields.get_bool("use_timm_backbone", true);
  config.dilation = fields.get_bool("dilation", false);
  config.head = HeadConfig::from_json(json, source);
  for (auto [heads, key] : {std::pair{config.encoder_attention_heads, "encoder_attention_heads"},
                            std::pair{config.decoder_attention_heads, "decoder_attention_heads"}}) {
    VT_CHECK(config.d_model % heads == 0, source, ": d_model (", config.d_model, ") is not a multiple of ", key, " (", heads, ")");
  }
  VT_CHECK(config.position_embedding_type != "sine" || config.d_model % 4 == 0, source,
           ": sine position embeddings need d_model divisible by 4, got ", config.d_model);
  if (config.use_timm_backbone) {
    config.backbone = fields.get_string("backbone", "resnet50");
    timm_resnet(config.backbone, source);
  } else {
    const std::string backbone_source = source + " backbone_config";
    nlohmann::json backbone = fields.has("backbone_config") ? json.at("backbone_config") : nlohmann::json::object();
    if (!fields.has("backbone_config")) backbone["out_features"] = {"stage4"};  // DetrConfig's default
    VT_CHECK(backbone.is_object(), source, ": backbone_config must be an object");
    const std::string type = backbone.value("model_type", "resnet");
    VT_CHECK(type == "resnet", source, ": backbone_config.model_type \"", type, "\" is not supported (resnet)");
    config.backbone_config = resnet::ResNetConfig::from_json(backbone, backbone_source);
    config.backbone_config.num_channels = config.num_channels;
    config.backbone_config.frozen_batch_norm = true;
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Backbones

namespace {

// transformers' own ResNetBackbone, under model.backbone.conv_encoder.model.
class HfResNetBackbone : public ConvBackbone {
 public:
  HfResNetBackbone(const DetrConfig& config, torch::nn::Module& conv_encoder)
      : resnet_(conv_encoder.register_module("model", std::make_shared<resnet::ResNetBackbone>(config.backbone_config))) {}
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values) override { return resnet_->feature_maps(pixel_values); }
  int64_t output_channels() const override { return resnet_->channels().back(); }

 private:
  std::shared_ptr<resnet::ResNetBackbone> resnet_;
};

// A timm ResNet block (BasicBlock or Bottleneck) with frozen BatchNorm.
class TimmBlockImpl : public torch::nn::Module {
 public:
  TimmBlockImpl(bool bottleneck, int64_t in_channels, int64_t planes, int64_t stride, int64_t first_dilation, int64_t dilation,
                bool downsample)
      : bottleneck_(bottleneck) {
    using torch::nn::Conv2d;
    using torch::nn::Conv2dOptions;
    const int64_t out_channels = bottleneck ? planes * 4 : planes;
    if (bottleneck) {
      conv1_ = register_module("conv1", Conv2d(Conv2dOptions(in_channels, planes, 1).bias(false)));
      bn1_ = register_module("bn1", layers::FrozenBatchNorm2d(planes));
      conv2_ = register_module(
          "conv2", Conv2d(Conv2dOptions(planes, planes, 3).stride(stride).padding(first_dilation).dilation(first_dilation).bias(false)));
      bn2_ = register_module("bn2", layers::FrozenBatchNorm2d(planes));
      conv3_ = register_module("conv3", Conv2d(Conv2dOptions(planes, out_channels, 1).bias(false)));
      bn3_ = register_module("bn3", layers::FrozenBatchNorm2d(out_channels));
    } else {
      conv1_ = register_module(
          "conv1",
          Conv2d(Conv2dOptions(in_channels, planes, 3).stride(stride).padding(first_dilation).dilation(first_dilation).bias(false)));
      bn1_ = register_module("bn1", layers::FrozenBatchNorm2d(planes));
      conv2_ = register_module("conv2", Conv2d(Conv2dOptions(planes, planes, 3).padding(dilation).dilation(dilation).bias(false)));
      bn2_ = register_module("bn2", layers::FrozenBatchNorm2d(planes));
    }
    if (downsample) {
      auto sequence = layers::add_container(*this, "downsample");
      down_conv_ = sequence->register_module("0", Conv2d(Conv2dOptions(in_channels, out_channels, 1).stride(stride).bias(false)));
      down_bn_ = sequence->register_module("1", layers::FrozenBatchNorm2d(out_channels));
      down_ = layers::ConvolutionNorm(down_conv_, down_bn_);
    }
    block1_ = layers::ConvolutionNorm(conv1_, bn1_);
    block2_ = layers::ConvolutionNorm(conv2_, bn2_);
    if (bottleneck) block3_ = layers::ConvolutionNorm(conv3_, bn3_);
  }

  // Each convolution with its normalization (and the residual sum and ReLU after the last) as
  // one oneDNN kernel where it applies.
  // The sum is accumulated into the shortcut's memory where nothing else reads it (as in
  // ResNet's blocks): the block's input when the caller gives it up (no other handle, no view),
  // or the projection's fresh output when no gradient is recorded.
  torch::Tensor forward(torch::Tensor&& input) {
    const bool input_is_private = input.use_count() == 1 && input.storage().use_count() == 1;
    auto shortcut = down_conv_ ? down_(input) : input;
    const bool shortcut_is_private = down_conv_ ? !torch::GradMode::is_enabled() : input_is_private;
    auto x = block1_(input, {}, true);
    if (!bottleneck_) return block2_(x, shortcut, true, shortcut_is_private);
    x = block2_(x, {}, true);
    return block3_(x, shortcut, true, shortcut_is_private);
  }

 private:
  bool bottleneck_;
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr}, down_conv_{nullptr};
  layers::FrozenBatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr}, down_bn_{nullptr};
  layers::ConvolutionNorm block1_, block2_, block3_, down_;  // each convolution with its normalization
};
TORCH_MODULE(TimmBlock);

// timm's ResNet (features_only, out_indices 1-4) in its key layout: conv1, bn1, layer1..layer4.
class TimmResNetImpl : public torch::nn::Module {
 public:
  TimmResNetImpl(const DetrConfig& config) {
    const TimmDepths depths = timm_resnet(config.backbone, "config.json");
    conv1_ =
        register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(config.num_channels, 64, 7).stride(2).padding(3).bias(false)));
    bn1_ = register_module("bn1", layers::FrozenBatchNorm2d(64));
    stem_ = layers::ConvolutionNorm(conv1_, bn1_);
    int64_t in_channels = 64, dilation = 1;
    const int64_t expansion = depths.bottleneck ? 4 : 1;
    for (size_t stage = 0; stage < 4; ++stage) {
      const int64_t planes = 64 << stage;
      int64_t stride = stage == 0 ? 1 : 2;
      const int64_t previous_dilation = dilation;
      // DC5 models (dilation: true): the last stage keeps the resolution and dilates instead.
      if (stage == 3 && config.dilation) {
        dilation *= stride;
        stride = 1;
      }
      auto blocks = layers::add_container(*this, "layer" + std::to_string(stage + 1));
      std::vector<TimmBlock> stage_blocks;
      for (int64_t b = 0; b < depths.blocks[stage]; ++b) {
        const bool first = b == 0;
        stage_blocks.push_back(blocks->register_module(
            std::to_string(b),
            TimmBlock(depths.bottleneck, first ? in_channels : planes * expansion, planes, first ? stride : 1,
                      first ? previous_dilation : dilation, dilation, first && (stride != 1 || in_channels != planes * expansion))));
      }
      stages_.push_back(std::move(stage_blocks));
      in_channels = planes * expansion;
    }
    output_channels = in_channels;
  }

  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values) {
    auto x = torch::max_pool2d(stem_(pixel_values, {}, true), 3, 2, 1);
    std::vector<torch::Tensor> features;
    for (auto& stage : stages_) {
      for (auto& block : stage) x = block->forward(std::move(x));
      features.push_back(x);
    }
    return features;
  }

  int64_t output_channels = 0;

 private:
  torch::nn::Conv2d conv1_{nullptr};
  layers::FrozenBatchNorm2d bn1_{nullptr};
  layers::ConvolutionNorm stem_;  // conv1 with bn1
  std::vector<std::vector<TimmBlock>> stages_;
};
TORCH_MODULE(TimmResNet);

class TimmBackbone : public ConvBackbone {
 public:
  TimmBackbone(const DetrConfig& config, torch::nn::Module& conv_encoder)
      : resnet_(conv_encoder.register_module("model", TimmResNet(config))) {}
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values) override { return resnet_->forward(pixel_values); }
  int64_t output_channels() const override { return resnet_->output_channels; }

 private:
  TimmResNet resnet_;
};

torch::Tensor sine_position_embedding(const torch::Tensor& mask, int64_t embedding_dim) {
  // DetrSinePositionEmbedding(normalize=True, scale=2*pi, temperature=10000)
  const double scale = 2 * M_PI;
  auto y_embed = mask.cumsum(1, torch::kFloat32);
  auto x_embed = mask.cumsum(2, torch::kFloat32);
  y_embed = y_embed / (y_embed.slice(1, -1) + 1e-6) * scale;
  x_embed = x_embed / (x_embed.slice(2, -1) + 1e-6) * scale;
  auto dim_t = torch::arange(embedding_dim, torch::TensorOptions().dtype(torch::kInt64).device(mask.device())).to(torch::kFloat32);
  dim_t = torch::pow(10000.0, 2 * torch::div(dim_t, 2, "floor") / static_cast<double>(embedding_dim));
  auto interleave = [&](const torch::Tensor& embed) {
    auto pos = embed.unsqueeze(-1) / dim_t;
    using torch::indexing::Slice;
    return torch::stack(
               {pos.index({"...", Slice(0, torch::indexing::None, 2)}).sin(), pos.index({"...", Slice(1, torch::indexing::None, 2)}).cos()},
               4)
        .flatten(3);
  };
  return torch::cat({interleave(y_embed), interleave(x_embed)}, 3).permute({0, 3, 1, 2});
}

// _expand_mask: 1 = keep, 0 = padding -> 0 / the dtype's lowest value, as [B, 1, 1, S].
torch::Tensor additive_mask(const torch::Tensor& keep, torch::ScalarType dtype) {
  auto inverted = 1.0 - keep.to(dtype);
  const double lowest = dtype == torch::kFloat64    ? std::numeric_limits<double>::lowest()
                        : dtype == torch::kBFloat16 ? -3.3895313892515355e38
                        : dtype == torch::kFloat16  ? -65504.0
                                                    : static_cast<double>(std::numeric_limits<float>::lowest());
  return inverted.masked_fill(inverted.to(torch::kBool), lowest).unsqueeze(1).unsqueeze(1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Transformer

DetrAttentionImpl::DetrAttentionImpl(int64_t embed_dim, int64_t num_heads, double dropout)
    : embed_dim(embed_dim), num_heads(num_heads), dropout(dropout) {
  k_proj = register_module("k_proj", layers::Linear(embed_dim, embed_dim));
  v_proj = register_module("v_proj", layers::Linear(embed_dim, embed_dim));
  q_proj = register_module("q_proj", layers::Linear(embed_dim, embed_dim));
  out_proj = register_module("out_proj", layers::Linear(embed_dim, embed_dim));
}

torch::Tensor DetrAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& position, const torch::Tensor& key_value,
                                         const torch::Tensor& key_value_position, const torch::Tensor& mask) {
  const int64_t batch = hidden.size(0), target = hidden.size(1), head_dim = embed_dim / num_heads;
  const double scaling = std::pow(static_cast<double>(head_dim), -0.5);
  auto with_position = [](const torch::Tensor& x, const torch::Tensor& pos) { return pos.defined() ? x + pos : x; };
  auto split = [&](const torch::Tensor& x) { return x.view({batch, -1, num_heads, head_dim}).transpose(1, 2); };
  const bool cross = key_value.defined();
  auto query = split(q_proj(with_position(hidden, position)) * scaling);
  auto key = split(k_proj(cross ? with_position(key_value, key_value_position) : with_position(hidden, position)));
  auto value = split(v_proj(cross ? key_value : hidden));
  // The query is already scaled, in transformers' order.
  auto context = layers::scaled_dot_product_attention(query, key, value, mask, dropout, is_training(), /*scale=*/1.0);
  return out_proj(context.transpose(1, 2).reshape({batch, target, embed_dim}));
}

EncoderLayerImpl::EncoderLayerImpl(const DetrConfig& config) : config(config) {
  layers::activation(config.activation_function);  // an unknown name fails here, at construction
  self_attn = register_module("self_attn", DetrAttention(config.d_model, config.encoder_attention_heads, config.attention_dropout));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layers::LayerNorm(config.d_model, 1e-5));
  fc1 = register_module("fc1", layers::Linear(config.d_model, config.encoder_ffn_dim));
  fc2 = register_module("fc2", layers::Linear(config.encoder_ffn_dim, config.d_model));
  final_layer_norm = register_module("final_layer_norm", layers::LayerNorm(config.d_model, 1e-5));
}

torch::Tensor EncoderLayerImpl::forward(const torch::Tensor& input, const torch::Tensor& mask, const torch::Tensor& position) {
  const bool training = is_training();
  auto hidden = input;
  // Post-LayerNorm (DETR) normalises after each residual sum, pre-LayerNorm (Table Transformer) before each block.
  auto residual = hidden;
  if (config.pre_norm) hidden = self_attn_layer_norm(hidden);
  hidden = torch::dropout(self_attn->forward(hidden, position, {}, {}, mask), config.dropout, training) + residual;
  if (!config.pre_norm) hidden = self_attn_layer_norm(hidden);
  residual = hidden;
  if (config.pre_norm) hidden = final_layer_norm(hidden);
  hidden = torch::dropout(fc1->forward_then(hidden, config.activation_function), config.activation_dropout, training);
  hidden = torch::dropout(fc2(hidden), config.dropout, training) + residual;
  if (!config.pre_norm) hidden = final_layer_norm(hidden);
  if (training && (hidden.isinf().any().item<bool>() || hidden.isnan().any().item<bool>())) {
    const double clamp = static_cast<double>(std::numeric_limits<float>::max()) - 1000;
    hidden = hidden.clamp(-clamp, clamp);
  }
  return hidden;
}

DecoderLayerImpl::DecoderLayerImpl(const DetrConfig& config) : config(config) {
  layers::activation(config.activation_function);  // an unknown name fails here, at construction
  self_attn = register_module("self_attn", DetrAttention(config.d_model, config.decoder_attention_heads, config.attention_dropout));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layers::LayerNorm(config.d_model, 1e-5));
  encoder_attn = register_module("encoder_attn", DetrAttention(config.d_model, config.decoder_attention_heads, config.attention_dropout));
  encoder_attn_layer_norm = register_module("encoder_attn_layer_norm", layers::LayerNorm(config.d_model, 1e-5));
  fc1 = register_module("fc1", layers::Linear(config.d_model, config.decoder_ffn_dim));
  fc2 = register_module("fc2", layers::Linear(config.decoder_ffn_dim, config.d_model));
  final_layer_norm = register_module("final_layer_norm", layers::LayerNorm(config.d_model, 1e-5));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& input, const torch::Tensor& query_position, const torch::Tensor& memory,
                                        const torch::Tensor& memory_position, const torch::Tensor& memory_mask) {
  const bool training = is_training();
  auto hidden = input;
  auto residual = hidden;
  if (config.pre_norm) hidden = self_attn_layer_norm(hidden);
  hidden = torch::dropout(self_attn->forward(hidden, query_position, {}, {}, {}), config.dropout, training) + residual;
  if (!config.pre_norm) hidden = self_attn_layer_norm(hidden);

  residual = hidden;
  if (config.pre_norm) hidden = encoder_attn_layer_norm(hidden);
  hidden = torch::dropout(encoder_attn->forward(hidden, query_position, memory, memory_position, memory_mask), config.dropout, training) +
           residual;
  if (!config.pre_norm) hidden = encoder_attn_layer_norm(hidden);

  residual = hidden;
  if (config.pre_norm) hidden = final_layer_norm(hidden);
  hidden = torch::dropout(fc1->forward_then(hidden, config.activation_function), config.activation_dropout, training);
  hidden = torch::dropout(fc2(hidden), config.dropout, training) + residual;
  if (!config.pre_norm) hidden = final_layer_norm(hidden);
  return hidden;
}

// ---------------------------------------------------------------------------------------------
// The model

DetrForObjectDetection::DetrForObjectDetection(const DetrConfig& config, bool with_heads) : config(config), with_heads(with_heads) {
  std::shared_ptr<torch::nn::Module> model = with_heads ? layers::add_container(*this, "model") : nullptr;
  torch::nn::Module& body = with_heads ? *model : *this;
  auto backbone_container = layers::add_container(body, "backbone");
  auto conv_encoder = layers::add_container(*backbone_container, "conv_encoder");
  if (config.use_timm_backbone) {
    backbone = std::make_unique<TimmBackbone>(config, *conv_encoder);
  } else {
    backbone = std::make_unique<HfResNetBackbone>(config, *conv_encoder);
  }
  // transformers freezes the backbone by parameter name: for timm, everything outside layer2-4;
  // for its own ResNet the test looks for "stage.N", which its names ("stages.N") never contain,
  // so the whole backbone is frozen. Both kept as they are, for the same training behaviour.
  for (auto& item : conv_encoder->named_parameters()) {
    const std::string& name = item.key();
    const bool trainable = config.use_timm_backbone
                               ? name.find("layer2") != std::string::npos || name.find("layer3") != std::string::npos ||
                                     name.find("layer4") != std::string::npos
                               : name.find("stage.1") != std::string::npos || name.find("stage.2") != std::string::npos ||
                                     name.find("stage.3") != std::string::npos;
    if (!trainable) item.value().requires_grad_(false);
  }
  if (config.position_embedding_type == "learned") {
    auto position = layers::add_container(*backbone_container, "position_embedding");
    row_embeddings = layers::add_container(*position, "row_embeddings")
                         ->register_parameter("weight", torch::rand({kLearnedPositions, config.d_model / 2}));
    column_embeddings = layers::add_container(*position, "column_embeddings")
                            ->register_parameter("weight", torch::rand({kLearnedPositions, config.d_model / 2}));
  }
  input_projection =
      body.register_module("input_projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(backbone->output_channels(), config.d_model, 1)));
  query_position_embeddings = layers::add_container(body, "query_position_embeddings")
                                  ->register_parameter("weight", torch::randn({config.num_queries, config.d_model}));
  auto encoder = layers::add_container(body, "encoder");
  auto encoder_list = layers::add_container(*encoder, "layers");
  for (int64_t i = 0; i < config.encoder_layers; ++i) {
    encoder_layers.push_back(encoder_list->register_module(std::to_string(i), EncoderLayer(config)));
  }
  if (config.pre_norm) encoder_layernorm = encoder->register_module("layernorm", layers::LayerNorm(config.d_model, 1e-5));
  auto decoder = layers::add_container(body, "decoder");
  auto decoder_list = layers::add_container(*decoder, "layers");
  for (int64_t i = 0; i < config.decoder_layers; ++i) {
    decoder_layers.push_back(decoder_list->register_module(std::to_string(i), DecoderLayer(config)));
  }
  decoder_layernorm = decoder->register_module("layernorm", layers::LayerNorm(config.d_model, 1e-5));
  if (!with_heads) return;
  // One more class than labels: the last is "no object".
  class_labels_classifier = register_module("class_labels_classifier", layers::Linear(config.d_model, config.head.num_labels() + 1));
  auto bbox_layers = layers::add_container(*layers::add_container(*this, "bbox_predictor"), "layers");
  for (int64_t i = 0; i < 3; ++i) {
    bbox_predictor.push_back(bbox_layers->register_module(std::to_string(i), layers::Linear(config.d_model, i == 2 ? 4 : config.d_model)));
  }
}

bool DetrForObjectDetection::is_head_key(const std::string& key) const {
  return key.rfind("class_labels_classifier.", 0) == 0 || key.rfind("bbox_predictor.", 0) == 0;
}

void DetrForObjectDetection::init_module(const std::string& name, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  const double std = config.init_std;
  if (layers::init_normal(module, std)) {
    return;
  } else if (name.size() >= 25 && name.compare(name.size() - 25, 25, "query_position_embeddings") == 0) {
    query_position_embeddings.normal_(0.0, std);
  } else if (name.find("position_embedding.row_embeddings") != std::string::npos) {
    row_embeddings.uniform_(0.0, 1.0);
  } else if (name.find("position_embedding.column_embeddings") != std::string::npos) {
    column_embeddings.uniform_(0.0, 1.0);
  }
}

DetrOutputs DetrForObjectDetection::run(const torch::Tensor& pixel_values, const torch::Tensor& pixel_mask_in) {
  check_pixel_values(pixel_values, config.num_channels);
  const int64_t batch = pixel_values.size(0);
  auto pixel_mask = pixel_mask_in.defined()
                        ? pixel_mask_in
                        : torch::ones({batch, pixel_values.size(2), pixel_values.size(3)}, pixel_values.options().dtype(torch::kInt64));
  VT_CHECK(pixel_mask.dim() == 3 && pixel_mask.size(0) == batch && pixel_mask.size(1) == pixel_values.size(2) &&
               pixel_mask.size(2) == pixel_values.size(3),
           "pixel_mask: expected shape [", batch, ", ", pixel_values.size(2), ", ", pixel_values.size(3), "], got ", pixel_mask.sizes());
  const auto dtype = input_projection->weight.scalar_type();
  auto feature_map = backbone->forward(pixel_values.to(dtype)).back();
  const int64_t height = feature_map.size(2), width = feature_map.size(3);
  // The padding mask at the feature map's resolution (nearest, as F.interpolate's default).
  auto mask = torch::nn::functional::interpolate(
                  pixel_mask.unsqueeze(0).to(torch::kFloat32),
                  torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{height, width}).mode(torch::kNearest))
                  .to(torch::kBool)
                  .squeeze(0);
  torch::Tensor position;
  if (config.position_embedding_type == "sine") {
    position = sine_position_embedding(mask, config.d_model / 2);
  } else {
    VT_CHECK(height <= kLearnedPositions && width <= kLearnedPositions, "learned position embeddings cover ", kLearnedPositions, "x",
             kLearnedPositions, " feature positions, the feature map is ", height, "x", width);
    auto x_emb = column_embeddings.slice(0, 0, width);
    auto y_emb = row_embeddings.slice(0, 0, height);
    position = torch::cat({x_emb.unsqueeze(0).repeat({height, 1, 1}), y_emb.unsqueeze(1).repeat({1, width, 1})}, -1)
                   .permute({2, 0, 1})
                   .unsqueeze(0)
                   .repeat({batch, 1, 1, 1});
  }
  position = position.to(dtype).flatten(2).permute({0, 2, 1});
  auto flattened_mask = mask.flatten(1);
  auto attention_mask = additive_mask(flattened_mask, dtype);

  const bool training = is_training();
  auto hidden = torch::dropout(input_projection(feature_map).flatten(2).permute({0, 2, 1}), config.dropout, training);
  for (auto& layer : encoder_layers) {
    // LayerDrop, as transformers draws it (one draw per layer in training).
    if (training && config.encoder_layerdrop > 0 && torch::rand({}).item<double>() < config.encoder_layerdrop) continue;
    hidden = layer(hidden, attention_mask, position);
  }
  if (encoder_layernorm) hidden = encoder_layernorm(hidden);
  auto memory = hidden;

  auto query_position = query_position_embeddings.unsqueeze(0).repeat({batch, 1, 1});
  auto queries = torch::zeros_like(query_position);
  std::vector<torch::Tensor> intermediate;
  for (auto& layer : decoder_layers) {
    if (training && config.decoder_layerdrop > 0 && torch::rand({}).item<double>() < config.decoder_layerdrop) continue;
    queries = layer(queries, query_position, memory, position, attention_mask);
    // With auxiliary_loss transformers normalises each layer's output, and feeds that on.
    if (config.auxiliary_loss) {
      queries = decoder_layernorm(queries);
      intermediate.push_back(queries);
    }
  }
  queries = decoder_layernorm(queries);

  DetrOutputs outputs;
  outputs.last_hidden_state = queries;
  outputs.encoder_last_hidden_state = memory;
  if (!with_heads) return outputs;
  auto predict_boxes = [&](torch::Tensor x) {
    for (size_t i = 0; i < bbox_predictor.size(); ++i) {
      x = bbox_predictor[i](x);
      if (i + 1 < bbox_predictor.size()) x = torch::relu(x);
    }
    return x.sigmoid();
  };
  outputs.logits = class_labels_classifier(queries);
  outputs.pred_boxes = predict_boxes(queries);
  for (size_t i = 0; i + 1 < intermediate.size(); ++i) {
    outputs.aux_logits.push_back(class_labels_classifier(intermediate[i]));
    outputs.aux_boxes.push_back(predict_boxes(intermediate[i]));
  }
  return outputs;
}

ModelOutputs DetrForObjectDetection::forward(const ModelInputs& inputs) {
  DetrOutputs out = run(inputs.pixel_values, inputs.pixel_mask);
  ModelOutputs outputs;
  if (!with_heads) {
    VT_CHECK(!inputs.has_labels(), config.pre_norm ? "TableTransformerModel" : "DetrModel", " has no task head, so it takes no labels");
    return {{"last_hidden_state", out.last_hidden_state}, {"encoder_last_hidden_state", out.encoder_last_hidden_state}};
  }
  if (!inputs.targets.empty()) {
    VT_CHECK(!inputs.labels.defined(), "labels: detection takes one {class_labels, boxes} per image, not a tensor");
    losses::SetLoss set_loss = losses::detr_set_loss(config.set_loss, config.head.num_labels(), out.logits, out.pred_boxes, out.aux_logits,
                                                     out.aux_boxes, inputs.targets);
    outputs.emplace_back("loss", set_loss.loss);
    for (auto& [name, value] : set_loss.parts) outputs.emplace_back("loss_dict." + name, value);
  } else {
    VT_CHECK(!inputs.labels.defined(), "labels: detection takes one {class_labels, boxes} per image, not a tensor");
  }
  outputs.emplace_back("logits", out.logits);
  outputs.emplace_back("pred_boxes", out.pred_boxes);
  outputs.emplace_back("last_hidden_state", out.last_hidden_state);
  outputs.emplace_back("encoder_last_hidden_state", out.encoder_last_hidden_state);
  return outputs;
}

}  // namespace vt::detr
