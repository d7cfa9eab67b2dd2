#include "model_wrap.h"

#include "addon_data.h"
#include "async_work.h"
#include "convert.h"
#include "runtime/caching_allocator.h"
#include "runtime/op_profile.h"

namespace vt::addon {

namespace {

Napi::Array strings_to_js(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array array = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); ++i) array.Set(static_cast<uint32_t>(i), items[i]);
  return array;
}

Napi::Object tensors_to_js(Napi::Env env, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  Napi::Object object = Napi::Object::New(env);
  for (const auto& [name, tensor] : tensors) object.Set(camel_case(name), tensor_to_js(env, tensor));
  return object;
}

}  // namespace

Napi::Function ModelWrap::define(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::info>>("info"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::forward>>("forward"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::state_dict>>("stateDict"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::preprocess>>("preprocess"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::predict>>("predict"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::save>>("save"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::load_saved>>("loadSaved"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::dispose>>("dispose"),
                     });
}

ModelWrap::ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "NativeModel is created by loadModel(), not directly");
  }
  model_ = *info[0].As<Napi::External<std::shared_ptr<PretrainedModel>>>().Data();
}

std::shared_ptr<PretrainedModel> ModelWrap::unwrap_model(const Napi::Value& value, const char* what) {
  Napi::Env env = value.Env();
  auto* data = env.GetInstanceData<AddonData>();
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->model_constructor.Value())) {
    throw Napi::TypeError::New(env, std::string(what) + ": expected a model from loadModel()");
  }
  return Unwrap(value.As<Napi::Object>())->model(env);
}

std::shared_ptr<PretrainedModel> ModelWrap::model(Napi::Env env) const {
  if (!model_) throw coded_error(env, "this model was disposed", error_code_name(ErrorCode::Disposed));
  return model_;
}

Napi::Value ModelWrap::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto model = this->model(env);
  Napi::Object result = Napi::Object::New(env);
  result.Set("architecture", model->architecture());
  result.Set("modelType", model->task()->name);
  result.Set("padsBatches", model->pads_batches());
  result.Set("labels", strings_to_js(env, model->labels()));
  result.Set("device", model->device_name());
  result.Set("dtype", dtype_name(model->dtype()));
  result.Set("quantization", model->quantization());
  result.Set("config", model->config().dump());
  result.Set("processorConfig", model->processor().config().to_json().dump());
  const LoadReport& report = model->load_report();
  Napi::Object load_report = Napi::Object::New(env);
  load_report.Set("source", report.source);
  load_report.Set("initialized", strings_to_js(env, report.initialized));
  load_report.Set("unexpected", strings_to_js(env, report.unexpected));
  load_report.Set("mismatched", strings_to_js(env, report.mismatched));
  load_report.Set("adapted", strings_to_js(env, report.adapted));
  result.Set("loadReport", load_report);
  return result;
}

Napi::Value ModelWrap::forward(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto inputs = std::make_shared<ModelInputs>(model_inputs_from_js(info[0]));
  // A small pass on one thread runs here, as long as nothing waits on the compute thread (which
  // keeps calls in order) and no operator profile times the compute thread: its two thread
  // hand-offs would take longer than the pass.
  if (ComputeExecutor::instance().idle() && !op_profile_running()) {
    Napi::Env env = info.Env();
    auto deferred = Napi::Promise::Deferred::New(env);
    try {
      // A pass found small runs on a team of one (its InferencePass sets it), so it starts no
      // OpenMP team here; no SingleThreadScope around it, whose count of 1 would make forward()
      // restore the configured count through at::set_num_threads, which rebuilds libtorch's
      // thread pool on every call.
      std::optional<ModelOutputs> outputs = model->forward_if_small(*inputs);
      if (outputs) {
        deferred.Resolve(tensors_to_js(env, *outputs));
        return deferred.Promise();
      }
    } catch (const Napi::Error& error) {
      deferred.Reject(error.Value());
      return deferred.Promise();
    } catch (...) {
      deferred.Reject(to_js_error(env, describe_current_exception()).Value());
      return deferred.Promise();
    }
  }
  return run_async<ModelOutputs>(
      info.Env(),
      [model, inputs] {
        ModelOutputs outputs = model->forward(*inputs);
        for (auto& [name, tensor] : outputs) tensor = ready_for_js(tensor);
        return outputs;
      },
      [](Napi::Env env, ModelOutputs& outputs) -> Napi::Value { return tensors_to_js(env, outputs); }, model.get());
}

