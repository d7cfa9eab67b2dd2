// SegFormer (Xie et al.), as transformers' modeling_segformer.py: the Mix Transformer encoder
// (overlapping patch embeddings, efficient self-attention with spatial reduction, Mix-FFN with a
// depthwise 3x3 convolution, stochastic depth, a LayerNorm per stage) and the all-MLP decode head,
// with transformers' module names.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"

namespace vt::segformer {

struct SegformerConfig {
  int64_t num_channels = 3;
  int64_t num_encoder_blocks = 4;
  std::vector<int64_t> depths{2, 2, 2, 2};
  std::vector<int64_t> sr_ratios{8, 4, 2, 1};
  std::vector<int64_t> hidden_sizes{32, 64, 160, 256};
  std::vector<int64_t> patch_sizes{7, 3, 3, 3};
  std::vector<int64_t> strides{4, 2, 2, 2};
  std::vector<int64_t> num_attention_heads{1, 2, 5, 8};
  std::vector<int64_t> mlp_ratios{4, 4, 4, 4};
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0, attention_probs_dropout_prob = 0.0, classifier_dropout_prob = 0.1;
  double drop_path_rate = 0.1;
  int64_t decoder_hidden_size = 256;
  bool reshape_last_stage = true;
  int64_t semantic_loss_ignore_index = 255;
  HeadConfig head;

  static SegformerConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

class MixLayerImpl : public torch::nn::Module {
 public:
  MixLayerImpl(const SegformerConfig& config, int64_t hidden, int64_t heads, int64_t sr_ratio, int64_t mlp_ratio, double drop_path);
  torch::Tensor forward(const torch::Tensor& hidden, int64_t height, int64_t width);
  const SegformerConfig& config;
  int64_t hidden_size, heads, sr_ratio;
  double drop_path;
  layers::Activation act;
  layers::LayerNorm layer_norm_1{nullptr}, layer_norm_2{nullptr}, sr_norm{nullptr};
  layers::Linear query{nullptr}, key{nullptr}, value{nullptr}, attention_output{nullptr}, dense1{nullptr}, dense2{nullptr};
  torch::nn::Conv2d sr{nullptr}, dwconv{nullptr};
};
TORCH_MODULE(MixLayer);

// The encoder, registered into `owner` (SegformerModel itself, or the "segformer" container).
struct MixTransformer {
  MixTransformer(const SegformerConfig& config, torch::nn::Module& owner);
  // Each stage's output as [B, C, H, W] (the last one [B, HW, C] when reshape_last_stage is false).
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values);
  SegformerConfig config;
  std::vector<torch::nn::Conv2d> patch_projections;
  std::vector<layers::LayerNorm> patch_norms, stage_norms;
  std::vector<std::vector<MixLayer>> blocks;
};

class SegformerModuleBase : public VisionModule {
 public:
  explicit SegformerModuleBase(SegformerConfig config) : config(std::move(config)) {}
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "segformer"; }
  SegformerConfig config;
};

class SegformerModel : public SegformerModuleBase {
 public:
  explicit SegformerModel(const SegformerConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  std::unique_ptr<MixTransformer> encoder;
};

class SegformerForSemanticSegmentation : public SegformerModuleBase {
 public:
  explicit SegformerForSemanticSegmentation(const SegformerConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return key.rfind("decode_head.", 0) == 0; }
  std::unique_ptr<MixTransformer> segformer;
  std::vector<layers::Linear> linear_c;  // decode_head.linear_c.i.proj
  torch::nn::Conv2d linear_fuse{nullptr}, classifier{nullptr};
  torch::nn::BatchNorm2d batch_norm{nullptr};
};

}  // namespace vt::segformer
