#include "train/trainer.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "common/error.h"
#include "train/training_data.h"
#include "models/losses.h"
#include "runtime/threads.h"
#include "train/checkpoint.h"

namespace vt {

namespace fs = std::filesystem;

namespace {

// Mixed precision for the forward pass, as torch.autocast: reduced-precision matmuls and
// convolutions, float32 weights and gradients. Casts are cached per region and the cache is
// cleared on exit, so the next step sees the updated weights.
class AutocastScope {
 public:
  AutocastScope(const std::string& mixed_precision, torch::Device device) {
    if (mixed_precision == "no") return;
    cpu_ = device.is_cpu();
    if (cpu_) {
      VT_CHECK(mixed_precision == "bf16", "mixedPrecision \"", mixed_precision, "\" needs a CUDA device; on CPU use bf16");
      was_enabled_ = at::autocast::is_cpu_enabled();
      was_dtype_ = at::autocast::get_autocast_cpu_dtype();
      at::autocast::set_cpu_enabled(true);
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    } else {
      was_enabled_ = at::autocast::is_enabled();
      was_dtype_ = at::autocast::get_autocast_gpu_dtype();
      at::autocast::set_enabled(true);
      at::autocast::set_autocast_gpu_dtype(mixed_precision == "bf16" ? at::kBFloat16 : at::kHalf);
    }
    at::autocast::increment_nesting();
    active_ = true;
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    if (cpu_) {
      at::autocast::set_cpu_enabled(was_enabled_);
      at::autocast::set_autocast_cpu_dtype(was_dtype_);
    } else {
      at::autocast::set_enabled(was_enabled_);
      at::autocast::set_autocast_gpu_dtype(was_dtype_);
    }
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false, cpu_ = true, was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

ScheduleConfig schedule_for(const TrainingOptions& options, int64_t total_steps) {
  ScheduleConfig schedule;
  schedule.kind = options.lr_scheduler;
  schedule.total_steps = total_steps;
  schedule.warmup_steps = options.warmup_steps > 0
                              ? options.warmup_steps
                              : static_cast<int64_t>(std::ceil(options.warmup_ratio * static_cast<double>(total_steps)));
  validate_schedule(schedule);
  return schedule;
}

void validate_options(const TrainingOptions& options) {
  VT_CHECK(options.learning_rate > 0, "learningRate must be positive");
  VT_CHECK(options.batch_size > 0, "batchSize must be a positive integer");
  VT_CHECK(options.epochs > 0, "epochs must be a positive integer");
  VT_CHECK(options.gradient_accumulation_steps > 0, "gradientAccumulationSteps must be a positive integer");
  VT_CHECK(options.max_grad_norm >= 0, "maxGradNorm must not be negative");
  VT_CHECK(options.label_smoothing >= 0 && options.label_smoothing < 1, "labelSmoothing must be in [0, 1)");
  VT_CHECK(options.mixed_precision == "no" || options.mixed_precision == "bf16" || options.mixed_precision == "fp16",
           "mixedPrecision must be no, bf16 or fp16");
  VT_CHECK(!options.max_steps || *options.max_steps > 0, "maxSteps must be a positive integer");
}

// The per-metric improvement rule of early stopping and best-checkpoint tracking.
bool lower_is_better(const std::string& metric) { return metric.find("loss") != std::string::npos; }

std::string dataset_hint(size_t model_labels, size_t classes) {
  return str_cat("the model has ", model_labels, " labels but the dataset has ", classes,
                 " classes: load the model with numClasses: ", classes,
                 " (and ignoreMismatchedSizes: true to replace a pretrained head)");
}

}  // namespace

bool metric_improves(const std::string& metric, double candidate, double best) {
  return lower_is_better(metric) ? candidate < best : candidate > best;
}

Trainer::Trainer(std::shared_ptr<PretrainedModel> model, TrainingOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  validate_options(options_);
  VT_CHECK(model_->quantization() == "none", "a model loaded with ", model_->quantization(),
           " quantization is for inference only: load it without quantization to train it");
}

bool Trainer::unscale_gradients(const NamedParameters& parameters) {
  torch::NoGradGuard no_grad;
  bool finite = true;
  for (const auto& [name, parameter] : parameters) {
    if (!parameter.grad().defined()) continue;
    parameter.grad().div_(loss_scale_);
    finite = finite && parameter.grad().isfinite().all().item<bool>();
  }
  if (!finite) {
    loss_scale_ /= 2.0;
    clean_steps_ = 0;
  } else if (++clean_steps_ == 2000) {  // GradScaler's growth interval and factor
    loss_scale_ *= 2.0;
    clean_steps_ = 0;
  }
  return finite;
}

Optimizer& Trainer::optimizer_for(const TrainingOptions& options) {
  if (!optimizer_) {
    std::set<std::string> frozen;
    if (options.freeze_batch_norm) {
      for (const auto& item : model_->module()->named_modules()) {
        if (!dynamic_cast<torch::nn::BatchNorm2dImpl*>(item.value().get())) continue;
        for (const auto& parameter : item.value()->named_parameters(false)) frozen.insert(item.key() + "." + parameter.key());
      }
    }
    NamedParameters trainable;
    for (const auto& item : model_->module()->named_parameters()) {
      if (item.value().requires_grad() && !frozen.count(item.key())) trainable.emplace_back(item.key(), item.value());
    }
    VT_CHECK(!trainable.empty(), model_->architecture(), " has no trainable parameters: every one is frozen");
    std::set<std::string> no_decay;
    if (!options.decay_bias_and_norm) no_decay = no_decay_parameter_names(*model_->module());
    optimizer_ = std::make_unique<Optimizer>(std::move(trainable), std::move(no_decay), options.optimizer);
  }
  return *optimizer_;
}

StepOutcome Trainer::optimizer_step(const std::vector<ModelInputs>& micro_batches, bool return_gradients,
                                    const TrainingOptions& options, const ScheduleConfig& schedule) {
  Optimizer& optimizer = optimizer_for(options);
  std::lock_guard<std::mutex> lock(model_->mutex());
  apply_compute_threads();
  VisionModule& module = *model_->module();
  module.train();
  if (options.freeze_batch_norm) {
    for (const auto& child : module.modules()) {
      if (dynamic_cast<torch::nn::BatchNorm2dImpl*>(child.get())) child->eval();
    }
  }
  module.set_gradient_checkpointing(options.gradient_checkpointing);
  const HeadConfig head = HeadConfig::from_json(model_->config(), "config.json");
  StepOutcome outcome;
  const double share = 1.0 / static_cast<double>(micro_batches.size());
  const bool loss_scaling = options.mixed_precision == "fp16";
  for (const auto& micro_batch : micro_batches) {
    VT_CHECK(micro_batch.has_labels(), "trainingStep: the batch has no labels");
    ModelInputs inputs = move_inputs(micro_batch, model_->device(), model_->dtype(), model_->memory_format());
    torch::Tensor loss;
    ModelOutputs outputs;
    {
      AutocastScope autocast(options.mixed_precision, model_->device());
      if (options.label_smoothing > 0 && inputs.labels.defined() && model_->task() == Task::Classification) {
        // transformers' Trainer smooths the labels itself, from the logits.
        ModelInputs unlabeled = inputs;
        unlabeled.labels = torch::Tensor();
        outputs = module.forward(unlabeled);
        loss = image_classification_loss(find_output(outputs, "logits"), inputs.labels, head.problem_type,
                                         options.label_smoothing);
      } else {
        outputs = module.forward(inputs);
        loss = find_output(outputs, "loss");
      }
    }
    VT_CHECK(loss.defined(), model_->architecture(), " returned no loss for these labels");
    loss = loss.to(torch::kFloat32);
    // fp16 gradients are computed on a scaled loss, so that small values survive half precision.
    (loss * (share * (loss_scaling ? loss_scale_ : 1.0))).backward();
    outcome.loss += loss.item<double>() * share;
    for (const auto& [name, value] : outputs) {
      if (name.rfind("lossDict.", 0) == 0) outcome.loss_dict[name.substr(9)] += value.item<double>() * share;
    }
  }
  const NamedParameters& parameters = optimizer.parameters();
  if (loss_scaling && !unscale_gradients(parameters)) {
    // torch.cuda.amp.GradScaler: an overflowing step is skipped and the scale halves.
    optimizer.zero_grad();
    outcome.grad_norm = std::numeric_limits<double>::infinity();
    ++completed_steps_;
    return outcome;
  }
  outcome.grad_norm = gradient_norm(parameters);
  if (return_gradients) {
    for (const auto& [name, parameter] : parameters) {
      if (parameter.grad().defined()) outcome.gradients[name] = parameter.grad().detach().to(torch::kCPU).clone();
    }
  }
  outcome.learning_rate = options.learning_rate * learning_rate_multiplier(schedule, completed_steps_);
  optimizer.step(outcome.learning_rate, clipping_scale(options.max_grad_norm, outcome.grad_norm));
  optimizer.zero_grad();
  ++completed_steps_;
  return outcome;
}

StepOutcome Trainer::training_step(const ModelInputs& batch, bool return_gradients) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  const ScheduleConfig schedule = schedule_for(options_, options_.max_steps.value_or(0));
  VT_CHECK(batch.pixel_values.defined() && batch.pixel_values.dim() >= 1 && batch.pixel_values.size(0) > 0,
           "trainingStep: the batch is empty");
  return optimizer_step({batch}, return_gradients, options_, schedule);
}

EvaluationForward Trainer::evaluation_forward(const TrainingOptions& options) {
  return [this, mixed_precision = options.mixed_precision](const ModelInputs& raw) {
    std::lock_guard<std::mutex> lock(model_->mutex());
    apply_compute_threads();
    c10::InferenceMode inference;
    model_->module()->eval();
    ModelInputs inputs = move_inputs(raw, model_->device(), model_->dtype(), model_->memory_format());
    AutocastScope autocast(mixed_precision, model_->device());
    return model_->module()->forward(inputs);
  };
}

DataOptions Trainer::data_options(const TrainingOptions& options) const {
  DataOptions data;
  data.batch_size = static_cast<size_t>(options.batch_size);
  data.seed = options.seed;
  data.num_workers = options.num_workers;
  return data;
}

Metrics Trainer::evaluate(const DatasetSpec& spec, int64_t batch_size) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  TrainingOptions options = options_;
  options.batch_size = batch_size;
  auto data = open_training_data(model_->task(), spec, data_options(options), model_->shared_processor(), model_->labels());
  VT_CHECK(data->class_names().size() == model_->labels().size(), dataset_hint(model_->labels().size(), data->class_names().size()));
  return data->evaluate(evaluation_forward(options), /*whole=*/!data->has_validation());
}

nlohmann::json Trainer::train(const TrainingOptions& options, const EventSink& emit) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  validate_options(options);
  VT_CHECK(options.dataset.has_value(), "train: no dataset (give training.dataset, or data: in the YAML file)");
  VT_CHECK(!model_->labels().empty(), model_->architecture(), " has no task head; load it with numClasses");
  const auto& metric = options.early_stopping_metric;
  static const std::map<Task, std::set<std::string>> task_metrics = {
      {Task::Classification, {"eval_loss", "eval_accuracy", "eval_top5_accuracy"}},
      {Task::ObjectDetection, {"eval_loss", "eval_map", "eval_map_50", "eval_map_75"}},
      {Task::Segmentation, {"eval_loss", "eval_mean_iou", "eval_overall_accuracy"}}};
  const auto& reported = task_metrics.at(model_->task());
  if (!reported.count(metric)) {
    std::string names;
    for (const auto& name : reported) names += (names.empty() ? "" : ", ") + name;
    fail("earlyStoppingMetric \"", metric, "\" is not reported for ", task_name(model_->task()), " (use one of ", names, ")");
  }
  stop_requested_ = false;

