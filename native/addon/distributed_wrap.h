// The JavaScript handles of torch.distributed's pieces: a process group (NativeProcessGroup:
// collectives on CPU tensors), the store a launcher hosts (NativeStoreServer), and the group a
// launcher's environment describes (distributedEnvironment).
#pragma once

#include <memory>

#include <napi.h>

#include "async_work.h"
#include "distributed/process_group.h"

namespace vt::addon {

// The GroupOptions of a NativeGroupOptions object ({ rank, worldSize, masterAddr, ... }).
distributed::GroupOptions group_options_from_js(const Napi::Value& value);

class ProcessGroupWrap : public Napi::ObjectWrap<ProcessGroupWrap> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit ProcessGroupWrap(const Napi::CallbackInfo& info);

 private:
  template <Napi::Value (ProcessGroupWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value guarded(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] { return (this->*Method)(info); });
  }
  std::shared_ptr<distributed::ProcessGroup> joined(Napi::Env env) const;

  Napi::Value init(const Napi::CallbackInfo& info);
  Napi::Value rank(const Napi::CallbackInfo& info);
  Napi::Value size(const Napi::CallbackInfo& info);
  Napi::Value all_reduce(const Napi::CallbackInfo& info);
  Napi::Value broadcast(const Napi::CallbackInfo& info);
  Napi::Value all_gather(const Napi::CallbackInfo& info);
  Napi::Value barrier(const Napi::CallbackInfo& info);
  Napi::Value destroy(const Napi::CallbackInfo& info);

  // Shared with the jobs in flight, which keep the group alive until they finish.
  std::shared_ptr<std::shared_ptr<distributed::ProcessGroup>> group_ = std::make_shared<std::shared_ptr<distributed::ProcessGroup>>();
};

class StoreServerWrap : public Napi::ObjectWrap<StoreServerWrap> {
 public:
  static Napi::Function define(Napi::Env env);
  // new NativeStoreServer(host, port, timeoutSeconds)
  explicit StoreServerWrap(const Napi::CallbackInfo& info);

 private:
  template <Napi::Value (StoreServerWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value guarded(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] { return (this->*Method)(info); });
  }
  Napi::Value port(const Napi::CallbackInfo& info);
  Napi::Value close(const Napi::CallbackInfo& info);

  std::unique_ptr<distributed::StoreServer> server_;
};

// distributedEnvironment(env): the group a torchrun-style environment describes, or null.
Napi::Value distributed_environment_js(const Napi::CallbackInfo& info);

}  // namespace vt::addon
