// visiontorch's native module: the functions binding.d.ts declares.
#include <napi.h>

#include <torch/torch.h>

#include "addon_data.h"
#include "async_work.h"
#include "common/error.h"
#include "convert.h"
#include "distributed_wrap.h"
#include "io/safetensors.h"
#include "model_wrap.h"
#include "models/torchscript.h"
#include "pretrained/pretrained.h"
#include "pretrained/registry.h"
#include "runtime/caching_allocator.h"
#include "runtime/executor.h"
#include "runtime/inference_team.h"
#include "runtime/op_profile.h"
#include "runtime/threads.h"
#include "trainer_wrap.h"

namespace vt::addon {

NativeFailure describe_current_exception() {
  try {
    throw;
  } catch (const vt::Error& error) {
    return {error.what(), error_code_name(error.code())};
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    // libtorch's allocators report exhaustion as c10::Error.
    const bool out_of_memory =
        message.find("can't allocate memory") != std::string::npos || message.find("out of memory") != std::string::npos;
    return {message, error_code_name(out_of_memory ? ErrorCode::OutOfMemory : ErrorCode::Torch)};
  } catch (const std::bad_alloc&) {
    return {"out of memory", error_code_name(ErrorCode::OutOfMemory)};
  } catch (const std::exception& error) {
    return {error.what(), error_code_name(ErrorCode::Torch)};
  } catch (...) {
    return {"unknown native error", error_code_name(ErrorCode::Torch)};
  }
}

Napi::Error to_js_error(Napi::Env env, const NativeFailure& failure) {
  Napi::Error error = Napi::Error::New(env, failure.message);
  error.Set("code", failure.code);
  return error;
}

Napi::Error coded_error(Napi::Env env, const std::string& message, const char* code) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", code);
  return error;
}

namespace {

Napi::Object object_argument(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index || !info[index].IsObject()) throw Napi::TypeError::New(info.Env(), std::string(what) + ": expected an object");
  return info[index].As<Napi::Object>();
}

std::string string_argument(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index) throw Napi::TypeError::New(info.Env(), std::string(what) + ": expected a string");
  return string_value(info[index], what);
}

LoadOptions load_options_from_js(const Napi::Object& object) {
  Napi::Env env = object.Env();
  LoadOptions options;
  auto directory = optional_string(object, "directory");
  if (!directory || directory->empty()) throw Napi::TypeError::New(env, "loadModel: directory is required");
  options.directory = *directory;
  options.task = find_task(optional_string(object, "task").value_or("classification"));
  options.pretrained = optional_bool(object, "pretrained").value_or(true);
  options.num_classes = optional_int(object, "numClasses");
  if (options.num_classes && *options.num_classes <= 0) throw Napi::TypeError::New(env, "numClasses: expected a positive integer");
  Napi::Value id2label = object.Get("id2label");
  if (id2label.IsObject()) {
    std::map<int64_t, std::string> labels;
    Napi::Object labels_object = id2label.As<Napi::Object>();
    Napi::Array keys = labels_object.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string key = keys.Get(i).ToString();
      Napi::Value label = labels_object.Get(key);
      if (!label.IsString()) throw Napi::TypeError::New(env, "id2label[" + key + "]: expected a string");
      size_t used = 0;
      int64_t index = -1;
      try {
        index = std::stoll(key, &used);
      } catch (const std::exception&) {}
      if (used != key.size() || index < 0) throw Napi::TypeError::New(env, "id2label: key \"" + key + "\" is not a label index");
      labels[index] = label.As<Napi::String>().Utf8Value();
    }
    options.id2label = labels;
  }
  options.image_size = optional_int(object, "imageSize");
  options.channels = optional_int(object, "channels");
  options.ignore_mismatched_sizes = optional_bool(object, "ignoreMismatchedSizes").value_or(false);
  options.dtype = optional_string(object, "dtype").value_or("float32");
  options.device = optional_string(object, "device").value_or("auto");
  if (auto seed = optional_int(object, "seed")) options.seed = static_cast<uint64_t>(*seed);
  options.memory_format = optional_string(object, "memoryFormat").value_or("auto");
  options.quantization = optional_string(object, "quantization").value_or("none");
  return options;
}

