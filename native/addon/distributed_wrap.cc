#include "distributed_wrap.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "convert.h"

namespace vt::addon {

namespace {

Napi::Object group_options_to_js(Napi::Env env, const distributed::GroupOptions& options) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("rank", options.rank);
  object.Set("worldSize", options.world_size);
  object.Set("masterAddr", options.master_addr);
  object.Set("masterPort", options.master_port);
  object.Set("backend", options.backend);
  object.Set("timeoutSeconds", static_cast<double>(options.timeout.count()) / 1000.0);
  object.Set("launcherStore", options.launcher_store);
  object.Set("restartCount", static_cast<double>(options.restart_count));
  object.Set("localRank", options.local_rank);
  object.Set("localWorldSize", options.local_world_size);
  return object;
}

torch::Tensor cpu_tensor_argument(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index) throw Napi::TypeError::New(info.Env(), std::string(what) + ": expected a tensor");
  return tensor_from_js(info[index], what).clone();
}

}  // namespace

distributed::GroupOptions group_options_from_js(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) throw Napi::TypeError::New(env, "distributed: expected the group's options");
  Napi::Object object = value.As<Napi::Object>();
  distributed::GroupOptions options;
  options.rank = static_cast<int>(required(object, "rank", optional_int));
  options.world_size = static_cast<int>(required(object, "worldSize", optional_int));
  options.master_addr = required(object, "masterAddr", optional_string);
  options.master_port = static_cast<int>(required(object, "masterPort", optional_int));
  options.backend = required(object, "backend", optional_string);
  const double timeout = required(object, "timeoutSeconds", optional_number);
  if (!(timeout > 0) || !std::isfinite(timeout)) throw Napi::RangeError::New(env, "timeoutSeconds: expected a positive number");
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::llround(timeout * 1000.0)));
  options.launcher_store = optional_bool(object, "launcherStore").value_or(false);
  options.restart_count = optional_int(object, "restartCount").value_or(0);
  options.local_rank = static_cast<int>(optional_int(object, "localRank").value_or(0));
  options.local_world_size = static_cast<int>(optional_int(object, "localWorldSize").value_or(1));
  return options;
}

// ---------------------------------------------------------------------------------------------