  auto data = open_training_data(model_->task(), *options.dataset, data_options(options), model_->shared_processor(), model_->labels());
  VT_CHECK(data->class_names().size() == model_->labels().size(), dataset_hint(model_->labels().size(), data->class_names().size()));
  if (data->class_names() != model_->labels()) model_->set_labels(data->class_names());
  const int64_t batches_per_epoch = static_cast<int64_t>(data->batches_per_epoch());
  const int64_t accumulation = options.gradient_accumulation_steps;
  const int64_t steps_per_epoch = (batches_per_epoch + accumulation - 1) / accumulation;
  const int64_t total_steps = options.max_steps.value_or(options.epochs * steps_per_epoch);
  const ScheduleConfig schedule = schedule_for(options, total_steps);

  // The loop's position and bookkeeping, all of it saved in checkpoints.
  int64_t global_step = 0, epoch = 0, batch_in_epoch = 0, evals_without_improvement = 0;
  double train_loss_sum = 0.0;
  std::optional<double> best_metric;
  Metrics last_metrics;

  optimizer_.reset();
  Optimizer& optimizer = optimizer_for(options);
  if (!options.resume_from.empty()) {
    auto found = find_checkpoint(options.resume_from);
    VT_CHECK(found.has_value(), "resumeFrom: no checkpoint in ", options.resume_from);
    CheckpointContents checkpoint = load_checkpoint(*found);
    const auto& state = checkpoint.trainer_state;
    try {
      // The data order and the step boundaries depend on these: a resumed run must share them.
      const std::pair<const char*, nlohmann::json> must_match[] = {
          {"seed", options.seed}, {"batch_size", options.batch_size}, {"gradient_accumulation_steps", accumulation}};
      for (const auto& [key, now] : must_match) {
        const auto& saved = state.at("options").at(key);
        VT_CHECK(saved == now, "resumeFrom: ", *found, " was trained with ", key, " ", saved.dump(), ", this run has ",
                 now.dump(), "; resuming needs the same");
      }
      global_step = state.at("global_step").get<int64_t>();
      epoch = state.at("epoch").get<int64_t>();
      batch_in_epoch = state.at("batch_in_epoch").get<int64_t>();
      evals_without_improvement = state.at("evals_without_improvement").get<int64_t>();
      train_loss_sum = state.at("train_loss_sum").get<double>();
      if (!state.at("best_metric").is_null()) best_metric = state.at("best_metric").get<double>();
    } catch (const nlohmann::json::exception& error) {
      fail(*found, "/trainer_state.json: ", error.what());
    }
    model_->load_state(checkpoint.model, *found + "/model.safetensors");
    optimizer.load_state(checkpoint.optimizer, checkpoint.optimizer_steps);
    auto generator = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(checkpoint.rng_state);
    }
  } else {
    torch::manual_seed(options.seed);
  }
  completed_steps_ = global_step;

  auto trainer_state = [&] {
    return nlohmann::json{
        {"global_step", global_step},
        {"epoch", epoch},
        {"batch_in_epoch", batch_in_epoch},
        {"batches_per_epoch", batches_per_epoch},
        {"total_steps", total_steps},
        {"evals_without_improvement", evals_without_improvement},
        {"train_loss_sum", train_loss_sum},
        {"best_metric", best_metric ? nlohmann::json(*best_metric) : nlohmann::json(nullptr)},
        {"best_metric_name", options.early_stopping_metric},
        {"options",
         {{"seed", options.seed},
          {"batch_size", options.batch_size},
          {"gradient_accumulation_steps", accumulation},
          {"learning_rate", options.learning_rate},
          {"lr_scheduler", options.lr_scheduler},
          {"warmup_steps", schedule.warmup_steps}}}};
  };
  std::string last_checkpoint;
  int64_t last_saved_step = -1;
  auto save = [&] {
    last_checkpoint = (fs::path(options.output_dir) / ("checkpoint-" + std::to_string(global_step))).string();
    save_checkpoint(last_checkpoint, *model_, optimizer, trainer_state());
    last_saved_step = global_step;
    emit({{"kind", "save"}, {"step", global_step}, {"path", last_checkpoint}});
  };
  bool stopped_early = false;
  const EvaluationForward evaluate_forward = evaluation_forward(options);
  auto run_evaluation = [&] {
    if (!data->has_validation()) return;
    last_metrics = data->evaluate(evaluate_forward);
    const double fractional_epoch = static_cast<double>(epoch) + static_cast<double>(batch_in_epoch) / static_cast<double>(batches_per_epoch);
    emit({{"kind", "eval"}, {"step", global_step}, {"epoch", fractional_epoch}, {"metrics", last_metrics}});
    const double value = last_metrics.at(options.early_stopping_metric);
    if (!best_metric || metric_improves(options.early_stopping_metric, value, *best_metric)) {
      best_metric = value;
      evals_without_improvement = 0;
    } else {
      ++evals_without_improvement;
    }
    if (options.early_stopping_patience && evals_without_improvement >= *options.early_stopping_patience) stopped_early = true;
  };

  const auto started = std::chrono::steady_clock::now();
  const int64_t first_step = global_step;
  int64_t images = 0;
  bool aborted = false;
  while (global_step < total_steps && !stopped_early && !aborted) {
    data->start_epoch(epoch, static_cast<size_t>(batch_in_epoch));
    std::vector<ModelInputs> micro_batches;
    while (global_step < total_steps && !stopped_early && !aborted) {
      auto batch = data->next();
      if (batch) {
        images += batch->pixel_values.size(0);
        micro_batches.push_back(std::move(*batch));
        ++batch_in_epoch;
      }
      const bool epoch_done = !batch || batch_in_epoch == batches_per_epoch;
      if (static_cast<int64_t>(micro_batches.size()) < accumulation && !(epoch_done && !micro_batches.empty())) {
        if (!batch) break;
        continue;
      }
      StepOutcome outcome = optimizer_step(micro_batches, false, options, schedule);
      micro_batches.clear();
      ++global_step;
      train_loss_sum += outcome.loss;
      if (epoch_done) {
        ++epoch;
        batch_in_epoch = 0;
      }
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const double steps_done = static_cast<double>(global_step - first_step);
      const double fractional_epoch = static_cast<double>(epoch) + static_cast<double>(batch_in_epoch) / static_cast<double>(batches_per_epoch);
      emit({{"kind", "step"},
            {"step", global_step},
            {"totalSteps", total_steps},
            {"epoch", fractional_epoch},
            {"totalEpochs", static_cast<double>(total_steps) / static_cast<double>(steps_per_epoch)},
            {"loss", outcome.loss},
            {"learningRate", outcome.learning_rate},
            {"gradNorm", outcome.grad_norm},
            {"imagesPerSecond", static_cast<double>(images) / std::max(elapsed, 1e-9)},
            {"etaSeconds", elapsed / steps_done * static_cast<double>(total_steps - global_step)},
            {"elapsedSeconds", elapsed}});
      const bool evaluate_now = options.eval_every > 0 ? global_step % options.eval_every == 0 : epoch_done;
      if (evaluate_now) run_evaluation();
      if (options.save_every > 0 && global_step % options.save_every == 0) save();
      if (stop_requested_) aborted = true;
      if (epoch_done) break;
    }
  }
  // A run that ends between evaluations (maxSteps, an abort) still reports where it stands.
  if (last_metrics.empty() && !aborted) run_evaluation();
  if (last_saved_step != global_step) save();
  if (!aborted) {
    model_->save(options.output_dir);
    emit({{"kind", "save"}, {"step", global_step}, {"path", fs::absolute(options.output_dir).string()}});
  }
  const double runtime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  nlohmann::json result{{"globalStep", global_step},
                        {"epoch", static_cast<double>(epoch) + static_cast<double>(batch_in_epoch) / static_cast<double>(batches_per_epoch)},
                        {"trainLoss", global_step > 0 ? train_loss_sum / static_cast<double>(global_step) : 0.0},
                        {"trainRuntime", runtime},
                        {"trainSamplesPerSecond", static_cast<double>(images) / std::max(runtime, 1e-9)},
                        {"metrics", last_metrics},
                        {"stoppedEarly", stopped_early},
                        {"aborted", aborted},
                        {"outputDir", fs::absolute(options.output_dir).string()},
                        {"checkpoint", fs::absolute(last_checkpoint).string()}};
  if (best_metric) result["bestMetric"] = *best_metric;
  return result;
}

}  // namespace vt
