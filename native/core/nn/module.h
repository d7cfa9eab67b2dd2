// What every architecture implements: a torch::nn::Module whose parameter and buffer names
// are HuggingFace's checkpoint keys, a forward over named inputs and outputs, and
// HuggingFace's weight initialisation.
#pragma once

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace vt {

// Per-image targets for detection (class_labels [n], boxes [n,4] cx,cy,w,h normalized) and
// Mask2Former (class_labels [n], mask_labels [n,H,W]).
struct Target {
  torch::Tensor class_labels;
  torch::Tensor boxes;
  torch::Tensor mask_labels;
};

struct ModelInputs {
  torch::Tensor pixel_values;   // [B, C, H, W]
  torch::Tensor pixel_mask;     // [B, H, W], undefined when absent
  torch::Tensor labels;         // classification [B]; segmentation [B, H, W]; undefined when absent
  std::vector<Target> targets;  // detection / Mask2Former, one per image
  // Pixel values that are NaN or infinite give NaN outputs silently: refused unless allowed.
  bool allow_non_finite = false;
  bool has_labels() const { return labels.defined() || !targets.empty(); }
};

// The inputs on `device`, pixel values in `dtype` and `memory_format` (validated: floating point).
ModelInputs move_inputs(const ModelInputs& inputs, torch::Device device, torch::ScalarType dtype,
                        torch::MemoryFormat memory_format = torch::MemoryFormat::Contiguous);

// pixel_values as every architecture takes them: [batch, channels, height, width] with the
// configuration's channel count (throws naming what differs).
void check_pixel_values(const torch::Tensor& pixel_values, int64_t num_channels);

// Outputs in a stable order, under transformers' names: logits, pred_boxes, last_hidden_state,
// pooler_output, loss, loss_dict.<name> (the addon gives them the contract's camelCase).
using ModelOutputs = std::vector<std::pair<std::string, torch::Tensor>>;
torch::Tensor find_output(const ModelOutputs& outputs, const std::string& name);  // undefined if absent

// id2label, problem_type and initializer_range: the PretrainedConfig fields every head reads.
struct HeadConfig {
  std::map<int64_t, std::string> id2label;  // num_labels entries, keys 0..n-1
  std::string problem_type;                 // "", "single_label_classification", ...
  double initializer_range = 0.02;
  int64_t num_labels() const { return static_cast<int64_t>(id2label.size()); }
  static HeadConfig from_json(const nlohmann::json& config, const std::string& source);
};

class VisionModule : public torch::nn::Module {
 public:
  virtual ModelOutputs forward(const ModelInputs& inputs) = 0;

  // HuggingFace's `_init_weights`, applied to the module called `name` (a path such as
  // "vit.encoder.layer.0.output.dense"); called for every module on random initialisation and
  // for the modules owning freshly created parameters (missing or resized heads) on load.
  virtual void init_module(const std::string& name, torch::nn::Module& module) = 0;

  // The attribute the task model keeps its base model under ("vit"), so a base-model
  // checkpoint loads into a task model and back, as from_pretrained does.
  virtual std::string base_model_prefix() const = 0;
  // Keys that may be absent from a checkpoint and are initialised instead (task heads, poolers).
  virtual bool is_head_key(const std::string& key) const = 0;

  // A checkpoint tensor whose shape differs from the parameter's may be adapted (e.g. ViT's
  // position embeddings resampled to a new image size). Returns true when `tensor` was replaced
  // by one of `target_shape`.
  virtual bool adapt_checkpoint_tensor(const std::string& key, torch::Tensor& tensor, torch::IntArrayRef target_shape) { return false; }

  // Convolutional models run faster on CPU with NHWC (channels-last) tensors: weights and
  // inputs are laid out that way when this says so (measured in bench/channels-last.mjs).
  virtual bool prefers_channels_last() const { return false; }

  // The model learns from per-image masks and their classes (ModelInputs::targets with
  // mask_labels: Mask2Former), whatever its task's usual labels.
  virtual bool takes_mask_targets() const { return false; }

  // Trade compute for memory in training: recompute each transformer layer in the backward pass.
  void set_gradient_checkpointing(bool enabled) { gradient_checkpointing_ = enabled; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  // Initialises every module (all = true) or the modules that own one of `keys`.
  void initialize(const std::set<std::string>& keys, bool all);

  // Parameters and buffers by checkpoint key (buffers of BatchNorm included).
  std::map<std::string, torch::Tensor> named_state();

 private:
  bool gradient_checkpointing_ = false;
};

}  // namespace vt
