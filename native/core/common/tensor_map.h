// A named set of tensors, in key order: what a checkpoint holds and what stateDict() returns.
#pragma once

#include <map>
#include <string>

#include <torch/torch.h>

namespace vt {

using TensorMap = std::map<std::string, torch::Tensor>;

}  // namespace vt
