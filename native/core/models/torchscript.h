// Custom models: a TorchScript module (torch.jit.save) as a VisionModule. Its forward takes
// pixel values [B, C, H, W] float32 and returns, by task:
//   classification       logits [B, num_labels]: a Tensor, a tuple whose first element is the
//                        logits, or a dict with a "logits" entry;
//   object detection     DETR's convention: a dict with "logits" [B, queries, num_labels + 1] (the
//                        last class is "no object") and "pred_boxes" [B, queries, 4] (cx, cy, w, h
//                        in 0..1), or a tuple of the two;
//   segmentation         logits [B, num_labels, h, w] (any resolution: upsampled to the labels'),
//                        as a Tensor, a tuple or a dict.
// The loss is computed here, as transformers' heads do: cross-entropy for classes, DETR's
// Hungarian set loss (with config.json's class_cost, bbox_cost, giou_cost, *_loss_coefficient,
// eos_coefficient) for detection, per-pixel cross-entropy ignoring 255 for segmentation. Its
// parameters train and its buffers (BatchNorm statistics) save under the scripted module's names.
#pragma once

#include <string>

#include <torch/script.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "losses/detr_set_loss.h"
#include "nn/module.h"

namespace vt::torchscript {

constexpr const char* kArchitecture = "TorchScriptModule";
constexpr const char* kModelFile = "model.pt";

class TorchScriptModule : public VisionModule {
 public:
  // Loads `path`, a model for `task` ("classification", "object_detection", "segmentation") whose
  // loss reads `config` (config.json); errors name the file (not TorchScript, unreadable, no forward method).
  TorchScriptModule(const std::string& path, const std::string& task, const nlohmann::json& config, const std::string& config_source);

  ModelOutputs forward(const ModelInputs& inputs) override;
  void train(bool on = true) override;
  // The scripted module keeps whatever initialisation it was saved with.
  void init_module(const std::string& name, torch::nn::Module& module) override {}
  std::string base_model_prefix() const override { return ""; }
  bool is_head_key(const std::string& key) const override { return false; }

  // Writes the module, with its current parameters and buffers, as TorchScript.
  void save(const std::string& path) const;

 private:
  torch::jit::Module scripted_;
  std::string task_;
  std::string problem_type_;
  losses::SetLossConfig set_loss_;
  int64_t ignore_index_ = 255;
  std::string path_;
};

}  // namespace vt::torchscript
