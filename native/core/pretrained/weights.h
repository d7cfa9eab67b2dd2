// Loading a checkpoint into a module by key, as from_pretrained does: base-model prefixes are
// added or stripped, heads missing from the checkpoint are initialised, and everything else that
// does not fit is reported by name.
#pragma once

#include <string>
#include <vector>

#include "common/tensor_map.h"
#include "nn/module.h"

namespace vt {

struct LoadReport {
  std::string source;                    // the weights file(s) read, or "random initialisation"
  std::vector<std::string> initialized;  // head keys absent from the checkpoint, initialised
  std::vector<std::string> unexpected;   // checkpoint keys the model has no place for (ignored)
  std::vector<std::string> mismatched;   // "key: checkpoint [..] vs model [..]", re-initialised
  std::vector<std::string> adapted;      // resampled to the model's shape (position embeddings)
};

// Copies `checkpoint` into `module`'s parameters and buffers (converting dtypes). Errors, naming
// every key concerned: non-head keys missing from the checkpoint; shape mismatches unless
// `ignore_mismatched_sizes` (then those parameters keep a fresh initialisation).
LoadReport load_weights(VisionModule& module, const TensorMap& checkpoint, const std::string& source, bool ignore_mismatched_sizes);

// Weights of a model directory: model.safetensors, the sharded model.safetensors.index.json,
// pytorch_model.bin or its sharded index, in that order. `source` receives what was read.
TensorMap read_checkpoint_directory(const std::string& directory, std::string* source = nullptr);

}  // namespace vt
