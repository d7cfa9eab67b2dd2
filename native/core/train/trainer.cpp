#include "train/trainer.h"

#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "common/error.h"
#include "common/replica_group.h"
#include "losses/classification.h"
#include "runtime/threads.h"
#include "train/checkpoint.h"
#include "train/training_data.h"

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
      VT_CHECK(mixed_precision == "bf16", "mixed_precision \"", mixed_precision, "\" needs a CUDA device; on CPU use bf16");
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
  VT_CHECK(options.learning_rate > 0, "learning_rate must be positive");
  VT_CHECK(options.batch_size > 0, "batch_size must be a positive integer");
  VT_CHECK(options.epochs > 0, "epochs must be a positive integer");
  VT_CHECK(options.gradient_accumulation_steps > 0, "gradient_accumulation_steps must be a positive integer");
  VT_CHECK(options.max_grad_norm >= 0, "max_grad_norm must not be negative");
  VT_CHECK(options.label_smoothing >= 0 && options.label_smoothing < 1, "label_smoothing must be in [0, 1)");
  VT_CHECK(options.mixed_precision == "no" || options.mixed_precision == "bf16" || options.mixed_precision == "fp16",
           "mixed_precision must be no, bf16 or fp16");
  VT_CHECK(!options.max_steps || *options.max_steps > 0, "max_steps must be a positive integer");
  if (options.distributed) distributed::validate(options.distributed->group);
}

// Lends the thread out between two steps of a run. What runs there never touches this run's
// model, but it may draw from the global generator (another model's dropout, a head's random
// initialisation): its state is put back, so the run's random stream, and so its weights, are
// the same as without the interruption.
void run_between_steps(const std::function<void()>& between_steps) {
  auto generator = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    state = generator.get_state();
  }
  between_steps();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

// The per-metric improvement rule of early stopping and best-checkpoint tracking.
bool lower_is_better(const std::string& metric) { return metric.find("loss") != std::string::npos; }

std::string dataset_hint(size_t model_labels, size_t classes) {
  return str_cat("the model has ", model_labels, " labels but the dataset has ", classes,
                 " classes: load the model with num_classes: ", classes,
                 " (and ignore_mismatched_sizes: true to replace a pretrained head)");
}

}  // namespace

bool metric_improves(const std::string& metric, double candidate, double best) {
  return lower_is_better(metric) ? candidate < best : candidate > best;
}

