// Custom models: a TorchScript module (torch.jit.save) as a VisionModule. Its forward takes
// pixel values [B, C, H, W] float32 and returns logits [B, num_labels] (a Tensor, a tuple whose
// first element is the logits, or a dict with a "logits" entry); the loss for classification labels
// is computed here, as transformers' heads do. Its parameters train and its buffers (BatchNorm
// statistics) save under the scripted module's own names.
#pragma once

#include <string>

#include <torch/script.h>
#include <torch/torch.h>

#include "nn/module.h"

namespace vt::torchscript {

constexpr const char* kArchitecture = "TorchScriptModule";
constexpr const char* kModelFile = "model.pt";

class TorchScriptModule : public VisionModule {
 public:
  // Loads `path`; errors name the file (not TorchScript, unreadable, no forward method).
  TorchScriptModule(const std::string& path, std::string problem_type);

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
  std::string problem_type_;
  std::string path_;
};

}  // namespace vt::torchscript
