#include "trainer_wrap.h"

#include <future>
#include <string>
#include <vector>

#include "convert.h"
#include "distributed_wrap.h"
#include "model_wrap.h"
#include "runtime/executor.h"

namespace vt::addon {

namespace {

std::pair<double, double> number_pair(const Napi::Object& object, const char* key, std::pair<double, double> fallback) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined() || value.IsNull()) return fallback;
  if (!value.IsArray() || value.As<Napi::Array>().Length() != 2 || !value.As<Napi::Array>().Get(0u).IsNumber() ||
      !value.As<Napi::Array>().Get(1u).IsNumber()) {
    throw Napi::TypeError::New(object.Env(), std::string(key) + ": expected [min, max]");
  }
  Napi::Array array = value.As<Napi::Array>();
  return {array.Get(0u).As<Napi::Number>().DoubleValue(), array.Get(1u).As<Napi::Number>().DoubleValue()};
}

DatasetSpec dataset_from_js(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) throw Napi::TypeError::New(env, "dataset: expected a dataset configuration object");
  Napi::Object object = value.As<Napi::Object>();
  DatasetSpec spec;
  spec.format = optional_string(object, "format").value_or("");
  spec.root = optional_string(object, "root").value_or("");
  spec.validation_root = optional_string(object, "validationRoot").value_or("");
  spec.path = optional_string(object, "path").value_or("");
  spec.validation_path = optional_string(object, "validationPath").value_or("");
  // Manifest columns have their defaults in the schema; other formats have no columns.
  spec.image_column = optional_string(object, "imageColumn").value_or("");
  spec.label_column = optional_string(object, "labelColumn").value_or("");
  spec.images = optional_string(object, "images").value_or("");
  spec.labels = optional_string(object, "labels").value_or("");
  spec.validation_images = optional_string(object, "validationImages").value_or("");
  spec.validation_labels = optional_string(object, "validationLabels").value_or("");
  spec.annotations = optional_string(object, "annotations").value_or("");
  spec.masks = optional_string(object, "masks").value_or("");
  spec.validation_masks = optional_string(object, "validationMasks").value_or("");
  spec.mask_column = optional_string(object, "maskColumn").value_or("");
  spec.validation_annotations = optional_string(object, "validationAnnotations").value_or("");
  spec.validation_split = optional_number(object, "validationSplit");
  spec.limit = optional_int(object, "limit");
  Napi::Value names = object.Get("classNames");
  if (names.IsArray()) {
    Napi::Array array = names.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) spec.class_names.push_back(array.Get(i).ToString());
  }
  Napi::Value augment = object.Get("augment");
  if (augment.IsObject()) {
    Napi::Object augment_object = augment.As<Napi::Object>();
    Napi::Value crop = augment_object.Get("randomResizedCrop");
    if (crop.IsBoolean()) {
      spec.augment.random_resized_crop = crop.As<Napi::Boolean>().Value();
    } else if (crop.IsObject()) {
      spec.augment.random_resized_crop = true;
      spec.augment.scale = number_pair(crop.As<Napi::Object>(), "scale", spec.augment.scale);
      spec.augment.ratio = number_pair(crop.As<Napi::Object>(), "ratio", spec.augment.ratio);
    }
    spec.augment.horizontal_flip = optional_bool(augment_object, "horizontalFlip").value_or(false);
    Napi::Value scales = augment_object.Get("scales");
    if (scales.IsArray()) {
      Napi::Array array = scales.As<Napi::Array>();
      for (uint32_t i = 0; i < array.Length(); ++i) spec.augment.scales.push_back(array.Get(i).As<Napi::Number>().Int32Value());
    }
  }
  return spec;
}