Trainer::Trainer(std::shared_ptr<PretrainedModel> model, TrainingOptions options) : model_(std::move(model)), options_(std::move(options)) {
  validate_options(options_);
  // As transformers' Trainer calls set_seed when created: the random draws of the steps that
  // follow (dropout, Mask2Former's sampled points) come from the seeded generator.
  torch::manual_seed(options_.seed);
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

// ---------------------------------------------------------------------------------------------
// One optimizer step, in phases: forward and loss, backward (per micro-batch), the gradient
// synchronisation point, loss unscaling, clipping, the optimizer step and the schedule.

void Trainer::prepare_module(const TrainingOptions& options) {
  VisionModule& module = *model_->module();
  module.train();
  if (options.freeze_batch_norm) {
    for (const auto& child : module.modules()) {
      if (dynamic_cast<torch::nn::BatchNorm2dImpl*>(child.get())) child->eval();
    }
  }
  module.set_gradient_checkpointing(options.gradient_checkpointing);
}

Trainer::MicroStep Trainer::forward_and_loss(const ModelInputs& micro_batch, const TrainingOptions& options, const HeadConfig& head) {
  VT_CHECK(micro_batch.has_labels(), "training_step: the batch has no labels");
  VisionModule& module = *model_->module();
  ModelInputs inputs = [&] {
    RECORD_USER_SCOPE("data");
    return move_inputs(micro_batch, model_->device(), model_->dtype(), model_->memory_format());
  }();
  MicroStep step;
  {
    RECORD_USER_SCOPE("forward");
    // Data-parallel: losses normalised over the global batch, and synchronised BatchNorm, reach
    // the group through this scope.
    ReplicaScope replicas(parallel_ ? &parallel_->group() : nullptr, parallel_ && parallel_->options().sync_batch_norm);
    AutocastScope autocast(options.mixed_precision, model_->device());
    if (options.label_smoothing > 0 && inputs.labels.defined() && model_->task()->labels == LabelsFormat::ClassIndices) {
      // transformers' Trainer smooths the labels itself, from the logits.
      ModelInputs unlabeled = inputs;
      unlabeled.labels = torch::Tensor();
      step.outputs = module.forward(unlabeled);
      step.loss = image_classification_loss(find_output(step.outputs, "logits"), inputs.labels, head.problem_type, options.label_smoothing);
    } else {
      step.outputs = module.forward(inputs);
      step.loss = find_output(step.outputs, "loss");
    }
  }
  VT_CHECK(step.loss.defined(), model_->architecture(), " returned no loss for these labels");
  step.loss = step.loss.to(torch::kFloat32);
  return step;
}

void Trainer::backward(const MicroStep& step, double share, const TrainingOptions& options) {
  // fp16 gradients are computed on a scaled loss, so that small values survive half precision.
  const bool loss_scaling = options.mixed_precision == "fp16";
  RECORD_USER_SCOPE("backward");
  (step.loss * (share * (loss_scaling ? loss_scale_ : 1.0))).backward();
}

void Trainer::synchronize_gradients(const NamedParameters&) {
  // One process holds every gradient already. Data-parallel training has averaged them over the
  // ranks by now: DDP's reducer all-reduces buckets while the last micro-batch's backward runs
  // and waits for the last of them as that backward ends.
}

double Trainer::scheduled_learning_rate(const TrainingOptions& options, const ScheduleConfig& schedule) const {
  return options.learning_rate * learning_rate_multiplier(schedule, completed_steps_);
}

StepOutcome Trainer::optimizer_step(const std::vector<ModelInputs>& micro_batches, bool return_gradients, const TrainingOptions& options,
                                    const ScheduleConfig& schedule) {
  Optimizer& optimizer = optimizer_for(options);
  std::lock_guard<std::mutex> lock(model_->mutex());
  apply_compute_threads();
  prepare_module(options);
  const HeadConfig head = HeadConfig::from_json(model_->config(), "config.json");
  StepOutcome outcome;
  const double share = 1.0 / static_cast<double>(micro_batches.size());
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    // Data-parallel: gradients are averaged over the ranks in the last micro-batch's backward
    // only (DDP's no_sync before it).
    const bool synchronize = i + 1 == micro_batches.size();
    if (parallel_) parallel_->before_forward(synchronize);
    MicroStep step = forward_and_loss(micro_batches[i], options, head);
    if (parallel_) {
      parallel_->after_forward(synchronize);
      parallel_->backward([&] { backward(step, share, options); });
    } else {
      backward(step, share, options);
    }
    outcome.loss += step.loss.item<double>() * share;
    for (const auto& [name, value] : step.outputs) {
      if (name.rfind("loss_dict.", 0) == 0) outcome.loss_dict[name.substr(10)] += value.item<double>() * share;
    }
  }
  const NamedParameters& parameters = optimizer.parameters();
  synchronize_gradients(parameters);
  if (options.mixed_precision == "fp16" && !unscale_gradients(parameters)) {
    // torch.cuda.amp.GradScaler: an overflowing step is skipped and the scale halves.
    optimizer.zero_grad();
    outcome.grad_norm = std::numeric_limits<double>::infinity();
    ++completed_steps_;
    return outcome;
  }
  // Clipping: the norm of the gradients before it, and the scale AdamW applies to them.
  {
    RECORD_USER_SCOPE("clip");
    outcome.grad_norm = gradient_norm(parameters);
  }
  if (return_gradients) {
    for (const auto& [name, parameter] : parameters) {
      if (parameter.grad().defined()) outcome.gradients[name] = parameter.grad().detach().to(torch::kCPU).clone();
    }
  }
  outcome.learning_rate = scheduled_learning_rate(options, schedule);
  // A diverging step must not poison the weights: one whose gradients (or, in one process, whose
  // loss) are not finite is skipped and reported. Data-parallel ranks decide on the averaged
  // gradients, so they all skip alike.
  if (!std::isfinite(outcome.grad_norm) || (!parallel_ && !std::isfinite(outcome.loss))) {
    optimizer.zero_grad();
    outcome.skipped = true;
    ++completed_steps_;
    return outcome;
  }
  {
    RECORD_USER_SCOPE("optimizer");
    optimizer.step(outcome.learning_rate, clipping_scale(options.max_grad_norm, outcome.grad_norm));
    optimizer.zero_grad();
  }
  ++completed_steps_;
  return outcome;
}

