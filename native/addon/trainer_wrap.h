// The JavaScript handle of a native Trainer (NativeTrainer in binding.d.ts).
#pragma once

#include <memory>

#include <napi.h>

#include "async_work.h"
#include "train/trainer.h"

namespace vt::addon {

class TrainerWrap : public Napi::ObjectWrap<TrainerWrap> {
 public:
  static Napi::Function define(Napi::Env env);
  // new NativeTrainer(model: NativeModel, options: NativeTrainingOptions)
  explicit TrainerWrap(const Napi::CallbackInfo& info);

 private:
  template <Napi::Value (TrainerWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value guarded(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] { return (this->*Method)(info); });
  }

  Napi::Value training_step(const Napi::CallbackInfo& info);
  Napi::Value train(const Napi::CallbackInfo& info);
  Napi::Value evaluate(const Napi::CallbackInfo& info);
  Napi::Value stop(const Napi::CallbackInfo& info);

  std::shared_ptr<Trainer> trainer_;
};

}  // namespace vt::addon
