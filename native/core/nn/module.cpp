#include "nn/module.h"

#include "common/error.h"
#include "common/json_config.h"
#include "nn/layers.h"

namespace vt {

void check_pixel_values(const torch::Tensor& pixel_values, int64_t num_channels) {
  VT_CHECK(pixel_values.dim() == 4, "pixel_values: expected [batch, channels, height, width], got shape ", pixel_values.sizes());
  VT_CHECK(pixel_values.size(1) == num_channels, "pixel_values: the channel dimension must match the configuration: expected ",
           num_channels, " but got ", pixel_values.size(1));
}

ModelInputs move_inputs(const ModelInputs& raw, torch::Device device, torch::ScalarType dtype, torch::MemoryFormat memory_format) {
  VT_CHECK(raw.pixel_values.defined(), "pixel_values is required");
  VT_CHECK(raw.pixel_values.is_floating_point(), "pixel_values: expected a floating-point tensor, got ", raw.pixel_values.scalar_type());
  ModelInputs inputs;
  inputs.pixel_values = raw.pixel_values.to(device, dtype);
  if (inputs.pixel_values.dim() == 4) inputs.pixel_values = inputs.pixel_values.contiguous(memory_format);
  if (raw.pixel_mask.defined()) inputs.pixel_mask = raw.pixel_mask.to(device);
  if (raw.labels.defined()) inputs.labels = raw.labels.to(device);
  for (const auto& target : raw.targets) {
    Target moved;
    if (target.class_labels.defined()) moved.class_labels = target.class_labels.to(device);
    if (target.boxes.defined()) moved.boxes = target.boxes.to(device);
    if (target.mask_labels.defined()) moved.mask_labels = target.mask_labels.to(device);
    inputs.targets.push_back(std::move(moved));
  }
  return inputs;
}

torch::Tensor find_output(const ModelOutputs& outputs, const std::string& name) {
  for (const auto& [key, value] : outputs) {
    if (key == name) return value;
  }
  return {};
}

HeadConfig HeadConfig::from_json(const nlohmann::json& config, const std::string& source) {
  JsonConfig fields(config, source);
  HeadConfig head;
  head.initializer_range = fields.get_number("initializer_range", 0.02);
  head.problem_type = fields.get_string("problem_type", "");
  static const std::set<std::string> problem_types = {"", "regression", "single_label_classification", "multi_label_classification"};
  if (!problem_types.count(head.problem_type)) {
    fields.fail_field("problem_type", "one of regression, single_label_classification, multi_label_classification");
  }
  if (fields.has("id2label")) {
    const auto& id2label = config.at("id2label");
    if (!id2label.is_object()) fields.fail_field("id2label", "an object of {index: label}");
    for (const auto& [key, value] : id2label.items()) {
      size_t used = 0;
      int64_t index = -1;
      try {
        index = std::stoll(key, &used);
      } catch (const std::exception&) {}
      if (used != key.size() || index < 0) fail(source, ": id2label key \"", key, "\" is not a label index");
      if (!value.is_string()) fail(source, ": id2label[", key, "] must be a string");
      head.id2label[index] = value.get<std::string>();
    }
    for (int64_t i = 0; i < head.num_labels(); ++i) {
      if (!head.id2label.count(i)) fail(source, ": id2label has no entry for index ", i);
    }
  } else {
    // PretrainedConfig's default: num_labels (2 when absent) generic labels.
    int64_t num_labels = fields.get_non_negative_int("num_labels", 2);
    for (int64_t i = 0; i < num_labels; ++i) head.id2label[i] = "LABEL_" + std::to_string(i);
  }
  return head;
}

void VisionModule::initialize(const std::set<std::string>& keys, bool all) {
  for (const auto& item : named_modules()) {
    const std::string& name = item.key();
    torch::nn::Module& module = *item.value();
    bool selected = all;
    if (!selected) {
      auto owns = [&](const std::string& local) { return keys.count(name.empty() ? local : name + "." + local) > 0; };
      for (const auto& parameter : module.named_parameters(/*recurse=*/false)) {
        selected = selected || owns(parameter.key());
      }
      for (const auto& buffer : module.named_buffers(/*recurse=*/false)) {
        selected = selected || owns(buffer.key());
      }
    }
    if (!selected) continue;
    // A linear layer built under DeferredInitialisation gets its constructor's initialisation
    // now, before the architecture's own (which may leave it as it is).
    if (auto* linear = module.as<layers::LinearImpl>(); linear && linear->initialisation_deferred()) linear->reset_default();
    init_module(name, module);
  }
}

std::map<std::string, torch::Tensor> VisionModule::named_state() {
  std::map<std::string, torch::Tensor> state;
  for (const auto& item : named_parameters()) state[item.key()] = item.value();
  for (const auto& item : named_buffers()) state[item.key()] = item.value();
  return state;
}

}  // namespace vt
