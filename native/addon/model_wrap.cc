#include "model_wrap.h"

#include "addon_data.h"
#include "async_work.h"
#include "convert.h"
#include "runtime/caching_allocator.h"

namespace vt::addon {

namespace {

Napi::Array strings_to_js(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array array = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); ++i) array.Set(static_cast<uint32_t>(i), items[i]);
  return array;
}

Napi::Object tensors_to_js(Napi::Env env, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  Napi::Object object = Napi::Object::New(env);
  for (const auto& [name, tensor] : tensors) object.Set(name, tensor_to_js(env, tensor));
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
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::classify>>("classify"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::detect>>("detect"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::segment>>("segment"),
                         InstanceMethod<&ModelWrap::guarded<&ModelWrap::save>>("save"),
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
  if (!model_) throw Napi::Error::New(env, "this model was disposed");
  return model_;
}

Napi::Value ModelWrap::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto model = this->model(env);
  Napi::Object result = Napi::Object::New(env);
  result.Set("architecture", model->architecture());
  result.Set("modelType", task_name(model->task()));
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
  return run_async<ModelOutputs>(
      info.Env(), [model, inputs] { return model->forward(*inputs); },
      [](Napi::Env env, ModelOutputs& outputs) -> Napi::Value { return tensors_to_js(env, outputs); });
}

Napi::Value ModelWrap::state_dict(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  return run_async<TensorMap>(
      info.Env(), [model] { return model->state_dict(); },
      [](Napi::Env env, TensorMap& state) -> Napi::Value {
        Napi::Object object = Napi::Object::New(env);
        for (const auto& [name, tensor] : state) object.Set(name, tensor_to_js(env, tensor));
        return object;
      });
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
      });
}

Napi::Value ModelWrap::segment(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto sources = images_from_js(info[0], "image");
  using Maps = std::vector<torch::Tensor>;
  return run_async<Maps>(
      info.Env(), [model, sources] { return model->segment(load_images(sources)); },
      [](Napi::Env env, Maps& maps) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, maps.size());
        for (size_t i = 0; i < maps.size(); ++i) result.Set(static_cast<uint32_t>(i), tensor_to_js(env, maps[i]));
        return result;
      });
}

Napi::Value ModelWrap::detect(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto sources = images_from_js(info[0], "image");
  double threshold = 0.5;
  if (info.Length() > 1 && info[1].IsObject()) threshold = optional_number(info[1].As<Napi::Object>(), "threshold").value_or(0.5);
  using Results = std::vector<std::vector<PretrainedModel::LabeledDetection>>;
  return run_async<Results>(
      info.Env(), [model, sources, threshold] { return model->detect(load_images(sources), threshold); },
      [](Napi::Env env, Results& results) -> Napi::Value {
        Napi::Array images = Napi::Array::New(env, results.size());
        for (size_t i = 0; i < results.size(); ++i) {
          Napi::Array detections = Napi::Array::New(env, results[i].size());
          for (size_t j = 0; j < results[i].size(); ++j) {
            const auto& [label, d] = results[i][j];
            Napi::Object box = Napi::Object::New(env);
            box.Set("xmin", d.xmin);
            box.Set("ymin", d.ymin);
            box.Set("xmax", d.xmax);
            box.Set("ymax", d.ymax);
            Napi::Object entry = Napi::Object::New(env);
            entry.Set("label", label);
            entry.Set("score", d.score);
            entry.Set("index", static_cast<double>(d.label));
            entry.Set("box", box);
            detections.Set(static_cast<uint32_t>(j), entry);
          }
          images.Set(static_cast<uint32_t>(i), detections);
        }
        return images;
      });
}

Napi::Value ModelWrap::classify(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  auto sources = images_from_js(info[0], "image");
  int64_t top_k = 5;
  if (info.Length() > 1 && info[1].IsObject()) top_k = optional_int(info[1].As<Napi::Object>(), "topK").value_or(5);
  using Scores = std::vector<std::vector<ClassScore>>;
  return run_async<Scores>(
      info.Env(),
      [model, sources, top_k] { return model->classify(load_images(sources), top_k); },
      [](Napi::Env env, Scores& scores) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, scores.size());
        for (size_t i = 0; i < scores.size(); ++i) {
          Napi::Array ranked = Napi::Array::New(env, scores[i].size());
          for (size_t j = 0; j < scores[i].size(); ++j) {
            Napi::Object entry = Napi::Object::New(env);
            entry.Set("label", scores[i][j].label);
            entry.Set("score", scores[i][j].score);
            entry.Set("index", static_cast<double>(scores[i][j].index));
            ranked.Set(static_cast<uint32_t>(j), entry);
          }
          result.Set(static_cast<uint32_t>(i), ranked);
        }
        return result;
      });
}

Napi::Value ModelWrap::save(const Napi::CallbackInfo& info) {
  auto model = this->model(info.Env());
  if (info.Length() < 1 || !info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(info.Env(), "save: expected a directory path");
  }
  std::string directory = info[0].As<Napi::String>();
  return run_async<bool>(
      info.Env(), [model, directory] { model->save(directory); return true; },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

Napi::Value ModelWrap::dispose(const Napi::CallbackInfo& info) {
  // Work already queued keeps its own reference and finishes; later calls are refused.
  model_.reset();
  // What the model's computations freed goes back to the system with it.
  release_cached_cpu_memory();
  return info.Env().Undefined();
}

}  // namespace vt::addon
