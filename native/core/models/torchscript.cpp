#include "models/torchscript.h"

#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_config.h"
#include "losses/classification.h"
#include "losses/semantic_segmentation.h"
#include "nn/layers.h"

namespace vt::torchscript {

namespace {

// Registers `tensor` under the dotted `name` in a tree of containers mirroring the scripted
// module's submodules, so named_parameters() and named_buffers() give the scripted names. The
// tensors are shared: optimizer steps and dtype/device moves reach the scripted module.
void mirror(torch::nn::Module& root, const std::string& name, const torch::Tensor& tensor, bool parameter) {
  torch::nn::Module* owner = &root;
  std::string rest = name;
  for (auto dot = rest.find('.'); dot != std::string::npos; dot = rest.find('.')) {
    const std::string child = rest.substr(0, dot);
    rest = rest.substr(dot + 1);
    auto children = owner->named_children();
    owner = children.contains(child) ? children[child].get() : layers::add_container(*owner, child).get();
  }
  if (parameter) {
    owner->register_parameter(rest, tensor, tensor.requires_grad());
  } else {
    owner->register_buffer(rest, tensor);
  }
}

}  // namespace

TorchScriptModule::TorchScriptModule(const std::string& path, const std::string& task, const nlohmann::json& config,
                                     const std::string& config_source)
    : task_(task), path_(path) {
  VT_CHECK(task == "classification" || task == "object_detection" || task == "segmentation", path, ": a TorchScript model serves ",
           "classification, object_detection or segmentation, not ", task);
  JsonConfig fields(config, config_source);
  problem_type_ = fields.get_string("problem_type", "");
  if (task == "object_detection") set_loss_ = losses::SetLossConfig::from_json(config, config_source);
  ignore_index_ = fields.get_int("semantic_loss_ignore_index", 255);
  try {
    scripted_ = torch::jit::load(path, torch::kCPU);
  } catch (const c10::Error& error) {
    fail(path, ": not a TorchScript module saved with torch.jit.save (", error.what_without_backtrace(), ")");
  }
  VT_CHECK(scripted_.find_method("forward").has_value(), path, ": the TorchScript module has no forward method");
  for (const auto& item : scripted_.named_parameters(/*recurse=*/true)) mirror(*this, item.name, item.value, true);
  for (const auto& item : scripted_.named_buffers(/*recurse=*/true)) mirror(*this, item.name, item.value, false);
}

void TorchScriptModule::train(bool on) {
  torch::nn::Module::train(on);
  scripted_.train(on);
}

namespace {

// The output called `name`: a Tensor output itself (position 0), a tuple's element at `position`,
// or a dict's entry.
torch::Tensor output_tensor(const c10::IValue& output, const char* name, size_t position) {
  if (output.isTensor()) return position == 0 ? output.toTensor() : torch::Tensor();
  if (output.isTuple()) {
    const auto& elements = output.toTupleRef().elements();
    return position < elements.size() && elements[position].isTensor() ? elements[position].toTensor() : torch::Tensor();
  }
  if (output.isGenericDict()) {
    for (const auto& entry : output.toGenericDict()) {
      if (entry.key().isString() && entry.key().toStringRef() == name && entry.value().isTensor()) return entry.value().toTensor();
    }
  }
  return {};
}

}  // namespace

ModelOutputs TorchScriptModule::forward(const ModelInputs& inputs) {
  VT_CHECK(inputs.pixel_values.defined() && inputs.pixel_values.dim() == 4, "pixel_values: expected [batch, channels, height, width]");
  c10::IValue output;
  try {
    output = scripted_.forward({inputs.pixel_values});
  } catch (const c10::Error& error) {
    fail(path_, ": forward failed: ", error.what_without_backtrace());
  }
  const torch::Tensor logits = output_tensor(output, "logits", 0);
  const int64_t batch = inputs.pixel_values.size(0);
  if (task_ == "object_detection") {
    const torch::Tensor boxes = output_tensor(output, "pred_boxes", 1);
    VT_CHECK(logits.defined() && boxes.defined(), path_,
             ": an object detection model's forward returns a dict with \"logits\" and \"pred_boxes\" (or a tuple of the two)");
    VT_CHECK(logits.dim() == 3 && logits.size(0) == batch && logits.size(2) >= 2, path_,
             ": logits must be [batch, queries, num_labels + 1] (the last class is \"no object\"), got ", logits.sizes());
    VT_CHECK(boxes.dim() == 3 && boxes.size(0) == batch && boxes.size(1) == logits.size(1) && boxes.size(2) == 4, path_,
             ": pred_boxes must be [batch, queries, 4] like logits ", logits.sizes(), ", got ", boxes.sizes());
    ModelOutputs outputs{{"logits", logits}, {"pred_boxes", boxes}};
    if (!inputs.targets.empty()) {
      const auto loss = losses::detr_set_loss(set_loss_, logits.size(2) - 1, logits, boxes, {}, {}, inputs.targets);
      outputs.emplace_back("loss", loss.loss);
      for (const auto& [name, part] : loss.parts) outputs.emplace_back("loss_dict." + name, part);
    }
    return outputs;
  }
  if (task_ == "segmentation") {
    VT_CHECK(logits.defined() && logits.dim() == 4 && logits.size(0) == batch, path_,
             ": a segmentation model's forward returns logits [batch, num_labels, height, width] (a Tensor, a tuple starting with one, ",
             "or a dict with \"logits\")", logits.defined() ? str_cat(", got ", logits.sizes()) : std::string());
    ModelOutputs outputs;
    if (inputs.labels.defined()) outputs.emplace_back("loss", losses::semantic_segmentation_loss(logits, inputs.labels, ignore_index_));
    outputs.emplace_back("logits", logits);
    return outputs;
  }
  VT_CHECK(logits.defined(), path_, ": forward must return the logits: a Tensor, a tuple starting with one, or a dict with \"logits\"");
  VT_CHECK(!inputs.labels.defined() || logits.dim() == 2, path_, ": labels need logits of shape [batch, num_labels], got ", logits.sizes());
  return classification_outputs(logits, inputs.labels, problem_type_);
}

void TorchScriptModule::save(const std::string& path) const {
  std::ostringstream bytes;
  scripted_.save(bytes);
  write_file_atomically(path, bytes.str());
}

}  // namespace vt::torchscript
