#include "pretrained/weights.h"

#include <filesystem>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/json_config.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"

namespace vt {

namespace {

std::string shape_text(torch::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string join_limited(const std::vector<std::string>& items, size_t limit = 20) {
  std::string text;
  for (size_t i = 0; i < items.size() && i < limit; ++i) text += "\n  " + items[i];
  if (items.size() > limit) text += "\n  ... and " + std::to_string(items.size() - limit) + " more";
  return text;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// from_pretrained's prefix rule: a task model reading a base-model checkpoint gains the prefix,
// a base model reading a task-model checkpoint loses it (and ignores the head).
TensorMap align_prefix(const TensorMap& checkpoint, const std::map<std::string, torch::Tensor>& model_state, const std::string& prefix) {
  if (prefix.empty()) return checkpoint;
  const std::string dotted = prefix + ".";
  bool model_has_prefix = false, checkpoint_has_prefix = false;
  for (const auto& [key, value] : model_state) model_has_prefix = model_has_prefix || starts_with(key, dotted);
  for (const auto& [key, value] : checkpoint) checkpoint_has_prefix = checkpoint_has_prefix || starts_with(key, dotted);
  if (model_has_prefix == checkpoint_has_prefix) return checkpoint;
  TensorMap aligned;
  for (const auto& [key, value] : checkpoint) {
    if (model_has_prefix) {
      aligned[model_state.count(key) ? key : dotted + key] = value;
    } else if (starts_with(key, dotted)) {
      aligned[key.substr(dotted.size())] = value;
    } else {
      aligned[key] = value;  // head keys of the task model: reported as unexpected
    }
  }
  return aligned;
}

}  // namespace

LoadReport load_weights(VisionModule& module, const TensorMap& checkpoint_in, const std::string& source, bool ignore_mismatched_sizes) {
  ErrorScope errors(ErrorCode::Checkpoint);
  LoadReport report;
  report.source = source;
  auto state = module.named_state();
  TensorMap checkpoint = align_prefix(checkpoint_in, state, module.base_model_prefix());

  std::vector<std::string> missing_required, mismatched_errors;
  std::set<std::string> to_initialize;
  for (const auto& [key, target] : state) {
    auto found = checkpoint.find(key);
    if (found == checkpoint.end()) {
      if (module.is_head_key(key)) {
        report.initialized.push_back(key);
        to_initialize.insert(key);
      } else {
        missing_required.push_back(key);
      }
      continue;
    }
    if (found->second.sizes() != target.sizes()) {
      torch::Tensor adapted = found->second;
      if (module.adapt_checkpoint_tensor(key, adapted, target.sizes()) && adapted.sizes() == target.sizes()) {
        report.adapted.push_back(key + ": " + shape_text(found->second.sizes()) + " -> " + shape_text(target.sizes()));
        found->second = adapted;
        continue;
      }
      std::string description = key + ": checkpoint " + shape_text(found->second.sizes()) + " vs model " + shape_text(target.sizes());
      if (ignore_mismatched_sizes) {
        report.mismatched.push_back(description);
        to_initialize.insert(key);
      } else {
        mismatched_errors.push_back(description);
      }
    }
  }
  for (const auto& [key, value] : checkpoint) {
    if (!state.count(key)) report.unexpected.push_back(key);
  }
  if (!missing_required.empty()) {
    fail(source, ": ", missing_required.size(), " weights the model needs are missing from the checkpoint:", join_limited(missing_required),
         "\n(is this checkpoint of a different architecture? its keys start with: ",
         checkpoint.empty() ? std::string("nothing") : checkpoint.begin()->first, ")");
  }
  if (!mismatched_errors.empty()) {
    fail(source, ": ", mismatched_errors.size(), " weights have a different shape in the checkpoint:", join_limited(mismatched_errors),
         "\nSet ignore_mismatched_sizes: true to initialise these afresh (e.g. a new classification head).");
  }

  torch::NoGradGuard no_grad;
  module.initialize(to_initialize, /*all=*/false);
  for (auto& [key, target] : state) {
    if (to_initialize.count(key)) continue;
    const auto& value = checkpoint.at(key);
    target.copy_(value.to(target.device(), target.scalar_type()));
  }
  return report;
}

TensorMap read_checkpoint_directory(const std::string& directory, std::string* source) {
  ErrorScope errors(ErrorCode::Checkpoint);
  namespace fs = std::filesystem;
  const fs::path dir(directory);
  auto exists = [&](const char* name) { return fs::is_regular_file(dir / name); };
  auto note = [&](const std::string& what) {
    if (source) *source = what;
  };
  if (exists("model.safetensors")) {
    note((dir / "model.safetensors").string());
    return load_safetensors((dir / "model.safetensors").string());
  }
  if (exists("model.safetensors.index.json")) {
    note((dir / "model.safetensors.index.json").string());
    return load_sharded_safetensors((dir / "model.safetensors.index.json").string());
  }
  if (exists("pytorch_model.bin")) {
    note((dir / "pytorch_model.bin").string());
    return load_torch_checkpoint((dir / "pytorch_model.bin").string());
  }
  if (exists("pytorch_model.bin.index.json")) {
    const std::string index_path = (dir / "pytorch_model.bin.index.json").string();
    note(index_path);
    auto index = read_json_file(index_path);
    VT_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), index_path,
             ": expected an object with a \"weight_map\"");
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      VT_CHECK(shard.is_string(), index_path, ": weight_map[\"", name, "\"] must be a file name");
      const std::string file = shard.get<std::string>();
      VT_CHECK(fs::path(file).filename().string() == file && file != ".." && file != ".", index_path, ": shard name \"", file,
               "\" must be a plain file name in the same directory");
      shards.insert(file);
    }
    TensorMap tensors;
    for (const auto& shard : shards) {
      for (auto& [name, tensor] : load_torch_checkpoint((dir / shard).string())) tensors[name] = tensor;
    }
    for (const auto& [name, shard] : index["weight_map"].items()) {
      VT_CHECK(tensors.count(name), index_path, ": tensor \"", name, "\" is not in its shard ", shard.get<std::string>());
    }
    return tensors;
  }
  fail(directory,
       ": no weights found (looked for model.safetensors, model.safetensors.index.json, "
       "pytorch_model.bin and pytorch_model.bin.index.json)");
}

}  // namespace vt