StepOutcome Trainer::training_step(const ModelInputs& batch, bool return_gradients) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  const ScheduleConfig schedule = schedule_for(options_, options_.max_steps.value_or(0));
  VT_CHECK(batch.pixel_values.defined() && batch.pixel_values.dim() >= 1 && batch.pixel_values.size(0) > 0,
           "training_step: the batch is empty");
  model_->check_label_kind(batch);
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
  data.drop_last = options.drop_last;
  data.mask_targets = model_->module()->takes_mask_targets();
  return data;
}

Metrics Trainer::evaluate(const DatasetSpec& spec, int64_t batch_size) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  TrainingOptions options = options_;
  options.batch_size = batch_size;
  auto data = open_training_data(model_->task(), spec, data_options(options), model_->shared_processor(), model_->labels());
  if (data->class_names().size() != model_->labels().size()) {
    fail_with(ErrorCode::Dataset, dataset_hint(model_->labels().size(), data->class_names().size()));
  }
  return data->evaluate(evaluation_forward(options), /*whole=*/!data->has_validation());
}

// ---------------------------------------------------------------------------------------------
// The loop over a dataset, in phases: the run's start (data, schedule, resume), the next batch,
// the step, then the step's events, evaluation and checkpoint, and the run's end.

// The loop's position and bookkeeping (saved in checkpoints), and what its phases share.
struct Trainer::Run {
  Run(const TrainingOptions& options, const EventSink& sink) : options(options), sink(sink) {}
  const TrainingOptions& options;
  const EventSink& sink;
  // Data-parallel: this rank's group; rank 0 alone reports events and writes files.
  std::unique_ptr<distributed::DataParallel> parallel;
  std::unique_ptr<TrainingData> data;
  ScheduleConfig schedule;
  int64_t batches_per_epoch = 0, steps_per_epoch = 0, total_steps = 0;

  int64_t global_step = 0, epoch = 0, batch_in_epoch = 0, evals_without_improvement = 0;
  double train_loss_sum = 0.0;
  std::optional<double> best_metric;
  Metrics last_metrics;

  std::string last_checkpoint;
  int64_t last_saved_step = -1;
  bool stopped_early = false, aborted = false;
  bool stop_everywhere = false;  // data-parallel: a rank was asked to stop (all stop at this step)
  std::chrono::steady_clock::time_point started;
  int64_t first_step = 0, images = 0;

  bool running() const { return global_step < total_steps && !stopped_early && !aborted; }
  bool writer() const { return !parallel || parallel->is_writer(); }
  int world_size() const { return parallel ? parallel->group().size() : 1; }
  void emit(const nlohmann::json& event) const {
    if (writer()) sink(event);
  }
  double fractional_epoch() const {
    return static_cast<double>(epoch) + static_cast<double>(batch_in_epoch) / static_cast<double>(batches_per_epoch);
  }
  double elapsed_seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); }

  nlohmann::json trainer_state() const {
    return nlohmann::json{{"global_step", global_step},
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
                            {"world_size", world_size()},
                            {"gradient_accumulation_steps", options.gradient_accumulation_steps},
                            {"learning_rate", options.learning_rate},
                            {"lr_scheduler", options.lr_scheduler},
                            {"warmup_steps", schedule.warmup_steps}}}};
  }
};

