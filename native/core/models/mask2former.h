// Mask2Former (Cheng et al.), as transformers 4.31's modeling_mask2former.py: a Swin backbone, the
// pixel decoder (input projections with GroupNorm, sine position and level embeddings, a
// multi-scale deformable-attention encoder sampled with grid_sample, an FPN level up to the common
// stride, the mask projection), the masked-attention transformer decoder (cross-attention restricted
// to the previous layer's predicted masks, then self-attention, then FFN, cycling over three feature
// levels), the mask and class predictors, and the point-sampled Hungarian loss
// (losses/mask2former_loss.h), with transformers' module names.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "losses/mask2former_loss.h"
#include "models/detr.h"
#include "models/swin.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace vt::mask2former {

// transformers' fixed choices: three feature levels in the deformable encoder and the decoder,
// four sampling points per head and level.
constexpr int64_t kFeatureLevels = 3;
constexpr int64_t kSamplingPoints = 4;

struct Mask2FormerConfig {
  swin::SwinConfig backbone_config;
  int64_t feature_size = 256;       // pixel decoder channels
  int64_t mask_feature_size = 256;  // mask features (and mask embeddings)
  int64_t hidden_dim = 256;         // transformer decoder width
  int64_t encoder_feedforward_dim = 1024;
  std::string activation_function = "relu";  // the transformer decoder's FFN (the pixel decoder's is ReLU)
  int64_t encoder_layers = 6;
  int64_t decoder_layers = 10;  // the decoder has decoder_layers - 1 layers
  int64_t num_attention_heads = 8;
  double dropout = 0.0;  // also the decoder's LayerDrop probability, as transformers
  int64_t dim_feedforward = 2048;
  bool pre_norm = false;
  bool enforce_input_projection = false;
  int64_t common_stride = 4;
  int64_t ignore_value = 255;
  int64_t num_queries = 100;
  std::vector<int64_t> feature_strides{4, 8, 16, 32};
  double init_std = 0.02, init_xavier_std = 1.0;
  losses::Mask2FormerLossConfig loss;  // weights, point sampling, use_auxiliary_loss
  HeadConfig head;                     // id2label: num_labels classes (+1 "no object" in the logits)

  int64_t num_labels() const { return head.num_labels(); }
  static Mask2FormerConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

// ---------------------------------------------------------------------------------------------
// Pixel decoder

// Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.
class MultiscaleDeformableAttentionImpl : public torch::nn::Module {
 public:
  MultiscaleDeformableAttentionImpl(int64_t embed_dim, int64_t num_heads, int64_t n_levels, int64_t n_points);
  // hidden [B, S, C] (keys and values), position [B, S, C], reference_points [B, S, levels, 2] in
  // [0, 1], spatial_shapes {height, width} per level (S = sum of height * width).
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& position, const torch::Tensor& reference_points,
                        const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes);
  int64_t embed_dim, num_heads, n_levels, n_points;
  layers::Linear sampling_offsets{nullptr}, attention_weights{nullptr}, value_proj{nullptr}, output_proj{nullptr};
};
TORCH_MODULE(MultiscaleDeformableAttention);

// transformers' multi_scale_deformable_attention (the pure PyTorch version): bilinear samples of
// each level's values (grid_sample, zero padding, align_corners false), weighted and summed.
// value [B, S, heads, head_dim], sampling_locations [B, Q, heads, levels, points, 2],
// attention_weights [B, Q, heads, levels, points] -> [B, Q, heads * head_dim].
torch::Tensor multi_scale_deformable_attention(const torch::Tensor& value, const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes,
                                               const torch::Tensor& sampling_locations, const torch::Tensor& attention_weights);

// Mask2FormerSinePositionEmbedding(normalize=True, scale=2*pi) of an unpadded [B, C, H, W] map:
// [B, 2 * num_pos_feats, H, W].
torch::Tensor sine_position_embedding(const torch::Tensor& like, int64_t num_pos_feats);

class PixelDecoderEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit PixelDecoderEncoderLayerImpl(const Mask2FormerConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& position, const torch::Tensor& reference_points,
                        const std::vector<std::pair<int64_t, int64_t>>& spatial_shapes);
  double dropout;
  MultiscaleDeformableAttention self_attn{nullptr};
  layers::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  layers::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(PixelDecoderEncoderLayer);