// The TrainingConfig of the TypeScript schema, defaults applied there: every field it defaults is
// required here, so the core never falls back on defaults of its own.
TrainingOptions options_from_js(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (!value.IsObject()) throw Napi::TypeError::New(env, "training options: expected an object");
  Napi::Object object = value.As<Napi::Object>();
  TrainingOptions options;
  options.optimizer.name = required(object, "optimizer", optional_string);
  options.optimizer.weight_decay = required(object, "weightDecay", optional_number);
  options.optimizer.beta1 = required(object, "adamBeta1", optional_number);
  options.optimizer.beta2 = required(object, "adamBeta2", optional_number);
  options.optimizer.eps = required(object, "adamEpsilon", optional_number);
  options.optimizer.momentum = required(object, "momentum", optional_number);
  options.learning_rate = required(object, "learningRate", optional_number);
  options.lr_scheduler = required(object, "lrScheduler", optional_string);
  options.warmup_steps = required(object, "warmupSteps", optional_int);
  options.warmup_ratio = required(object, "warmupRatio", optional_number);
  options.max_steps = optional_int(object, "maxSteps");
  options.epochs = required(object, "epochs", optional_int);
  options.batch_size = required(object, "batchSize", optional_int);
  options.gradient_accumulation_steps = required(object, "gradientAccumulationSteps", optional_int);
  options.max_grad_norm = required(object, "maxGradNorm", optional_number);
  options.mixed_precision = required(object, "mixedPrecision", optional_string);
  options.label_smoothing = required(object, "labelSmoothing", optional_number);
  const int64_t seed = required(object, "seed", optional_int);
  if (seed < 0) throw Napi::RangeError::New(env, "seed: expected a non-negative integer");
  options.seed = static_cast<uint64_t>(seed);
  options.eval_every = required(object, "evalEvery", optional_int);
  options.save_every = required(object, "saveEvery", optional_int);
  options.log_every = required(object, "logEvery", optional_int);
  options.output_dir = required(object, "outputDir", optional_string);
  options.resume_from = optional_string(object, "resumeFrom").value_or("");
  options.early_stopping_patience = optional_int(object, "earlyStoppingPatience");
  options.early_stopping_metric = required(object, "earlyStoppingMetric", optional_string);
  options.decay_bias_and_norm = required(object, "decayBiasAndNorm", optional_bool);
  options.freeze_batch_norm = required(object, "freezeBatchNorm", optional_bool);
  options.gradient_checkpointing = required(object, "gradientCheckpointing", optional_bool);
  options.num_workers = static_cast<int>(required(object, "numWorkers", optional_int));
  options.drop_last = required(object, "dropLast", optional_bool);
  Napi::Value dataset = object.Get("dataset");
  if (!dataset.IsUndefined() && !dataset.IsNull()) options.dataset = dataset_from_js(dataset);
  // This process as one rank of a data-parallel group (DistributedTrainer's workers, torchrun's).
  Napi::Value distributed = object.Get("distributed");
  if (!distributed.IsUndefined() && !distributed.IsNull()) {
    DistributedOptions parallel;
    parallel.group = group_options_from_js(distributed);
    parallel.parallel.sync_batch_norm = required(distributed.As<Napi::Object>(), "syncBatchNorm", optional_bool);
    options.distributed = parallel;
  }
  return options;
}

Napi::Object step_outcome_to_js(Napi::Env env, StepOutcome& outcome, bool with_gradients) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("loss", outcome.loss);
  result.Set("gradNorm", outcome.grad_norm);
  result.Set("skipped", outcome.skipped);
  result.Set("learningRate", outcome.learning_rate);
  if (!outcome.loss_dict.empty()) {
    Napi::Object dict = Napi::Object::New(env);
    for (const auto& [name, value] : outcome.loss_dict) dict.Set(name, value);
    result.Set("lossDict", dict);
  }
  if (with_gradients) {
    Napi::Object gradients = Napi::Object::New(env);
    for (const auto& [name, tensor] : outcome.gradients) gradients.Set(name, tensor_to_js(env, tensor));
    result.Set("gradients", gradients);
  }
  return result;
}

// train() runs for minutes: it reports each event to `on_event` as it happens, and settles a
// Promise with the run's summary.
class TrainWorker : public Napi::AsyncProgressQueueWorker<std::string> {
 public:
  TrainWorker(Napi::Env env, std::shared_ptr<Trainer> trainer, TrainingOptions options, Napi::Function on_event)
      : Napi::AsyncProgressQueueWorker<std::string>(env, "visiontorch.train"),
        deferred_(Napi::Promise::Deferred::New(env)),
        trainer_(std::move(trainer)),
        options_(std::move(options)) {
    if (!on_event.IsEmpty()) on_event_ = Napi::Persistent(on_event);
  }
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute(const ExecutionProgress& progress) override {
    // The run executes on the compute thread like every other computation: libgomp stops
    // spinning between parallel regions once it manages more threads than there are cores,
    // and a second team of threads made training 25-40% slower on 2 cores. It is the long
    // task: between steps it runs the calls queued behind it, except those on the model it
    // trains (and another train()), which wait for the run to end.
    std::promise<void> done;
    ComputeExecutor::instance().post(
        [&] {
          try {
            result_ = trainer_->train(
                options_,
                [&](const nlohmann::json& event) {
                  std::string text = camel_case_keys(event).dump();
                  progress.Send(&text, 1);
                },
                [] { ComputeExecutor::instance().run_waiting_short_tasks(); });
          } catch (...) {
            failure_ = describe_current_exception();
            SetError(failure_.message);
          }
          done.set_value();
        },
        ComputeExecutor::Kind::Long, trainer_->model());
    done.get_future().wait();
  }

