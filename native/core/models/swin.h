// Swin Transformer (Liu et al.), as transformers' modeling_swin.py: patch embeddings padded to the
// patch size, window attention with a relative position bias table, shifted windows (a cyclic
// roll and the -100 attention mask), padding to a multiple of the window, patch merging, stochastic
// depth; SwinModel, SwinForImageClassification and the backbone Mask2Former uses (feature maps
// of `out_features`, each through its own LayerNorm), with transformers' module names.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"

namespace vt::swin {

struct SwinConfig {
  // image_size and patch_size: an integer or [height, width], as transformers' SwinPatchEmbeddings takes them.
  int64_t image_height = 224, image_width = 224;
  int64_t patch_height = 4, patch_width = 4;
  int64_t num_channels = 3;
  int64_t embed_dim = 96;
  std::vector<int64_t> depths{2, 2, 6, 2};
  std::vector<int64_t> num_heads{3, 6, 12, 24};
  int64_t window_size = 7;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  double hidden_dropout_prob = 0.0, attention_probs_dropout_prob = 0.0, drop_path_rate = 0.1;
  std::string hidden_act = "gelu";
  bool use_absolute_embeddings = false;
  double layer_norm_eps = 1e-5;
  // The backbone's outputs: "stem", "stage1", ... (config.json's out_features, else out_indices,
  // else the last stage, as transformers' get_aligned_output_features_output_indices).
  std::vector<std::string> out_features;
  HeadConfig head;

  std::vector<std::string> stage_names() const;  // "stem", "stage1", ..., "stage<len(depths)>"
  int64_t num_features() const;                  // channels of the last stage: embed_dim * 2^(stages-1)
  int64_t channels_of(const std::string& stage) const;
  static SwinConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

class SwinLayerImpl : public torch::nn::Module {
 public:
  SwinLayerImpl(const SwinConfig& config, int64_t dim, int64_t num_heads, int64_t shift_size, double drop_path);
  // tokens [B, height * width, dim] -> same shape. Unless `always_partition` (the backbone), a
  // feature map no larger than the window is attended as one window without shift, as SwinModel does.
  torch::Tensor forward(const torch::Tensor& tokens, int64_t height, int64_t width, bool always_partition);
  const SwinConfig& config;
  int64_t dim, num_heads, shift_size;
  double drop_path;
  layers::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  layers::Linear query{nullptr}, key{nullptr}, value{nullptr}, attention_output{nullptr}, intermediate{nullptr}, output{nullptr};
  torch::Tensor relative_position_bias_table, relative_position_index;
};
TORCH_MODULE(SwinLayer);

// embeddings and encoder, registered into `owner` (SwinModel, the "swin" container of the
// classifier, or Mask2Former's "pixel_level_module.encoder").
struct SwinBody {
  SwinBody(const SwinConfig& config, torch::nn::Module& owner);
  struct StageOutput {
    torch::Tensor tokens;  // [B, height * width, C] before the stage's patch merging
    int64_t height, width;
  };
  // The embeddings' output (the "stem") followed by each stage's output before downsampling; the
  // last stage's tokens are also the encoder's last hidden state.
  // With `gradient_checkpointing` (training), each block's activations are recomputed in backward.
  std::vector<StageOutput> forward(const torch::Tensor& pixel_values, bool always_partition, bool gradient_checkpointing = false);
  SwinConfig config;
  torch::nn::Conv2d patch_projection{nullptr};   // embeddings.patch_embeddings.projection
  layers::LayerNorm embeddings_norm{nullptr};    // embeddings.norm
  torch::Tensor position_embeddings;             // embeddings.position_embeddings, with use_absolute_embeddings
  std::vector<std::vector<SwinLayer>> blocks;    // encoder.layers.i.blocks.j
  std::vector<layers::LayerNorm> merge_norms;    // encoder.layers.i.downsample.norm
  std::vector<layers::Linear> merge_reductions;  // encoder.layers.i.downsample.reduction
};

// transformers' SwinBackbone, registered into `owner`: feature maps [B, C, H, W] of
// config.out_features in stage order, each normalised by hidden_states_norms.<stage>.
struct SwinBackbone {
  SwinBackbone(const SwinConfig& config, torch::nn::Module& owner);
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values, bool gradient_checkpointing = false);
  std::vector<int64_t> channels() const;              // of each feature map
  void init_module(torch::nn::Module& module) const;  // SwinPreTrainedModel._init_weights
  std::unique_ptr<SwinBody> body;
  std::vector<layers::LayerNorm> hidden_states_norms;
};

class SwinModuleBase : public VisionModule {
 public:
  explicit SwinModuleBase(SwinConfig config) : config(std::move(config)) {}
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "swin"; }
  SwinConfig config;
};

class SwinModel : public SwinModuleBase {
 public:
  explicit SwinModel(const SwinConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  std::unique_ptr<SwinBody> body;
  layers::LayerNorm layernorm{nullptr};
};

class SwinForImageClassification : public SwinModuleBase {
 public:
  explicit SwinForImageClassification(const SwinConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return key.rfind("classifier.", 0) == 0; }
  std::unique_ptr<SwinBody> swin;
  layers::LayerNorm layernorm{nullptr};  // swin.layernorm
  layers::Linear classifier{nullptr};
};

}  // namespace vt::swin