// A convolution followed by GroupNorm(32) (and ReLU for the FPN's output convolutions), as the
// nn.Sequential transformers registers: "<name>.0" and "<name>.1".
struct ConvGroupNorm {
  ConvGroupNorm() = default;
  ConvGroupNorm(torch::nn::Module& parent, const std::string& name, int64_t in_channels, int64_t out_channels, int64_t kernel, bool bias);
  torch::Tensor operator()(const torch::Tensor& input);
  torch::nn::Conv2d convolution{nullptr};
  torch::nn::GroupNorm norm{nullptr};
};

struct PixelDecoderOutput {
  std::vector<torch::Tensor> multi_scale_features;  // 3 maps [B, feature_size, h, w], low to high resolution
  torch::Tensor mask_features;                      // [B, mask_feature_size, H/stride, W/stride]
};

// Mask2FormerPixelDecoder, registered as "pixel_level_module.decoder".
class PixelDecoderImpl : public torch::nn::Module {
 public:
  PixelDecoderImpl(const Mask2FormerConfig& config, const std::vector<int64_t>& feature_channels);
  // Backbone feature maps in stage order (high to low resolution).
  PixelDecoderOutput forward(const std::vector<torch::Tensor>& features);
  Mask2FormerConfig config;
  int64_t num_fpn_levels;
  torch::Tensor level_embed;                     // [3, feature_size]
  std::vector<ConvGroupNorm> input_projections;  // input_projections.i: lowest resolution first
  std::vector<PixelDecoderEncoderLayer> encoder_layers;
  torch::nn::Conv2d mask_projection{nullptr};
  std::vector<ConvGroupNorm> adapters, layers;  // adapter_<i+1>, layer_<i+1>: feature map i
};
TORCH_MODULE(PixelDecoder);

// ---------------------------------------------------------------------------------------------
// Transformer decoder

// nn.MultiheadAttention's parameters (in_proj_weight, in_proj_bias, out_proj) and its arithmetic
// (queries scaled by 1/sqrt(head_dim), boolean mask -> -inf), batch-first.
class MaskedCrossAttentionImpl : public torch::nn::Module {
 public:
  MaskedCrossAttentionImpl(int64_t embed_dim, int64_t num_heads, double dropout);
  // query [B, Q, C], key/value [B, S, C], mask [B * heads, Q, S] boolean (true = not attended) or undefined.
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value, const torch::Tensor& mask);
  int64_t embed_dim, num_heads;
  double dropout;
  torch::Tensor in_proj_weight, in_proj_bias;
  layers::Linear out_proj{nullptr};
};
TORCH_MODULE(MaskedCrossAttention);

class MaskedAttentionDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit MaskedAttentionDecoderLayerImpl(const Mask2FormerConfig& config);
  // Batch-first: hidden [B, Q, C], features/positions [B, S, C] of the layer's level.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& query_position, const torch::Tensor& features,
                        const torch::Tensor& features_position, const torch::Tensor& attention_mask);
  bool pre_norm;
  double dropout;
  std::string activation_function;
  detr::DetrAttention self_attn{nullptr};  // Mask2FormerAttention is DetrAttention
  MaskedCrossAttention cross_attn{nullptr};
  layers::LayerNorm self_attn_layer_norm{nullptr}, cross_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  layers::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(MaskedAttentionDecoderLayer);

struct DecoderOutput {
  std::vector<torch::Tensor> intermediate_hidden_states;  // [B, Q, C] after the decoder's LayerNorm: queries, then each layer
  std::vector<torch::Tensor> masks_queries_logits;        // [B, Q, h, w] predicted from each of them
  torch::Tensor last_hidden_state;                        // [B, Q, C], the last layer's output
};

