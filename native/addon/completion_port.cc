#include "addon_data.h"
#include "async_work.h"

namespace vt::addon {

CompletionPort::CompletionPort(Napi::Env env) {
  channel_ = Channel::New(env, "visiontorch", 0, 1, this);
  channel_.Unref(env);
}

void CompletionPort::begin(Napi::Env env) {
  if (in_flight_++ == 0) channel_.Ref(env);
}

void CompletionPort::deliver(Completion* completion) {
  std::lock_guard<std::mutex> lock(mutex_);
  // The environment is gone: nobody waits for the result, and its promise died with it.
  if (closed_ || channel_.BlockingCall(completion) != napi_ok) delete completion;
}

void CompletionPort::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return;
  closed_ = true;
  channel_.Release();
}

void CompletionPort::call_js(Napi::Env env, Napi::Function, CompletionPort* port, Completion* completion) {
  std::unique_ptr<Completion> owned(completion);
  if (env == nullptr) return;  // teardown: nobody is waiting any more
  try {
    owned->settle(env);
    if (--port->in_flight_ == 0) port->channel_.Unref(env);
  } catch (...) {
    // A terminating worker's environment no longer runs JavaScript: the result has no receiver.
  }
}

std::shared_ptr<CompletionPort> completion_port(Napi::Env env) { return env.GetInstanceData<AddonData>()->completions; }

}  // namespace vt::addon