Napi::Value load_model(const Napi::CallbackInfo& info) {
  LoadOptions options = load_options_from_js(object_argument(info, 0, "loadModel"));
  return run_async<std::shared_ptr<PretrainedModel>>(
      info.Env(), [options] { return PretrainedModel::load(options); },
      [](Napi::Env env, std::shared_ptr<PretrainedModel>& model) -> Napi::Value {
        auto* data = env.GetInstanceData<AddonData>();
        return data->model_constructor.New({Napi::External<std::shared_ptr<PretrainedModel>>::New(env, &model)});
      });
}

Napi::Value load_safetensors_js(const Napi::CallbackInfo& info) {
  std::string path = string_argument(info, 0, "loadSafetensors: path");
  return run_async<TensorMap>(
      info.Env(),
      [path] {
        TensorMap tensors = load_safetensors(path);
        // Copy out of the mapping here, on the worker, rather than on the JS thread.
        for (auto& [name, tensor] : tensors) tensor = tensor.clone();
        return tensors;
      },
      [](Napi::Env env, TensorMap& tensors) -> Napi::Value {
        Napi::Object object = Napi::Object::New(env);
        for (const auto& [name, tensor] : tensors) object.Set(name, tensor_to_js(env, tensor));
        return object;
      });
}

Napi::Value save_safetensors_js(const Napi::CallbackInfo& info) {
  std::string path = string_argument(info, 0, "saveSafetensors: path");
  Napi::Object tensors_object = object_argument(info, 1, "saveSafetensors: tensors");
  TensorMap tensors;
  Napi::Array names = tensors_object.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    std::string name = names.Get(i).ToString();
    tensors[name] = tensor_from_js(tensors_object.Get(name), name);
  }
  std::map<std::string, std::string> metadata;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object metadata_object = info[2].As<Napi::Object>();
    Napi::Array keys = metadata_object.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string key = keys.Get(i).ToString();
      Napi::Value value = metadata_object.Get(key);
      if (!value.IsString()) throw Napi::TypeError::New(info.Env(), "saveSafetensors: metadata." + key + " must be a string");
      metadata[key] = value.As<Napi::String>().Utf8Value();
    }
  }
  return run_async<bool>(
      info.Env(),
      [path, tensors, metadata] {
        save_safetensors(path, tensors, metadata);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value decode_image_js(const Napi::CallbackInfo& info) {
  if (info.Length() < 1) throw Napi::TypeError::New(info.Env(), "decodeImage: expected an image");
  auto sources = images_from_js(info[0], "image");
  if (sources.size() != 1) throw Napi::TypeError::New(info.Env(), "decodeImage: expected one image");
  ImageSource source = sources.front();
  return run_async<Image>(
      info.Env(), [source] { return source.load(); },
      [](Napi::Env env, Image& image) -> Napi::Value {
        Napi::Object result = Napi::Object::New(env);
        result.Set("width", image.width);
        result.Set("height", image.height);
        result.Set("channels", image.channels);
        Napi::Uint8Array data = Napi::Uint8Array::New(env, image.pixels.size());
        std::copy(image.pixels.begin(), image.pixels.end(), data.Data());
        result.Set("data", data);
        return result;
      });
}

Napi::Value architectures_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto& table = architectures();
  Napi::Array result = Napi::Array::New(env, table.size() + 1);
  for (size_t i = 0; i < table.size(); ++i) {
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("architecture", table[i].name);
    entry.Set("modelType", table[i].model_type);
    entry.Set("task", table[i].task ? Napi::Value(Napi::String::New(env, table[i].task->name)) : env.Null());
    Napi::Array checkpoints = Napi::Array::New(env, table[i].checkpoints.size());
    for (size_t j = 0; j < table[i].checkpoints.size(); ++j) checkpoints.Set(static_cast<uint32_t>(j), table[i].checkpoints[j]);
    entry.Set("checkpoints", checkpoints);
    result.Set(static_cast<uint32_t>(i), entry);
  }
  // Custom models: any TorchScript classifier (see models/torchscript.h).
  Napi::Object custom = Napi::Object::New(env);
  custom.Set("architecture", torchscript::kArchitecture);
  custom.Set("modelType", "torchscript");
  custom.Set("task", "classification");
  custom.Set("checkpoints", Napi::Array::New(env));
  result.Set(static_cast<uint32_t>(table.size()), custom);
  return result;
}

Napi::Value set_num_threads_js(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "setNumThreads: expected a number");
  double threads = info[0].As<Napi::Number>().DoubleValue();
  if (!(threads >= 0) || threads > 1024 || std::floor(threads) != threads) {
    throw Napi::RangeError::New(info.Env(), "setNumThreads: expected an integer from 0 (the default) to 1024");
  }
  set_compute_threads(static_cast<int>(threads));
  return info.Env().Undefined();
}