// Mask2FormerTransformerModule with its decoder, registered as "transformer_module".
class TransformerModuleImpl : public torch::nn::Module {
 public:
  explicit TransformerModuleImpl(const Mask2FormerConfig& config);
  DecoderOutput forward(const std::vector<torch::Tensor>& multi_scale_features, const torch::Tensor& mask_features);
  // Mask2FormerMaskPredictor: mask logits [B, Q, h, w] and the boolean attention mask
  // [B * heads, Q, size] for the next layer (true where the mask's probability is below 0.5).
  std::pair<torch::Tensor, torch::Tensor> predict_masks(const torch::Tensor& hidden, const torch::Tensor& mask_features,
                                                        std::pair<int64_t, int64_t> attention_size);
  Mask2FormerConfig config;
  torch::Tensor queries_embedder, queries_features, level_embed;  // <name>.weight
  // transformers keeps these in a plain list: not registered, so neither in the state dict nor
  // trained; identities unless feature_size != hidden_dim or enforce_input_projection.
  std::vector<torch::nn::Conv2d> input_projections;
  std::vector<MaskedAttentionDecoderLayer> decoder_layers;  // decoder.layers.i
  layers::LayerNorm decoder_layernorm{nullptr};             // decoder.layernorm
  std::vector<layers::Linear> mask_embedder;                // decoder.mask_predictor.mask_embedder.i.0
};
TORCH_MODULE(TransformerModule);

// ---------------------------------------------------------------------------------------------
// Models

struct Mask2FormerOutputs {
  torch::Tensor encoder_last_hidden_state;              // the backbone's last feature map
  torch::Tensor pixel_decoder_last_hidden_state;        // the mask features
  torch::Tensor transformer_decoder_last_hidden_state;  // [B, Q, C]
  DecoderOutput decoder;
};

// pixel_level_module (Swin encoder + pixel decoder) and transformer_module, registered into `owner`
// (Mask2FormerModel itself, or the "model" container of the segmentation model).
struct Mask2FormerBody {
  Mask2FormerBody(const Mask2FormerConfig& config, torch::nn::Module& owner);
  // With `gradient_checkpointing` (training), the Swin backbone's blocks are recomputed in backward.
  Mask2FormerOutputs forward(const torch::Tensor& pixel_values, bool training, bool gradient_checkpointing = false);
  Mask2FormerConfig config;
  std::unique_ptr<swin::SwinBackbone> backbone;  // pixel_level_module.encoder
  PixelDecoder pixel_decoder{nullptr};           // pixel_level_module.decoder
  TransformerModule transformer_module{nullptr};
};

class Mask2FormerPreTrainedModel : public VisionModule {
 public:
  explicit Mask2FormerPreTrainedModel(Mask2FormerConfig config) : config(std::move(config)) {}
  // Mask2FormerPreTrainedModel._init_weights as transformers applies it (children before their
  // parents), so what the checkpoint of a fresh model holds: everything in the pixel level module
  // normal(init_std) (its decoder's xavier and deformable-attention initialisation are overwritten
  // by that), level_embed zeros, decoder layers xavier_uniform(init_xavier_std), embeddings
  // normal(init_std).
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "model"; }
  Mask2FormerConfig config;

 protected:
  std::unique_ptr<Mask2FormerBody> body_;
  std::string prefix_;  // "model." for the segmentation model, "" for the base model
};

// Mask2FormerModel: no heads; outputs encoder_last_hidden_state, pixel_decoder_last_hidden_state,
// transformer_decoder_last_hidden_state.
class Mask2FormerModel : public Mask2FormerPreTrainedModel {
 public:
  explicit Mask2FormerModel(const Mask2FormerConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  Mask2FormerOutputs run(const torch::Tensor& pixel_values);
};

struct SegmentationOutputs {
  std::vector<torch::Tensor> class_queries_logits;  // [B, Q, num_labels + 1] per prediction (the last is the output)
  std::vector<torch::Tensor> masks_queries_logits;  // [B, Q, H/4, W/4] per prediction
  Mask2FormerOutputs model;
};

// Mask2FormerForUniversalSegmentation: class_queries_logits, masks_queries_logits; with targets
// (class_labels and mask_labels per image) also loss and loss_dict.<name> (unweighted).
class Mask2FormerForUniversalSegmentation : public Mask2FormerPreTrainedModel {
 public:
  explicit Mask2FormerForUniversalSegmentation(const Mask2FormerConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  // class_predictor, and criterion.empty_weight (rebuilt from no_object_weight when absent).
  bool is_head_key(const std::string& key) const override;
  bool takes_mask_targets() const override { return true; }
  SegmentationOutputs run(const torch::Tensor& pixel_values);
  layers::Linear class_predictor{nullptr};
  torch::Tensor empty_weight;  // criterion.empty_weight
};

}  // namespace vt::mask2former
