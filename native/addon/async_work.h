// Runs native work on libuv's thread pool and settles a Promise with its result: every
// computing call of the addon goes through here, so no exception ever reaches Node unhandled.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <napi.h>

namespace vt::addon {

// The message of whatever a native job threw (c10::Error without its C++ backtrace).
std::string describe_current_exception();

// Runs `body` (a JS-thread entry point) so that any C++ exception becomes a JS exception:
// node-addon-api only converts Napi::Error, anything else would terminate the process.
template <typename Body>
Napi::Value guard(Napi::Env env, Body&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw Napi::Error::New(env, describe_current_exception());
  }
}

template <Napi::Value (*Function)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return Function(info); });
}

template <typename Result>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result()>;
  using ToJs = std::function<Napi::Value(Napi::Env, Result&)>;

  PromiseWorker(Napi::Env env, Work work, ToJs to_js)
      : Napi::AsyncWorker(env, "visiontorch"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        to_js_(std::move(to_js)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      result_ = std::make_unique<Result>(work_());
    } catch (...) {
      SetError(describe_current_exception());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    try {
      deferred_.Resolve(to_js_(env, *result_));
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    } catch (...) {
      deferred_.Reject(Napi::Error::New(env, describe_current_exception()).Value());
    }
    result_.reset();
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  ToJs to_js_;
  std::unique_ptr<Result> result_;
};

template <typename Result>
Napi::Promise run_async(Napi::Env env, typename PromiseWorker<Result>::Work work,
                        typename PromiseWorker<Result>::ToJs to_js) {
  auto* worker = new PromiseWorker<Result>(env, std::move(work), std::move(to_js));
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

}  // namespace vt::addon