// Called on the main thread's process 'exit' event, before exit() destroys static objects.
Napi::Value prepare_exit_js(const Napi::CallbackInfo& info) {
  vt::ComputeExecutor::instance().finish_for_exit();
  return info.Env().Undefined();
}

// The operator profile runs on the compute thread, where every computation runs: started and
// stopped by tasks queued in order with the calls between them.
Napi::Value start_profiler_js(const Napi::CallbackInfo& info) {
  return run_async<bool>(
      info.Env(),
      [] {
        start_op_profile();
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value stop_profiler_js(const Napi::CallbackInfo& info) {
  return run_async<OpProfile>(
      info.Env(), [] { return stop_op_profile(); },
      [](Napi::Env env, OpProfile& profile) -> Napi::Value {
        Napi::Object result = Napi::Object::New(env);
        result.Set("wallSeconds", profile.wall_seconds);
        Napi::Array ops = Napi::Array::New(env, profile.ops.size());
        for (size_t i = 0; i < profile.ops.size(); ++i) {
          const OpTiming& op = profile.ops[i];
          Napi::Object entry = Napi::Object::New(env);
          entry.Set("phase", op.phase);
          entry.Set("name", op.name);
          entry.Set("calls", static_cast<double>(op.calls));
          entry.Set("selfSeconds", op.self_seconds);
          entry.Set("totalSeconds", op.total_seconds);
          ops.Set(static_cast<uint32_t>(i), entry);
        }
        result.Set("ops", ops);
        return result;
      });
}

Napi::Value runtime_info_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  result.Set("torchVersion", TORCH_VERSION);
  result.Set("cudaAvailable", torch::cuda::is_available());
  result.Set("cudaDevices", static_cast<double>(torch::cuda::device_count()));
  result.Set("computeThreads", compute_threads());
  result.Set("defaultComputeThreads", default_compute_threads());
  result.Set("cachedMemoryBytes", static_cast<double>(cached_cpu_memory().cached_bytes));
  result.Set("lastInferenceThreads", last_inference_team());
  result.Set("cpuContended", CpuContention::process().active());
  return result;
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->completions = std::make_shared<CompletionPort>(env);
  data->model_constructor = Napi::Persistent(ModelWrap::define(env));
  Napi::Function trainer_class = TrainerWrap::define(env);
  data->trainer_constructor = Napi::Persistent(trainer_class);
  env.SetInstanceData<AddonData>(data);
  set_compute_threads(0);
  install_caching_cpu_allocator();
  exports.Set("loadModel", Napi::Function::New<guarded<load_model>>(env, "loadModel"));
  exports.Set("loadSafetensors", Napi::Function::New<guarded<load_safetensors_js>>(env, "loadSafetensors"));
  exports.Set("saveSafetensors", Napi::Function::New<guarded<save_safetensors_js>>(env, "saveSafetensors"));
  exports.Set("decodeImage", Napi::Function::New<guarded<decode_image_js>>(env, "decodeImage"));
  exports.Set("architectures", Napi::Function::New<guarded<architectures_js>>(env, "architectures"));
  exports.Set("setNumThreads", Napi::Function::New<guarded<set_num_threads_js>>(env, "setNumThreads"));
  exports.Set("prepareExit", Napi::Function::New<guarded<prepare_exit_js>>(env, "prepareExit"));
  exports.Set("NativeTrainer", trainer_class);
  exports.Set("runtimeInfo", Napi::Function::New<guarded<runtime_info_js>>(env, "runtimeInfo"));
  exports.Set("startProfiler", Napi::Function::New<guarded<start_profiler_js>>(env, "startProfiler"));
  exports.Set("stopProfiler", Napi::Function::New<guarded<stop_profiler_js>>(env, "stopProfiler"));
  exports.Set("NativeProcessGroup", ProcessGroupWrap::define(env));
  exports.Set("NativeStoreServer", StoreServerWrap::define(env));
  exports.Set("distributedEnvironment", Napi::Function::New<guarded<distributed_environment_js>>(env, "distributedEnvironment"));
  return exports;
}

}  // namespace

}  // namespace vt::addon

// NODE_API_MODULE pastes its second argument into a name, so it takes an unqualified one.
static Napi::Object InitVisiontorch(Napi::Env env, Napi::Object exports) { return vt::addon::init(env, exports); }

NODE_API_MODULE(visiontorch, InitVisiontorch)