Napi::Function ProcessGroupWrap::define(Napi::Env env) {
  return DefineClass(env, "NativeProcessGroup",
                     {
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::init>>("init"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::rank>>("rank"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::size>>("size"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::all_reduce>>("allReduce"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::broadcast>>("broadcast"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::all_gather>>("allGather"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::barrier>>("barrier"),
                         InstanceMethod<&ProcessGroupWrap::guarded<&ProcessGroupWrap::destroy>>("destroy"),
                     });
}

ProcessGroupWrap::ProcessGroupWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ProcessGroupWrap>(info) {}

std::shared_ptr<distributed::ProcessGroup> ProcessGroupWrap::joined(Napi::Env env) const {
  if (!*group_) throw coded_error(env, "process group: not joined (call init first) or destroyed", "ERR_VISIONTORCH_DISTRIBUTED");
  return *group_;
}

// Collectives and the rendezvous block until every rank takes part: they run on the compute
// thread, in the order they were called, as every rank must issue them.
Napi::Value ProcessGroupWrap::init(const Napi::CallbackInfo& info) {
  auto options = group_options_from_js(info.Length() > 0 ? info[0] : info.Env().Undefined());
  distributed::validate(options);
  if (*group_) throw coded_error(info.Env(), "process group: already joined", "ERR_VISIONTORCH_DISTRIBUTED");
  auto slot = group_;
  return run_async<bool>(
      info.Env(),
      [slot, options] {
        *slot = distributed::ProcessGroup::create(options);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value ProcessGroupWrap::rank(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), joined(info.Env())->rank()); }
Napi::Value ProcessGroupWrap::size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), joined(info.Env())->size()); }

Napi::Value ProcessGroupWrap::all_reduce(const Napi::CallbackInfo& info) {
  auto group = joined(info.Env());
  auto tensor = std::make_shared<torch::Tensor>(cpu_tensor_argument(info, 0, "allReduce"));
  return run_async<torch::Tensor>(
      info.Env(),
      [group, tensor] {
        group->all_reduce_sum(*tensor);
        return *tensor;
      },
      [](Napi::Env env, torch::Tensor& result) -> Napi::Value { return tensor_to_js(env, result); });
}

Napi::Value ProcessGroupWrap::broadcast(const Napi::CallbackInfo& info) {
  auto group = joined(info.Env());
  auto tensor = std::make_shared<torch::Tensor>(cpu_tensor_argument(info, 0, "broadcast"));
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "broadcast: expected the source rank");
  const int root = info[1].As<Napi::Number>().Int32Value();
  if (root < 0 || root >= group->size()) throw Napi::RangeError::New(info.Env(), "broadcast: the source rank is outside the group");
  return run_async<torch::Tensor>(
      info.Env(),
      [group, tensor, root] {
        group->broadcast(*tensor, root);
        return *tensor;
      },
      [](Napi::Env env, torch::Tensor& result) -> Napi::Value { return tensor_to_js(env, result); });
}

Napi::Value ProcessGroupWrap::all_gather(const Napi::CallbackInfo& info) {
  auto group = joined(info.Env());
  auto tensor = std::make_shared<torch::Tensor>(cpu_tensor_argument(info, 0, "allGather"));
  return run_async<std::vector<torch::Tensor>>(
      info.Env(), [group, tensor] { return group->all_gather(*tensor); },
      [](Napi::Env env, std::vector<torch::Tensor>& result) -> Napi::Value {
        Napi::Array array = Napi::Array::New(env, result.size());
        for (size_t i = 0; i < result.size(); ++i) array.Set(static_cast<uint32_t>(i), tensor_to_js(env, result[i]));
        return array;
      });
}

Napi::Value ProcessGroupWrap::barrier(const Napi::CallbackInfo& info) {
  auto group = joined(info.Env());
  return run_async<bool>(
      info.Env(),
      [group] {
        group->barrier();
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value ProcessGroupWrap::destroy(const Napi::CallbackInfo& info) {
  group_->reset();
  return info.Env().Undefined();
}

// ---------------------------------------------------------------------------------------------

Napi::Function StoreServerWrap::define(Napi::Env env) {
  return DefineClass(env, "NativeStoreServer",
                     {
                         InstanceMethod<&StoreServerWrap::guarded<&StoreServerWrap::port>>("port"),
                         InstanceMethod<&StoreServerWrap::guarded<&StoreServerWrap::close>>("close"),
                     });
}

StoreServerWrap::StoreServerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StoreServerWrap>(info) {
  guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
      throw Napi::TypeError::New(info.Env(), "NativeStoreServer: expected (host, port, timeoutSeconds)");
    }
    const double timeout = info[2].As<Napi::Number>().DoubleValue();
    if (!(timeout > 0) || !std::isfinite(timeout)) throw Napi::RangeError::New(info.Env(), "timeoutSeconds: expected a positive number");
    server_ = std::make_unique<distributed::StoreServer>(info[0].As<Napi::String>(), info[1].As<Napi::Number>().Int32Value(),
                                                         std::chrono::milliseconds(static_cast<int64_t>(std::llround(timeout * 1000.0))));
    return info.Env().Undefined();
  });
}

Napi::Value StoreServerWrap::port(const Napi::CallbackInfo& info) {
  if (!server_) throw coded_error(info.Env(), "store server: closed", "ERR_VISIONTORCH_DISTRIBUTED");
  return Napi::Number::New(info.Env(), server_->port());
}

Napi::Value StoreServerWrap::close(const Napi::CallbackInfo& info) {
  server_.reset();
  return info.Env().Undefined();
}

// ---------------------------------------------------------------------------------------------

Napi::Value distributed_environment_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "distributedEnvironment: expected the environment");
  Napi::Object object = info[0].As<Napi::Object>();
  std::map<std::string, std::string> variables;
  Napi::Array keys = object.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string key = keys.Get(i).ToString();
    Napi::Value value = object.Get(key);
    if (value.IsString()) variables[key] = value.As<Napi::String>();
  }
  auto options = distributed::group_from_environment(variables);
  if (!options) return env.Null();
  return group_options_to_js(env, *options);
}

}  // namespace vt::addon
