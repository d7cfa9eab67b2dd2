// Per-environment state of the addon (one per Node worker thread that loads it).
#pragma once

#include <memory>

#include <napi.h>

#include "async_work.h"

namespace vt::addon {

struct AddonData {
  Napi::FunctionReference model_constructor;
  Napi::FunctionReference trainer_constructor;
  std::shared_ptr<CompletionPort> completions;  // jobs in flight share it: it outlives the environment
  ~AddonData() {
    if (completions) completions->close();
  }
};

}  // namespace vt::addon