void Trainer::start_run(Run& run) {
  const TrainingOptions& options = run.options;
  validate_options(options);
  VT_CHECK(options.dataset.has_value(), "train: no dataset (give training.dataset, or data: in the YAML file)");
  VT_CHECK(!model_->labels().empty(), model_->architecture(), " has no task head; load it with num_classes");
  const auto& metric = options.early_stopping_metric;
  const std::vector<std::string> reported = reported_metrics(model_->task());
  if (std::find(reported.begin(), reported.end(), metric) == reported.end()) {
    std::set<std::string> sorted(reported.begin(), reported.end());
    std::string names;
    for (const auto& name : sorted) names += (names.empty() ? "" : ", ") + name;
    fail("early_stopping_metric \"", metric, "\" is not reported for ", model_->task()->name, " (use one of ", names, ")");
  }
  stop_requested_ = false;

  if (options.distributed) {
    // init_process_group: every rank waits here for the others (within the timeout).
    run.parallel = std::make_unique<distributed::DataParallel>(distributed::ProcessGroup::create(options.distributed->group),
                                                               options.distributed->parallel);
    parallel_ = run.parallel.get();
  }
  DataOptions data = data_options(options);
  if (run.parallel) data.replicas = &run.parallel->group();
  run.data = open_training_data(model_->task(), *options.dataset, data, model_->shared_processor(), model_->labels());
  if (run.data->class_names().size() != model_->labels().size()) {
    fail_with(ErrorCode::Dataset, dataset_hint(model_->labels().size(), run.data->class_names().size()));
  }
  if (run.data->class_names() != model_->labels()) model_->set_labels(run.data->class_names());
  run.batches_per_epoch = static_cast<int64_t>(run.data->batches_per_epoch());
  const int64_t accumulation = options.gradient_accumulation_steps;
  run.steps_per_epoch = (run.batches_per_epoch + accumulation - 1) / accumulation;
  run.total_steps = options.max_steps.value_or(options.epochs * run.steps_per_epoch);
  run.schedule = schedule_for(options, run.total_steps);

  optimizer_.reset();
  Optimizer& optimizer = optimizer_for(options);
  if (!options.resume_from.empty()) {
    resume(run, optimizer);
  } else {
    // Every rank alike, as transformers' Trainer seeds each process.
    torch::manual_seed(options.seed);
  }
  if (run.parallel) run.parallel->start(*model_->module(), optimizer.parameters(), job_description(run));
  completed_steps_ = run.global_step;
  run.started = std::chrono::steady_clock::now();
  run.first_step = run.global_step;
}

