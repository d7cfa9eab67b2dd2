// The JavaScript handle of a loaded model (NativeModel in binding.d.ts). Each method validates
// its arguments on the JS thread, then runs the work on the thread pool and returns a Promise.
#pragma once

#include <memory>

#include <napi.h>

#include "async_work.h"
#include "pretrained/pretrained.h"

namespace vt::addon {

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function define(Napi::Env env);
  // Wraps a loaded model: `constructor.New({Napi::External<std::shared_ptr<PretrainedModel>>})`.
  explicit ModelWrap(const Napi::CallbackInfo& info);

  // The model behind a NativeModel object; throws a TypeError for anything else, an Error when
  // it was disposed.
  static std::shared_ptr<PretrainedModel> unwrap_model(const Napi::Value& value, const char* what);

 private:
  template <Napi::Value (ModelWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value guarded(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] { return (this->*Method)(info); });
  }

  Napi::Value info(const Napi::CallbackInfo& info);
  Napi::Value forward(const Napi::CallbackInfo& info);
  Napi::Value state_dict(const Napi::CallbackInfo& info);
  Napi::Value preprocess(const Napi::CallbackInfo& info);
  Napi::Value predict(const Napi::CallbackInfo& info);
  Napi::Value save(const Napi::CallbackInfo& info);
  Napi::Value load_saved(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  // The model, or a thrown Error when it was disposed.
  std::shared_ptr<PretrainedModel> model(Napi::Env env) const;

  std::shared_ptr<PretrainedModel> model_;
};

}  // namespace vt::addon
