#include "models/torchscript.h"

#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "losses/classification.h"
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

TorchScriptModule::TorchScriptModule(const std::string& path, std::string problem_type)
    : problem_type_(std::move(problem_type)), path_(path) {
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

ModelOutputs TorchScriptModule::forward(const ModelInputs& inputs) {
  VT_CHECK(inputs.pixel_values.defined() && inputs.pixel_values.dim() == 4, "pixel_values: expected [batch, channels, height, width]");
  c10::IValue output;
  try {
    output = scripted_.forward({inputs.pixel_values});
  } catch (const c10::Error& error) {
    fail(path_, ": forward failed: ", error.what_without_backtrace());
  }
  torch::Tensor logits;
  if (output.isTensor()) {
    logits = output.toTensor();
  } else if (output.isTuple() && !output.toTupleRef().elements().empty() && output.toTupleRef().elements()[0].isTensor()) {
    logits = output.toTupleRef().elements()[0].toTensor();
  } else if (output.isGenericDict()) {
    for (const auto& entry : output.toGenericDict()) {
      if (entry.key().isString() && entry.key().toStringRef() == "logits" && entry.value().isTensor()) {
        logits = entry.value().toTensor();
      }
    }
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