void Trainer::resume(Run& run, Optimizer& optimizer) {
  const TrainingOptions& options = run.options;
  auto found = find_checkpoint(options.resume_from);
  VT_CHECK(found.has_value(), "resume_from: no checkpoint in ", options.resume_from);
  CheckpointContents checkpoint = load_checkpoint(*found);
  const auto& state = checkpoint.trainer_state;
  const int64_t world = run.world_size();
  int64_t saved_world = 1;
  try {
    // The data order and the step boundaries depend on these: a resumed run must share them. The
    // global batch (per rank x ranks) must match; the number of ranks may differ.
    const std::pair<const char*, nlohmann::json> must_match[] = {{"seed", options.seed},
                                                                 {"gradient_accumulation_steps", options.gradient_accumulation_steps}};
    for (const auto& [key, now] : must_match) {
      const auto& saved = state.at("options").at(key);
      VT_CHECK(saved == now, "resume_from: ", *found, " was trained with ", key, " ", saved.dump(), ", this run has ", now.dump(),
               "; resuming needs the same");
    }
    saved_world = state.at("options").value("world_size", int64_t{1});
    const int64_t saved_batch = state.at("options").at("batch_size").get<int64_t>();
    VT_CHECK(saved_batch * saved_world == options.batch_size * world, "resume_from: ", *found, " was trained with a global batch of ",
             saved_batch * saved_world, " (", saved_batch, " per rank x ", saved_world, " ranks), this run has ",
             options.batch_size * world, " (", options.batch_size, " x ", world, "); resuming needs the same global batch");
    run.global_step = state.at("global_step").get<int64_t>();
    run.epoch = state.at("epoch").get<int64_t>();
    // The position in the epoch: the same samples consumed, whatever the number of ranks.
    run.batch_in_epoch = state.at("batch_in_epoch").get<int64_t>() * saved_batch * saved_world / (options.batch_size * world);
    run.evals_without_improvement = state.at("evals_without_improvement").get<int64_t>();
    run.train_loss_sum = state.at("train_loss_sum").get<double>();
    if (!state.at("best_metric").is_null()) run.best_metric = state.at("best_metric").get<double>();
  } catch (const nlohmann::json::exception& error) {
    fail(*found, "/trainer_state.json: ", error.what());
  }
  model_->load_state(checkpoint.model, *found + "/model.safetensors");
  optimizer.load_state(checkpoint.optimizer, checkpoint.optimizer_steps);
  // Each rank its own generator where the checkpoint has it (the same number of ranks), else rank 0's.
  const size_t rank = run.parallel ? static_cast<size_t>(run.parallel->group().rank()) : 0;
  const bool same_ranks = saved_world == world && rank < checkpoint.rank_rng_states.size();
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(same_ranks ? checkpoint.rank_rng_states[rank] : checkpoint.rng_state);
}

std::optional<bool> Trainer::next_batches(Run& run, std::vector<ModelInputs>& micro_batches) {
  while (true) {
    auto batch = run.data->next();
    if (batch) {
      run.images += batch->pixel_values.size(0);
      micro_batches.push_back(std::move(*batch));
      ++run.batch_in_epoch;
    }
    const bool epoch_done = !batch || run.batch_in_epoch == run.batches_per_epoch;
    if (static_cast<int64_t>(micro_batches.size()) >= run.options.gradient_accumulation_steps || (epoch_done && !micro_batches.empty())) {
      return epoch_done;
    }
    if (!batch) return std::nullopt;
  }
}

void Trainer::emit_step(Run& run, const StepOutcome& outcome) {
  const double elapsed = run.elapsed_seconds();
  const double steps_done = static_cast<double>(run.global_step - run.first_step);
  run.emit({{"kind", "step"},
            {"step", run.global_step},
            {"total_steps", run.total_steps},
            {"epoch", run.fractional_epoch()},
            {"total_epochs", static_cast<double>(run.total_steps) / static_cast<double>(run.steps_per_epoch)},
            {"loss", outcome.loss},
            {"learning_rate", outcome.learning_rate},
            {"grad_norm", outcome.grad_norm},
            {"images_per_second", static_cast<double>(run.images * run.world_size()) / std::max(elapsed, 1e-9)},
            {"eta_seconds", elapsed / steps_done * static_cast<double>(run.total_steps - run.global_step)},
            {"elapsed_seconds", elapsed},
            {"skipped", outcome.skipped}});
}

void Trainer::reduce_step(Run& run, StepOutcome& outcome) {
  if (!run.parallel) return;
  // One all-reduce: the loss, its parts (the same keys on every rank), and the stop requests.
  std::vector<double> values{outcome.loss};
  for (const auto& [name, value] : outcome.loss_dict) values.push_back(value);
  values.push_back(stop_requested_ ? 1.0 : 0.0);
  run.parallel->group().sum(values);
  const double ranks = static_cast<double>(run.world_size());
  outcome.loss = values[0] / ranks;
  size_t i = 1;
  for (auto& [name, value] : outcome.loss_dict) value = values[i++] / ranks;
  run.stop_everywhere = values.back() > 0;
}

