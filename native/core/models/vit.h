// ViT (Dosovitskiy et al.), as transformers' modeling_vit.py: ViTModel and
// ViTForImageClassification with the same module names, so checkpoints load by key.
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"

namespace vt::vit {

struct ViTConfig {
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  double layer_norm_eps = 1e-12;
  int64_t image_height = 224, image_width = 224;  // image_size: an int or [h, w]
  int64_t patch_height = 16, patch_width = 16;    // patch_size: an int or [h, w]
  int64_t num_channels = 3;
  bool qkv_bias = true;
  HeadConfig head;

  int64_t grid_height() const { return image_height / patch_height; }
  int64_t grid_width() const { return image_width / patch_width; }
  int64_t num_patches() const { return grid_height() * grid_width(); }

  static ViTConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

class ViTEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTEmbeddingsImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& pixel_values);
  ViTConfig config;
  torch::Tensor cls_token, position_embeddings;
  torch::nn::Conv2d projection{nullptr};  // patch_embeddings.projection
};
TORCH_MODULE(ViTEmbeddings);

class ViTLayerImpl : public torch::nn::Module {
 public:
  explicit ViTLayerImpl(const ViTConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);
  ViTConfig config;
  layers::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  layers::Linear query{nullptr}, key{nullptr}, value{nullptr};  // attention.attention.*
  layers::Linear attention_output{nullptr};                     // attention.output.dense
  layers::Linear intermediate{nullptr};                         // intermediate.dense
  layers::Linear output{nullptr};                               // output.dense
};
TORCH_MODULE(ViTLayer);

// ViTModel's body. It registers its modules into `owner` (the ViTModel itself, or the "vit"
// container of ViTForImageClassification), so parameter names are transformers' keys.
struct ViTBody {
  ViTBody(const ViTConfig& config, torch::nn::Module& owner, bool add_pooling_layer);
  // Returns (last_hidden_state, pooler_output or undefined).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& pixel_values, bool checkpoint_layers);
  ViTConfig config;
  ViTEmbeddings embeddings{nullptr};
  std::vector<ViTLayer> layers;  // encoder.layer.N
  layers::LayerNorm layernorm{nullptr};
  layers::Linear pooler{nullptr};  // pooler.dense, absent without pooling layer
};

class ViTModuleBase : public VisionModule {
 public:
  explicit ViTModuleBase(ViTConfig config) : config(std::move(config)) {}
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "vit"; }
  bool adapt_checkpoint_tensor(const std::string& key, torch::Tensor& tensor, torch::IntArrayRef target_shape) override;
  ViTConfig config;
};

class ViTModel : public ViTModuleBase {
 public:
  explicit ViTModel(const ViTConfig& config, bool add_pooling_layer = true);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override;
  std::unique_ptr<ViTBody> body;
};

class ViTForImageClassification : public ViTModuleBase {
 public:
  explicit ViTForImageClassification(const ViTConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override;
  std::unique_ptr<ViTBody> vit;
  layers::Linear classifier{nullptr};  // absent when num_labels == 0 (identity, as in transformers)
};

}  // namespace vt::vit
