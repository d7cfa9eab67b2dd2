// Per-environment state of the addon (one per Node worker thread that loads it).
#pragma once

#include <memory>

#include <napi.h>

#include "async_work.h"

namespace vt::addon {

struct AddonData {
  Napi::FunctionReference model_constructor;
  Napi::FunctionReference trainer_constructor;
  std::unique_ptr<CompletionPort> completions;
  ~AddonData() {
    if (completions) completions->release();
  }
};

}  // namespace vt::addon