nlohmann::json Trainer::job_description(const Run& run) const {
  const TrainingOptions& options = run.options;
  return {{"model", {{"architecture", model_->architecture()}, {"config", model_->config()}, {"labels", model_->labels()}}},
          {"training",
           {{"seed", options.seed},
            {"batch_size", options.batch_size},
            {"gradient_accumulation_steps", options.gradient_accumulation_steps},
            {"learning_rate", options.learning_rate},
            {"lr_scheduler", options.lr_scheduler},
            {"warmup_steps", run.schedule.warmup_steps},
            {"total_steps", run.total_steps},
            {"optimizer", options.optimizer.name},
            {"weight_decay", options.optimizer.weight_decay},
            {"max_grad_norm", options.max_grad_norm},
            {"mixed_precision", options.mixed_precision},
            {"label_smoothing", options.label_smoothing},
            {"eval_every", options.eval_every},
            {"save_every", options.save_every},
            {"decay_bias_and_norm", options.decay_bias_and_norm},
            {"freeze_batch_norm", options.freeze_batch_norm},
            {"gradient_checkpointing", options.gradient_checkpointing},
            {"drop_last", options.drop_last},
            {"sync_batch_norm", options.distributed->parallel.sync_batch_norm},
            {"resumed_at_step", run.global_step}}},
          {"data", {{"batches_per_epoch", run.batches_per_epoch}, {"classes", run.data->class_names()}}}};
}

void Trainer::run_evaluation(Run& run, const EvaluationForward& forward) {
  if (!run.data->has_validation()) return;
  // Every rank evaluates rank 0's model: its buffers (BatchNorm statistics) may have drifted.
  if (run.parallel) run.parallel->broadcast_buffers();
  const std::string& metric = run.options.early_stopping_metric;
  run.last_metrics = run.data->evaluate(forward);
  run.emit({{"kind", "eval"}, {"step", run.global_step}, {"epoch", run.fractional_epoch()}, {"metrics", run.last_metrics}});
  const double value = run.last_metrics.at(metric);
  if (!run.best_metric || metric_improves(metric, value, *run.best_metric)) {
    run.best_metric = value;
    run.evals_without_improvement = 0;
  } else {
    ++run.evals_without_improvement;
  }
  const auto& patience = run.options.early_stopping_patience;
  if (patience && run.evals_without_improvement >= *patience) run.stopped_early = true;
}

void Trainer::save_run_checkpoint(Run& run) {
  run.last_checkpoint = (fs::path(run.options.output_dir) / ("checkpoint-" + std::to_string(run.global_step))).string();
  // Data-parallel: every rank's generator state, written by rank 0 alone.
  const std::vector<torch::Tensor> generators = run.parallel ? run.parallel->gather_generator_states() : std::vector<torch::Tensor>{};
  if (run.writer()) save_checkpoint(run.last_checkpoint, *model_, *optimizer_, run.trainer_state(), generators);
  run.last_saved_step = run.global_step;
  run.emit({{"kind", "save"}, {"step", run.global_step}, {"path", run.last_checkpoint}});
}

void Trainer::end_step(Run& run, const StepOutcome& outcome, bool epoch_done, const EvaluationForward& forward) {
  const TrainingOptions& options = run.options;
  ++run.global_step;
  run.train_loss_sum += outcome.loss;
  if (epoch_done) {
    ++run.epoch;
    run.batch_in_epoch = 0;
  }
  emit_step(run, outcome);
  const bool evaluate_now = options.eval_every > 0 ? run.global_step % options.eval_every == 0 : epoch_done;
  if (evaluate_now) run_evaluation(run, forward);
  if (options.save_every > 0 && run.global_step % options.save_every == 0) save_run_checkpoint(run);
  // Data-parallel ranks stop together, at the step where any of them was asked to.
  if (run.parallel ? run.stop_everywhere : stop_requested_.load()) run.aborted = true;
}

