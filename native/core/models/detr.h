// DETR (Carion et al.) and Table Transformer, as transformers' modeling_detr.py and
// modeling_table_transformer.py: a ResNet backbone with frozen BatchNorm (transformers' own
// ResNetBackbone, or timm's ResNet key layout as in facebook/detr-resnet-50), sine or learned
// position embeddings, a post-LayerNorm (DETR) or pre-LayerNorm (Table Transformer)
// encoder-decoder, class and box heads, and the Hungarian-matched loss with auxiliary losses.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "losses/detr_set_loss.h"
#include "models/resnet.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace vt::detr {

struct DetrConfig {
  bool pre_norm = false;  // Table Transformer: LayerNorm before each block, and after the encoder
  std::string model_type = "detr";
  int64_t d_model = 256;
  int64_t encoder_layers = 6, decoder_layers = 6;
  int64_t encoder_attention_heads = 8, decoder_attention_heads = 8;
  int64_t encoder_ffn_dim = 2048, decoder_ffn_dim = 2048;
  std::string activation_function = "relu";
  double dropout = 0.1, attention_dropout = 0.0, activation_dropout = 0.0;
  double encoder_layerdrop = 0.0, decoder_layerdrop = 0.0;
  int64_t num_queries = 100;
  std::string position_embedding_type = "sine";  // or "learned"
  bool auxiliary_loss = false;
  losses::SetLossConfig set_loss;  // the matcher's costs and the loss weights
  double init_std = 0.02;
  int64_t num_channels = 3;
  // Backbone: transformers' ResNetBackbone from backbone_config, or a timm ResNet by name.
  bool use_timm_backbone = true;
  std::string backbone = "resnet50";
  bool dilation = false;
  resnet::ResNetConfig backbone_config;
  HeadConfig head;

  static DetrConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

// DetrAttention: multi-head attention whose queries and keys get position embeddings added
// before their projections, and whose queries are scaled before the product.
class DetrAttentionImpl : public torch::nn::Module {
 public:
  DetrAttentionImpl(int64_t embed_dim, int64_t num_heads, double dropout);
  // `key_value` undefined: self-attention on `hidden`. `additive_mask`: [B, 1, 1, S] or undefined.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& position, const torch::Tensor& key_value,
                        const torch::Tensor& key_value_position, const torch::Tensor& additive_mask);
  int64_t embed_dim, num_heads;
  double dropout;
  layers::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(DetrAttention);

class EncoderLayerImpl : public torch::nn::Module {
 public:
  explicit EncoderLayerImpl(const DetrConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& additive_mask, const torch::Tensor& position);
  DetrConfig config;
  DetrAttention self_attn{nullptr};
  layers::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  layers::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(EncoderLayer);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const DetrConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& query_position, const torch::Tensor& memory,
                        const torch::Tensor& memory_position, const torch::Tensor& memory_mask);
  DetrConfig config;
  DetrAttention self_attn{nullptr}, encoder_attn{nullptr};
  layers::LayerNorm self_attn_layer_norm{nullptr}, encoder_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  layers::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The convolutional backbone: feature maps of the configured ResNet (the last one is used).
class ConvBackbone {
 public:
  virtual ~ConvBackbone() = default;
  virtual std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values) = 0;
  virtual int64_t output_channels() const = 0;
};

struct DetrOutputs {
  torch::Tensor logits, pred_boxes;  // [B, Q, num_labels + 1], [B, Q, 4]
  torch::Tensor last_hidden_state, encoder_last_hidden_state;
  std::vector<torch::Tensor> aux_logits, aux_boxes;  // per decoder layer but the last, with auxiliary_loss
};

// DetrForObjectDetection / TableTransformerForObjectDetection, or without heads (`with_heads`
// false) DetrModel / TableTransformerModel, whose keys lack the "model." prefix.
class DetrForObjectDetection : public VisionModule {
 public:
  explicit DetrForObjectDetection(const DetrConfig& config, bool with_heads = true);
  ModelOutputs forward(const ModelInputs& inputs) override;
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "model"; }
  bool is_head_key(const std::string& key) const override;
  bool prefers_channels_last() const override { return false; }

  DetrOutputs run(const torch::Tensor& pixel_values, const torch::Tensor& pixel_mask);

  DetrConfig config;
  bool with_heads;
  std::unique_ptr<ConvBackbone> backbone;           // model.backbone.conv_encoder.model
  torch::Tensor row_embeddings, column_embeddings;  // learned position embeddings, [50, d_model / 2]
  torch::nn::Conv2d input_projection{nullptr};
  torch::Tensor query_position_embeddings;  // model.query_position_embeddings.weight
  std::vector<EncoderLayer> encoder_layers;
  layers::LayerNorm encoder_layernorm{nullptr};  // Table Transformer only
  std::vector<DecoderLayer> decoder_layers;
  layers::LayerNorm decoder_layernorm{nullptr};
  layers::Linear class_labels_classifier{nullptr};
  std::vector<layers::Linear> bbox_predictor;  // bbox_predictor.layers.0..2
};

}  // namespace vt::detr