Napi::Value ModelWrap::state_dict(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  return run_async<TensorMap>(
      info.Env(), [model] { return model->state_dict(); },
      [](Napi::Env env, TensorMap& state) -> Napi::Value {
        Napi::Object object = Napi::Object::New(env);
        for (const auto& [name, tensor] : state) object.Set(name, tensor_to_js(env, tensor));
        return object;
      },
      model.get());
}

Napi::Value ModelWrap::preprocess(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto sources = images_from_js(info[0], "image");
  using Preprocessed = PretrainedModel::Preprocessed;
  return run_async<Preprocessed>(
      info.Env(), [model, sources] { return model->preprocess(load_images(sources)); },
      [](Napi::Env env, Preprocessed& processed) -> Napi::Value {
        Napi::Object result = Napi::Object::New(env);
        result.Set("pixelValues", tensor_to_js(env, processed.pixel_values));
        if (processed.pixel_mask.defined()) result.Set("pixelMask", tensor_to_js(env, processed.pixel_mask));
        return result;
      },
      model.get());
}

// predict(images, options): the model's task post-processes (see tasks/task.h); options of other
// tasks are ignored.
Napi::Value ModelWrap::predict(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto sources = images_from_js(info[0], "image");
  PredictOptions options;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object object = info[1].As<Napi::Object>();
    options.top_k = optional_int(object, "topK");
    options.threshold = optional_number(object, "threshold");
    options.segmentation_task = optional_string(object, "task");
    options.mask_threshold = optional_number(object, "maskThreshold");
    options.overlap_mask_area_threshold = optional_number(object, "overlapMaskAreaThreshold");
    Napi::Value fuse = object.Get("labelIdsToFuse");
    if (!fuse.IsUndefined() && !fuse.IsNull()) {
      if (!fuse.IsArray()) throw Napi::TypeError::New(info.Env(), "labelIdsToFuse: expected an array of class indices");
      Napi::Array ids = fuse.As<Napi::Array>();
      for (uint32_t i = 0; i < ids.Length(); ++i) {
        Napi::Value id = ids.Get(i);
        if (!id.IsNumber()) throw Napi::TypeError::New(info.Env(), "labelIdsToFuse[" + std::to_string(i) + "]: expected a class index");
        options.label_ids_to_fuse.push_back(id.As<Napi::Number>().Int64Value());
      }
    }
  }
  using Predictions = std::vector<Prediction>;
  return run_async<Predictions>(
      info.Env(), [model, sources, options] { return model->predict(load_images(sources), options); },
      [](Napi::Env env, Predictions& predictions) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, predictions.size());
        for (size_t i = 0; i < predictions.size(); ++i) {
          Napi::Value value = json_to_js(env, predictions[i].value);
          for (const auto& [name, map] : predictions[i].maps) {
            value.As<Napi::Object>().Set(camel_case(name), tensor_to_js(env, map).Get("data"));
          }
          result.Set(static_cast<uint32_t>(i), value);
        }
        return result;
      },
      model.get());
}

Napi::Value ModelWrap::save(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  if (info.Length() < 1 || !info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(info.Env(), "save: expected a directory path");
  }
  std::string directory = string_value(info[0], "save: directory");
  return run_async<bool>(
      info.Env(),
      [model, directory] {
        model->save(directory);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); }, model.get());
}

Napi::Value ModelWrap::load_saved(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  if (info.Length() < 1 || !info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(info.Env(), "loadSaved: expected a directory path");
  }
  std::string directory = string_value(info[0], "loadSaved: directory");
  return run_async<bool>(
      info.Env(),
      [model, directory] {
        model->load_saved(directory);
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); }, model.get());
}

Napi::Value ModelWrap::dispose(const Napi::CallbackInfo& info) {
  // Work already queued keeps its own reference and finishes; later calls are refused.
  model_.reset();
  // What the model's computations freed goes back to the system with it.
  release_cached_cpu_memory();
  return info.Env().Undefined();
}

}  // namespace vt::addon
