// pytorch_model.bin: torch.save's zip format (archive/data.pkl + archive/data/<key>).
// The pickle is interpreted by a restricted unpickler: only tensors (_rebuild_tensor_v2,
// _rebuild_parameter), their typed storages and (ordered) dicts, tuples, lists and scalars are
// accepted; any other global is refused with its module and name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/tensor_map.h"

namespace vt {

// Returns the flat state dict (name -> tensor). A top-level dict holding a "state_dict" or
// "model" dict of tensors is not unwrapped: HuggingFace's pytorch_model.bin is the state dict
// itself. Throws vt::Error naming the file and the problem.
TensorMap load_torch_checkpoint(const std::string& path);
// The same for torch.save bytes in memory; `source` names them in errors. The tensors are
// copies: the bytes need to live for the call only.
TensorMap load_torch_checkpoint(const uint8_t* data, size_t size, const std::string& source);

}  // namespace vt
