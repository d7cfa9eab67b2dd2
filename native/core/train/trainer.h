// Fine-tuning a PretrainedModel: the training step (forward, loss, backward, clip, optimizer step,
// schedule), the loop over a dataset with evaluation, early stopping, checkpoints and exact
// resume, and evaluation metrics. Behind the TypeScript BaseTrainer.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "distributed/data_parallel.h"
#include "pretrained/pretrained.h"
#include "train/optimizer.h"
#include "train/scheduler.h"
#include "train/training_data.h"

namespace vt {

// Data-parallel training: this process is one rank of the group, as DistributedDataParallel.
struct DistributedOptions {
  distributed::GroupOptions group;
  distributed::DataParallelOptions parallel;
};

// A run's options under their C++ names. The addon fills every field from the TypeScript schema,
// which holds the defaults JavaScript callers get; these initial values (transformers'
// TrainingArguments') serve C++ callers only.
struct TrainingOptions {
  OptimizerConfig optimizer;
  double learning_rate = 5e-5;
  std::string lr_scheduler = "linear";
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;
  std::optional<int64_t> max_steps;  // overrides epochs, as transformers' max_steps
  int64_t epochs = 3;
  int64_t batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double max_grad_norm = 1.0;          // 0: no clipping
  std::string mixed_precision = "no";  // no | bf16 | fp16
  double label_smoothing = 0.0;
  uint64_t seed = 42;
  int64_t eval_every = 0;  // steps; 0: each epoch
  int64_t save_every = 0;  // steps; 0: only at the end
  int64_t log_every = 10;
  std::string output_dir = "runs/latest";
  std::string resume_from;  // a checkpoint directory, or an output directory holding some
  std::optional<int64_t> early_stopping_patience;
  std::string early_stopping_metric = "eval_loss";
  bool decay_bias_and_norm = false;  // true: weight decay on every parameter (plain AdamW)
  // BatchNorm layers keep their statistics and affine weights (as DETR's FrozenBatchNorm2d):
  // for fine-tuning with batches too small to estimate statistics from.
  bool freeze_batch_norm = false;
  bool gradient_checkpointing = false;
  int num_workers = 2;
  // Drop the last batch of an epoch when incomplete (data-parallel: also the samples that do
  // not fill every rank, instead of repeating some).
  bool drop_last = false;
  std::optional<DatasetSpec> dataset;
  std::optional<DistributedOptions> distributed;
};

struct StepOutcome {
  double loss = 0.0;
  std::map<std::string, double> loss_dict;
  double grad_norm = 0.0;      // before clipping
  double learning_rate = 0.0;  // the rate this step used
  TensorMap gradients;         // with return_gradients: the backward's gradients, before clipping
  bool skipped = false;        // the loss or the gradients were not finite: the weights did not move
};

// Receives {"kind": "step" | "eval" | "save", ...} events from the training thread (snake_case keys).
using EventSink = std::function<void(const nlohmann::json& event)>;

class Trainer {
 public:
  Trainer(std::shared_ptr<PretrainedModel> model, TrainingOptions options);

  // One optimizer step on one batch, with the options given at construction.
  StepOutcome training_step(const ModelInputs& batch, bool return_gradients);
  // The whole run described by `options` (its dataset); returns the run's summary.
  // `between_steps` lends the thread out (the addon runs the requests queued behind the run):
  // called after each optimizer step and before each evaluation batch, where no state of the
  // step is active. Data-parallel runs never call it (see train()).
  nlohmann::json train(const TrainingOptions& options, const EventSink& sink, const std::function<void()>& between_steps = {});
  // The task's metrics on a dataset's validation split (or on all of it when it has none):
  // loss, accuracy and top-5 accuracy; for detection loss and COCO mAP.
  Metrics evaluate(const DatasetSpec& dataset, int64_t batch_size);
  // Asks a running train() to stop after its current step (a checkpoint is saved first).
  void request_stop() { stop_requested_ = true; }
  // The model it trains: calls on it wait while train() runs.
  const PretrainedModel* model() const { return model_.get(); }

 private:
  struct Run;
  // The outputs and float32 loss of one micro-batch's forward pass.
  struct MicroStep {
    ModelOutputs outputs;
    torch::Tensor loss;
  };

  // The run's phases (train()).
  void start_run(Run& run);                     // data, schedule, optimizer; resumed or seeded
  void resume(Run& run, Optimizer& optimizer);  // position, weights, optimizer and RNG from a checkpoint
  // The micro-batches of the next optimizer step: whether they end the epoch; nullopt when the
  // epoch had no batch left.
  std::optional<bool> next_batches(Run& run, std::vector<ModelInputs>& micro_batches);
  void end_step(Run& run, const StepOutcome& outcome, bool epoch_done, const EvaluationForward& forward);
  void emit_step(Run& run, const StepOutcome& outcome);
  // Data-parallel: the step's loss as the mean over the ranks, and whether any rank was asked to stop.
  void reduce_step(Run& run, StepOutcome& outcome);
  // What every rank of a data-parallel run must agree on.
  nlohmann::json job_description(const Run& run) const;
  void run_evaluation(Run& run, const EvaluationForward& forward);  // and early stopping's bookkeeping
  void save_run_checkpoint(Run& run);
  nlohmann::json finish_run(Run& run, const EvaluationForward& forward);

  // An optimizer step's phases.
  StepOutcome optimizer_step(const std::vector<ModelInputs>& micro_batches, bool return_gradients, const TrainingOptions& options,
                             const ScheduleConfig& schedule);
  void prepare_module(const TrainingOptions& options);  // training mode, frozen BatchNorm, checkpointing
  MicroStep forward_and_loss(const ModelInputs& micro_batch, const TrainingOptions& options, const HeadConfig& head);
  void backward(const MicroStep& step, double share, const TrainingOptions& options);
  // Where the gradients of all micro-batches are complete: data-parallel training averages them
  // over the ranks here.
  void synchronize_gradients(const NamedParameters& parameters);
  double scheduled_learning_rate(const TrainingOptions& options, const ScheduleConfig& schedule) const;

  // Evaluation-mode forward passes on the model, for TrainingData::evaluate.
  EvaluationForward evaluation_forward(const TrainingOptions& options);
  DataOptions data_options(const TrainingOptions& options) const;
  Optimizer& optimizer_for(const TrainingOptions& options);
  // fp16 loss scaling: divides the gradients by the scale; false (and a smaller scale) when
  // they overflowed.
  bool unscale_gradients(const NamedParameters& parameters);

  std::shared_ptr<PretrainedModel> model_;
  TrainingOptions options_;
  std::unique_ptr<Optimizer> optimizer_;
  int64_t completed_steps_ = 0;
  double loss_scale_ = 65536.0;  // fp16 dynamic loss scale, as GradScaler's initial scale
  int64_t clean_steps_ = 0;
  std::atomic<bool> stop_requested_{false};
  // The running train()'s data-parallel group, if any (null for training_step and evaluate).
  distributed::DataParallel* parallel_ = nullptr;
  // One training_step / train / evaluate at a time: they share the optimizer and the step count.
  std::mutex run_mutex_;
};

// Which way a metric improves: losses go down, everything else up.
bool metric_improves(const std::string& metric, double candidate, double best);

}  // namespace vt
