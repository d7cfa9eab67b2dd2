// ConvNeXt v1 (Liu et al.), as transformers' modeling_convnext.py: ConvNextModel and
// ConvNextForImageClassification with the same module names.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"

namespace vt::convnext {

struct ConvNextConfig {
  int64_t num_channels = 3;
  int64_t patch_size = 4;
  std::vector<int64_t> hidden_sizes{96, 192, 384, 768};
  std::vector<int64_t> depths{3, 3, 9, 3};
  std::string hidden_act = "gelu";
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;  // the final LayerNorm's; the others use 1e-6, as transformers
  double layer_scale_init_value = 1e-6;
  double drop_path_rate = 0.0;
  HeadConfig head;

  static ConvNextConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

// ConvNextLayerNorm: normalises over channels, for [N, C, H, W] (channels_first) or
// [N, H, W, C] (channels_last) inputs. A type of its own, because transformers' Trainer decays its
// weight (it is not an nn.LayerNorm) while it exempts nn.LayerNorm.
class ChannelLayerNormImpl : public torch::nn::Module {
 public:
  ChannelLayerNormImpl(int64_t channels, double eps, bool channels_first);
  torch::Tensor forward(const torch::Tensor& input);
  int64_t channels;
  double eps;
  bool channels_first;
  torch::Tensor weight, bias;
};
TORCH_MODULE(ChannelLayerNorm);

class ConvNextLayerImpl : public torch::nn::Module {
 public:
  ConvNextLayerImpl(const ConvNextConfig& config, int64_t dim, double drop_path);
  torch::Tensor forward(const torch::Tensor& input);
  torch::nn::Conv2d dwconv{nullptr};
  ChannelLayerNorm layernorm{nullptr};
  layers::Linear pwconv1{nullptr}, pwconv2{nullptr};
  std::string hidden_act;
  torch::Tensor layer_scale_parameter;  // undefined when layer_scale_init_value <= 0
  double drop_path;
};
TORCH_MODULE(ConvNextLayer);

struct ConvNextStage {
  ChannelLayerNorm downsample_norm{nullptr};   // downsampling_layer.0
  torch::nn::Conv2d downsample_conv{nullptr};  // downsampling_layer.1
  std::vector<ConvNextLayer> layers;
};

// Embeddings, encoder and final LayerNorm, registered into `owner`.
struct ConvNextBody {
  ConvNextBody(const ConvNextConfig& config, torch::nn::Module& owner);
  // (last_hidden_state, pooled output after the final LayerNorm)
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& pixel_values);
  ConvNextConfig config;
  torch::nn::Conv2d patch_embeddings{nullptr};  // embeddings.patch_embeddings
  ChannelLayerNorm embeddings_norm{nullptr};    // embeddings.layernorm
  std::vector<ConvNextStage> stages;            // encoder.stages.i
  layers::LayerNorm layernorm{nullptr};
};

class ConvNextModuleBase : public VisionModule {
 public:
  explicit ConvNextModuleBase(ConvNextConfig config) : config(std::move(config)) {}
  bool prefers_channels_last() const override { return true; }
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "convnext"; }
  ConvNextConfig config;
};

class ConvNextModel : public ConvNextModuleBase {
 public:
  explicit ConvNextModel(const ConvNextConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  std::unique_ptr<ConvNextBody> body;
};

class ConvNextForImageClassification : public ConvNextModuleBase {
 public:
  explicit ConvNextForImageClassification(const ConvNextConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return key.rfind("classifier.", 0) == 0; }
  std::unique_ptr<ConvNextBody> convnext;
  layers::Linear classifier{nullptr};
};

}  // namespace vt::convnext
