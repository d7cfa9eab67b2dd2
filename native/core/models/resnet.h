// ResNet (He et al.), as transformers' modeling_resnet.py: ResNetModel, ResNetForImageClassification
// and ResNetBackbone (feature maps for DETR), with basic and bottleneck layers and the same
// module names, BatchNorm running statistics included.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "nn/layers.h"
#include "nn/module.h"

namespace vt::resnet {

struct ResNetConfig {
  int64_t num_channels = 3;
  int64_t embedding_size = 64;
  std::vector<int64_t> hidden_sizes{256, 512, 1024, 2048};
  std::vector<int64_t> depths{3, 4, 6, 3};
  std::string layer_type = "bottleneck";  // or "basic"
  std::string hidden_act = "relu";
  bool downsample_in_first_stage = false;
  std::vector<std::string> stage_names;   // "stem", "stage1", ...
  std::vector<std::string> out_features;  // the backbone's outputs (default: the last stage)
  bool frozen_batch_norm = false;         // not in config.json: DETR's backbone sets it
  HeadConfig head;

  static ResNetConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
};

// Conv (no bias) + BatchNorm + optional activation: ResNetConvLayer.
class ConvLayerImpl : public torch::nn::Module {
 public:
  ConvLayerImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride, std::optional<std::string> activation,
                bool frozen_batch_norm);
  torch::Tensor forward(const torch::Tensor& input);
  // relu?(normalization(convolution(input)) + residual) (`residual` may be undefined), through
  // layers::ConvolutionNorm's fused kernels where they apply.
  torch::Tensor forward_with(const torch::Tensor& input, const torch::Tensor& residual, bool relu, bool may_overwrite_residual = false);
  torch::nn::Conv2d convolution{nullptr};
  layers::BatchNorm2dSlot normalization;
  std::optional<layers::Activation> activation;
  bool relu = false;              // the activation is ReLU
  layers::ConvolutionNorm fused;  // convolution and normalization as one kernel where it applies
};
TORCH_MODULE(ConvLayer);

// A residual layer (basic: two 3x3 convs; bottleneck: 1x1, 3x3, 1x1) with its shortcut.
class ResidualLayerImpl : public torch::nn::Module {
 public:
  ResidualLayerImpl(const ResNetConfig& config, int64_t in_channels, int64_t out_channels, int64_t stride);
  torch::Tensor forward(const torch::Tensor& input);
  // forward(input) for a caller that gives `input` up: where no other handle or view of it
  // exists, the block's output is accumulated over its memory.
  torch::Tensor forward_consuming(torch::Tensor&& input);
  std::vector<ConvLayer> layer;                     // layer.0, layer.1[, layer.2]
  torch::nn::Conv2d shortcut_convolution{nullptr};  // shortcut.convolution, when shapes change
  layers::BatchNorm2dSlot shortcut_normalization;
  layers::Activation activation;
  bool relu;                         // the activation after the sum is ReLU
  layers::ConvolutionNorm shortcut;  // shortcut_convolution and shortcut_normalization

 private:
  torch::Tensor run(const torch::Tensor& input, bool input_is_private);
};
TORCH_MODULE(ResidualLayer);

// Embedder and encoder, registered into `owner` (a ResNetModel, ResNetBackbone, or the "resnet"
// container of the classifier).
struct ResNetBody {
  ResNetBody(const ResNetConfig& config, torch::nn::Module& owner);
  // Hidden states: the stem's output, then each stage's.
  std::vector<torch::Tensor> forward(const torch::Tensor& pixel_values);
  ResNetConfig config;
  ConvLayer embedder{nullptr};                     // embedder.embedder
  std::vector<std::vector<ResidualLayer>> stages;  // encoder.stages.i.layers.j
};

class ResNetModuleBase : public VisionModule {
 public:
  explicit ResNetModuleBase(ResNetConfig config) : config(std::move(config)) {}
  bool prefers_channels_last() const override { return true; }
  void init_module(const std::string& name, torch::nn::Module& module) override;
  std::string base_model_prefix() const override { return "resnet"; }
  ResNetConfig config;
};

class ResNetModel : public ResNetModuleBase {
 public:
  explicit ResNetModel(const ResNetConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  std::unique_ptr<ResNetBody> body;
};

class ResNetForImageClassification : public ResNetModuleBase {
 public:
  explicit ResNetForImageClassification(const ResNetConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return key.rfind("classifier.", 0) == 0; }
  std::unique_ptr<ResNetBody> resnet;
  layers::Linear classifier{nullptr};  // classifier.1 (classifier.0 is a Flatten)
};

// Feature maps of `out_features`, as outputs "feature_maps.<stage name>".
class ResNetBackbone : public ResNetModuleBase {
 public:
  explicit ResNetBackbone(const ResNetConfig& config);
  ModelOutputs forward(const ModelInputs& inputs) override;
  bool is_head_key(const std::string& key) const override { return false; }
  // The feature maps alone, in out_features order (for detection models built on it).
  std::vector<torch::Tensor> feature_maps(const torch::Tensor& pixel_values);
  std::vector<int64_t> channels() const;  // per out_feature
  std::unique_ptr<ResNetBody> body;
};

}  // namespace vt::resnet
