// Runs native work on the compute thread and settles a Promise with its result: every
// computing call of the addon goes through here, so no exception ever reaches Node unhandled.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <napi.h>

#include "common/error.h"
#include "runtime/executor.h"

namespace vt::addon {

// What a native job threw: its message (c10::Error without its C++ backtrace) and its stable
// ERR_VISIONTORCH_* code.
struct NativeFailure {
  std::string message;
  std::string code;
};
NativeFailure describe_current_exception();

// A JS Error with the failure's message and `code`.
Napi::Error to_js_error(Napi::Env env, const NativeFailure& failure);
// An error the addon raises itself, with its code (a wrong argument, a disposed model).
Napi::Error coded_error(Napi::Env env, const std::string& message, const char* code);

// Runs `body` (a JS-thread entry point) so that any C++ exception becomes a JS exception:
// node-addon-api only converts Napi::Error, anything else would terminate the process. Argument
// errors thrown as Napi::TypeError/RangeError get ERR_VISIONTORCH_INVALID_ARGUMENT.
template <typename Body>
Napi::Value guard(Napi::Env env, Body&& body) {
  try {
    return body();
  } catch (const Napi::Error& error) {
    Napi::Object object = error.Value();
    if (!object.IsEmpty() && !object.Has("code")) object.Set("code", "ERR_VISIONTORCH_INVALID_ARGUMENT");
    throw;
  } catch (...) {
    throw to_js_error(env, describe_current_exception());
  }
}

template <Napi::Value (*Function)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return Function(info); });
}

// Work finished on the compute thread, to be settled on the JavaScript thread.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual void settle(Napi::Env env) = 0;
};

// Carries completions from the compute thread back to one JavaScript environment, and keeps
// its event loop alive while any is pending (an awaited forward() at the top level of a script
// must not let Node exit). Jobs hold it by shared pointer: a worker thread terminated with calls
// in flight closes it, and their completions are then dropped, never delivered to the dead
// environment.
class CompletionPort {
 public:
  explicit CompletionPort(Napi::Env env);
  void begin(Napi::Env env);             // JS thread: one more job in flight
  void deliver(Completion* completion);  // any thread
  void close();                          // environment teardown

 private:
  static void call_js(Napi::Env env, Napi::Function, CompletionPort* port, Completion* completion);
  using Channel = Napi::TypedThreadSafeFunction<CompletionPort, Completion, &CompletionPort::call_js>;
  Channel channel_;
  size_t in_flight_ = 0;
  std::mutex mutex_;  // orders deliveries against close()
  bool closed_ = false;
};

std::shared_ptr<CompletionPort> completion_port(Napi::Env env);

// Runs `work` on the compute thread (vt::ComputeExecutor) and settles the returned Promise on
// the JS thread with `to_js(result)`, or rejects it with the message of whatever `work` threw.
// It is a short task, so it may run between the steps of a training run; `model` (the model it
// computes with, if any) keeps it waiting while a run trains that model.
template <typename Result>
Napi::Promise run_async(Napi::Env env, std::function<Result()> work, std::function<Napi::Value(Napi::Env, Result&)> to_js,
                        const void* model = nullptr) {
  struct Job : Completion {
    Napi::Promise::Deferred deferred;
    std::function<Result()> work;
    std::function<Napi::Value(Napi::Env, Result&)> to_js;
    std::unique_ptr<Result> result;
    NativeFailure error;

    Job(Napi::Env env, std::function<Result()> work, std::function<Napi::Value(Napi::Env, Result&)> to_js)
        : deferred(Napi::Promise::Deferred::New(env)), work(std::move(work)), to_js(std::move(to_js)) {}

    void settle(Napi::Env env) override {
      Napi::HandleScope scope(env);
      if (!result) {
        deferred.Reject(to_js_error(env, error).Value());
        return;
      }
      try {
        deferred.Resolve(to_js(env, *result));
      } catch (const Napi::Error& e) {
        deferred.Reject(e.Value());
      } catch (...) {
        deferred.Reject(to_js_error(env, describe_current_exception()).Value());
      }
    }
  };
  auto* job = new Job(env, std::move(work), std::move(to_js));
  Napi::Promise promise = job->deferred.Promise();
  std::shared_ptr<CompletionPort> port = completion_port(env);
  port->begin(env);
  vt::ComputeExecutor::instance().post(
      [job, port] {
        try {
          job->result = std::make_unique<Result>(job->work());
        } catch (...) {
          job->error = describe_current_exception();
        }
        job->work = nullptr;  // drop captured inputs (tensors, the model) on this thread
        port->deliver(job);
      },
      vt::ComputeExecutor::Kind::Short, model);
  return promise;
}

}  // namespace vt::addon