  void OnProgress(const std::string* events, size_t count) override {
    if (on_event_.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (size_t i = 0; i < count; ++i) {
      try {
        on_event_.Call({json_to_js(env, nlohmann::json::parse(events[i]))});
      } catch (const Napi::Error&) {
        // A throwing progress callback must not end the run; the exception is reported by Node.
      }
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    deferred_.Resolve(json_to_js(Env(), camel_case_keys(result_)));
  }
  void OnError(const Napi::Error& error) override {
    Napi::Object object = error.Value();
    object.Set("code", failure_.code.empty() ? error_code_name(ErrorCode::Torch) : failure_.code.c_str());
    deferred_.Reject(object);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Trainer> trainer_;
  TrainingOptions options_;
  Napi::FunctionReference on_event_;
  nlohmann::json result_;
  NativeFailure failure_;
};

}  // namespace

Napi::Function TrainerWrap::define(Napi::Env env) {
  return DefineClass(env, "NativeTrainer",
                     {
                         InstanceMethod<&TrainerWrap::guarded<&TrainerWrap::training_step>>("trainingStep"),
                         InstanceMethod<&TrainerWrap::guarded<&TrainerWrap::train>>("train"),
                         InstanceMethod<&TrainerWrap::guarded<&TrainerWrap::evaluate>>("evaluate"),
                         InstanceMethod<&TrainerWrap::guarded<&TrainerWrap::stop>>("stop"),
                     });
}

TrainerWrap::TrainerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrainerWrap>(info) {
  guard(info.Env(), [&]() -> Napi::Value {
    auto model = ModelWrap::unwrap_model(info[0], "NativeTrainer");
    trainer_ = std::make_shared<Trainer>(model, options_from_js(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value TrainerWrap::training_step(const Napi::CallbackInfo& info) {
  auto inputs = std::make_shared<ModelInputs>(model_inputs_from_js(info[0]));
  const bool return_gradients = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  auto trainer = trainer_;
  return run_async<StepOutcome>(
      info.Env(), [trainer, inputs, return_gradients] { return trainer->training_step(*inputs, return_gradients); },
      [return_gradients](Napi::Env env, StepOutcome& outcome) -> Napi::Value { return step_outcome_to_js(env, outcome, return_gradients); },
      trainer->model());
}

Napi::Value TrainerWrap::train(const Napi::CallbackInfo& info) {
  TrainingOptions options = options_from_js(info[0]);
  Napi::Function on_event = info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
  auto* worker = new TrainWorker(info.Env(), trainer_, std::move(options), on_event);
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

Napi::Value TrainerWrap::evaluate(const Napi::CallbackInfo& info) {
  DatasetSpec spec = dataset_from_js(info[0]);
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "evaluate: batchSize is required");
  const int64_t batch_size = info[1].As<Napi::Number>().Int64Value();
  if (batch_size < 1) throw Napi::RangeError::New(info.Env(), "evaluate: batchSize must be a positive integer");
  auto trainer = trainer_;
  return run_async<Metrics>(
      info.Env(), [trainer, spec, batch_size] { return trainer->evaluate(spec, batch_size); },
      [](Napi::Env env, Metrics& metrics) -> Napi::Value {
        Napi::Object result = Napi::Object::New(env);
        for (const auto& [name, value] : metrics) result.Set(name, value);
        return result;
      },
      trainer->model());
}

Napi::Value TrainerWrap::stop(const Napi::CallbackInfo& info) {
  trainer_->request_stop();
  return info.Env().Undefined();
}

}  // namespace vt::addon