nlohmann::json Trainer::finish_run(Run& run, const EvaluationForward& forward) {
  const TrainingOptions& options = run.options;
  // A run that ends between evaluations (maxSteps, an abort) still reports where it stands.
  if (run.last_metrics.empty() && !run.aborted) run_evaluation(run, forward);
  if (run.last_saved_step != run.global_step) save_run_checkpoint(run);
  // Every rank ends holding the model rank 0 saves (per-rank BatchNorm statistics included).
  if (run.parallel) run.parallel->broadcast_buffers();
  if (!run.aborted && run.writer()) {
    model_->save(options.output_dir);
    run.emit({{"kind", "save"}, {"step", run.global_step}, {"path", fs::absolute(options.output_dir).string()}});
  }
  const double runtime = run.elapsed_seconds();
  nlohmann::json result{{"global_step", run.global_step},
                        {"epoch", run.fractional_epoch()},
                        {"train_loss", run.global_step > 0 ? run.train_loss_sum / static_cast<double>(run.global_step) : 0.0},
                        {"train_runtime", runtime},
                        {"train_samples_per_second", static_cast<double>(run.images * run.world_size()) / std::max(runtime, 1e-9)},
                        {"metrics", run.last_metrics},
                        {"stopped_early", run.stopped_early},
                        {"aborted", run.aborted},
                        {"output_dir", fs::absolute(options.output_dir).string()},
                        {"checkpoint", fs::absolute(run.last_checkpoint).string()}};
  if (run.best_metric) result["best_metric"] = *run.best_metric;
  if (run.parallel) {
    result["rank"] = run.parallel->group().rank();
    result["world_size"] = run.world_size();
    result["state_digest"] = distributed::DataParallel::state_digest(*model_->module());
    result["communication"] = run.parallel->communication_statistics();
  }
  return result;
}

nlohmann::json Trainer::train(const TrainingOptions& options, const EventSink& emit, const std::function<void()>& between_steps) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  Run run(options, emit);
  // The group lives as long as the run; training_step and evaluate never use it.
  struct ClearGroup {
    distributed::DataParallel*& parallel;
    ~ClearGroup() { parallel = nullptr; }
  } clear_group{parallel_};
  start_run(run);
  // Data-parallel ranks do not lend the thread: one rank serving requests would stall every
  // rank at the next all-reduce, and collectives queued as requests (the addon's process group
  // calls) would interleave with the run's at each rank's own timing.
  const bool lends = between_steps && !run.parallel;
  EvaluationForward forward = evaluation_forward(options);
  if (lends) {
    // Before each evaluation batch: its inference-mode and autocast scopes are not open yet.
    forward = [inner = std::move(forward), &between_steps](const ModelInputs& batch) {
      run_between_steps(between_steps);
      return inner(batch);
    };
  }
  while (run.running()) {
    run.data->start_epoch(run.epoch, static_cast<size_t>(run.batch_in_epoch));
    while (run.running()) {
      std::vector<ModelInputs> micro_batches;
      const std::optional<bool> epoch_done = next_batches(run, micro_batches);
      if (!epoch_done) break;  // the epoch had no batch left
      StepOutcome outcome = optimizer_step(micro_batches, false, options, run.schedule);
      reduce_step(run, outcome);
      end_step(run, outcome, *epoch_done, forward);
      // The step's autocast, grad-mode and model-lock scopes have all closed by now.
      if (lends) run_between_steps(between_steps);
      if (*epoch_done) break;
    }
  }
  return finish_run(run, forward);
}

}  // namespace vt
