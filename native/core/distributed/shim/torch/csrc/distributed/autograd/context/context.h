// Debian's libtorch-dev ships c10d's reducer.hpp but not this header it includes. The reducer
// only names these types (a shared_ptr member and a callback type checked by static_assert), so
// their declarations are all it needs; the definitions live in libtorch_cpu. Used only where the
// real header is absent (native/core/CMakeLists.txt).
#pragma once

#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

namespace torch::distributed::autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};

using ContextPtr = std::shared_ptr<DistAutogradContext>;

}  // namespace torch::distributed::autograd
