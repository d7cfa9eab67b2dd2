// Per-environment state of the addon (one per Node worker thread that loads it).
#pragma once

#include <napi.h>

namespace vt::addon {

struct AddonData {
  Napi::FunctionReference model_constructor;
  Napi::FunctionReference trainer_constructor;
};

}  // namespace vt::addon
