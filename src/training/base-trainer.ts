/**
 * BaseTrainer: fine-tunes a VisionModel. The loop, the optimizer and the data pipeline run in
 * the native core on a worker thread; this class validates configuration, relays progress,
 * and keeps the run's record (metrics.jsonl and a chart in the output directory).
 */
import { join } from 'node:path';
import type { NativeDistributedOptions, NativeForwardInputs, NativeTrainer, NativeTrainingOptions } from '../../binding.js';
import { ErrorCode, invalidArgument, withCode } from '../errors.js';
import type { Labels, VisionModel } from '../models/vision-model.js';
import { native } from '../native.js';
import { parseOrThrow } from '../schemas/common.js';
import { type ModelConfig, type ModelConfigInput, ModelConfigSchema } from '../schemas/model-config.js';
import {
  type DatasetConfigInput,
  DatasetConfigSchema,
  parseTrainingConfig,
  type TrainingConfig,
  type TrainingConfigInput,
} from '../schemas/training-config.js';
import type { Tensor } from '../tensor.js';
import { writeTrainingChart } from './chart.js';
import type { TrainerEvent } from './events.js';
import { MetricsLog, readMetricsLog } from './metrics-log.js';

export type Metrics = Record<string, number>;

export interface TrainingBatch {
  pixelValues: Tensor;
  pixelMask?: Tensor;
  labels: Labels;
}

export interface TrainingStepResult {
  loss: number;
  lossDict?: Record<string, number>;
  /** Total L2 norm of the gradients, before clipping. */
  gradNorm: number;
  /** The learning rate this step used. */
  learningRate: number;
  /** With returnGradients: every trainable parameter's gradient from the backward pass, before clipping. */
  gradients?: Record<string, Tensor>;
  /** The loss or the gradients were not finite: the step left the weights as they were. */
  skipped: boolean;
}

export interface TrainResult {
  globalStep: number;
  epoch: number;
  /** Mean training loss over the run's steps. */
  trainLoss: number;
  trainRuntime: number;
  trainSamplesPerSecond: number;
  /** The last evaluation's metrics (eval_loss, eval_accuracy, eval_top5_accuracy, ...). */
  metrics: Metrics;
  bestMetric?: number;
  stoppedEarly: boolean;
  /** True when an AbortSignal stopped the run (a checkpoint was saved at the step it stopped). */
  aborted: boolean;
  outputDir: string;
  /** The last checkpoint written. */
  checkpoint: string;
}

/** A data-parallel rank's result: its rank, a digest of its parameters and buffers, DDP's timing of a step. */
export type RankResult = TrainResult & {
  rank?: number;
  worldSize?: number;
  stateDigest?: string;
  /** Averages over the steps, in seconds: forward, backward, all-reduce, and the all-reduce during backward. */
  communication?: Record<string, number>;
};

export interface TrainOptions {
  signal?: AbortSignal;
  onProgress?: (event: TrainerEvent) => void;
}

/** `modelConfig`: the configuration the model was loaded with, as given to loadModel or parsed (a ProjectConfig's `model`). */
export type BaseTrainerOptions = {
  model: VisionModel;
  modelConfig: ModelConfig | ModelConfigInput;
  learningRate?: number;
} & Partial<TrainingConfigInput>;

/**
 * Checks train()'s second argument: an object with only `allowed` keys, `signal` an AbortSignal
 * and every callback a function, so that a typo or a wrong value fails at once rather than when
 * the run first reports (or never).
 */
export function checkTrainOptions(options: unknown, allowed: readonly string[] = ['signal', 'onProgress']): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalidArgument(TypeError, `train: options must be an object { ${allowed.join(', ')} }, got ${options === null ? 'null' : typeof options}`);
  }
  for (const [key, value] of Object.entries(options)) {
    if (!allowed.includes(key)) throw invalidArgument(TypeError, `train: unknown option "${key}" (expected ${allowed.join(', ')})`);
    if (value === undefined) continue;
    if (key === 'signal') {
      const signal = value as Partial<AbortSignal>;
      if (typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function') {
        throw invalidArgument(TypeError, 'train: options.signal must be an AbortSignal (new AbortController().signal)');
      }
    } else if (typeof value !== 'function') {
      throw invalidArgument(TypeError, `train: options.${key} must be a function, got ${typeof value}`);
    }
  }
}

/**
 * Relays a run's events to the caller's `onProgress`. A callback that throws must neither be lost
 * nor reach the native thread that reports events (which cannot stop on it): the first error
 * stops the run (`stop`, which ends it after the current step with a checkpoint), the callback is
 * not called again, and `failure(result)` is the error train() rejects with.
 */
export class ProgressRelay {
  #onProgress: ((event: TrainerEvent) => void) | undefined;
  #stop: () => void;
  #error: { cause: unknown; step: number } | undefined;

  constructor(onProgress: ((event: TrainerEvent) => void) | undefined, stop: () => void) {
    this.#onProgress = onProgress;
    this.#stop = stop;
  }

  /** Whether the callback has thrown (the run is stopping). */
  get failed(): boolean {
    return this.#error !== undefined;
  }

  report(event: TrainerEvent): void {
    if (!this.#onProgress || this.#error) return;
    try {
      this.#onProgress(event);
    } catch (cause) {
      this.#error = { cause, step: event.step };
      this.#stop();
    }
  }

  /** The error for the caller once the run has ended, or undefined when the callback never threw. */
  failure(result: { aborted: boolean; checkpoint: string }): Error | undefined {
    if (!this.#error) return undefined;
    const { cause, step } = this.#error;
    const reason = cause instanceof Error ? cause.message : String(cause);
    const ended = result.aborted ? 'the run stopped after it' : 'the run had already ended';
    return withCode(
      new Error(`train: the onProgress callback threw at step ${step} (${reason}); ${ended}, last checkpoint ${result.checkpoint}`, { cause }),
      ErrorCode.ABORTED,
    );
  }
}

export class BaseTrainer {
  readonly model: VisionModel;
  readonly modelConfig: ModelConfig;
  /** The training configuration given at construction, defaults applied (used by trainingStep). */
  readonly config: TrainingConfig;
  #native: NativeTrainer;
  /** A train() call is running: the trainer's optimizer and schedule belong to it until it ends. */
  #training = false;

  constructor(options: BaseTrainerOptions) {
    const { model, modelConfig, ...training } = options;
    if (!model || typeof model.handle !== 'function')
      throw invalidArgument(TypeError, 'BaseTrainer: options.model must be a VisionModel from loadModel()');
    this.model = model;
    // Defaults applied, as loadModel saw it. One that does not parse is kept as given: loadModel
    // has already checked the model's, and the trainer reads only gradientCheckpointing from it.
    const parsed = ModelConfigSchema.safeParse(modelConfig);
    this.modelConfig = parsed.success ? parsed.data : (modelConfig as ModelConfig);
    this.config = parseTrainingConfig(training);
    this.#native = new (native().NativeTrainer)(model.handle(), this.nativeOptions(this.config));
  }

  /** One optimizer step on one batch in training mode: forward, loss, backward, clip, step, schedule. */
  async trainingStep(batch: TrainingBatch, options: { returnGradients?: boolean } = {}): Promise<TrainingStepResult> {
    if (batch === null || typeof batch !== 'object' || !batch.pixelValues || batch.labels === undefined) {
      throw invalidArgument(TypeError, 'trainingStep: expected { pixelValues, pixelMask?, labels }');
    }
    this.model.handle(); // a disposed model refuses, though the native trainer still holds it
    this.#refuseWhileTraining('trainingStep');
    return (await this.#native.trainingStep(batch as NativeForwardInputs, options.returnGradients === true)) as TrainingStepResult;
  }

  #refuseWhileTraining(method: string): void {
    if (this.#training) {
      throw withCode(
        new Error(`${method}: this trainer is running train(); wait for that run to end (or stop it with its AbortSignal) first`),
        ErrorCode.INVALID_ARGUMENT,
      );
    }
  }

  /**
   * Trains on `config.dataset`; resolves with the run's summary (also when stopped by `signal`).
   * A trainer runs one train() at a time: another, or a trainingStep(), meanwhile is refused. An
   * `onProgress` that throws stops the run after that step (with its checkpoint), and train()
   * rejects with ERR_VISIONTORCH_ABORTED, the callback's error as its `cause`.
   */
  async train(config: TrainingConfig | TrainingConfigInput, options: TrainOptions = {}): Promise<TrainResult> {
    return (await this.trainRank(config, undefined, options)) as TrainResult;
  }

  /**
   * @internal train() as one rank of a data-parallel group (DistributedTrainer's workers,
   * torchrun's): the native run joins the group; rank 0 alone reports events and keeps the
   * record (metrics.jsonl, the chart).
   */
  async trainRank(
    config: TrainingConfig | TrainingConfigInput,
    distributed: NativeDistributedOptions | undefined,
    options: TrainOptions = {},
  ): Promise<RankResult> {
    this.model.handle(); // a disposed model refuses
    checkTrainOptions(options);
    const parsed = parseTrainingConfig(config);
    if (!parsed.dataset) throw invalidArgument(TypeError, 'train: the configuration has no dataset (training.dataset, or data: in the YAML file)');
    if (options.signal?.aborted) {
      throw withCode(new Error('train: the signal was aborted before the run started', { cause: options.signal.reason }), ErrorCode.ABORTED);
    }
    this.#refuseWhileTraining('train');
    this.#training = true;
    try {
      return await this.#run(parsed, distributed, options);
    } finally {
      this.#training = false;
    }
  }

  async #run(parsed: TrainingConfig, distributed: NativeDistributedOptions | undefined, options: TrainOptions): Promise<RankResult> {
    if (distributed && distributed.rank !== 0) {
      const stop = (): void => this.#native.stop();
      options.signal?.addEventListener('abort', stop, { once: true });
      try {
        return (await this.#native.train({ ...this.nativeOptions(parsed), distributed })) as TrainResult;
      } finally {
        options.signal?.removeEventListener('abort', stop);
      }
    }
    const log = new MetricsLog(parsed.outputDir);
    // A resumed run continues the record (and the chart) of the run it resumes.
    const history: TrainerEvent[] = parsed.resumeFrom ? await readMetricsLog(log.path).catch(() => []) : [];
    const chartPath = join(parsed.outputDir, 'training_chart.png');
    let pending: Promise<void> = Promise.resolve();
    // The chart is a view of metrics.jsonl: failing to draw it must not fail the run.
    const chartFailed = (error: unknown): void => {
      process.emitWarning(`could not write ${chartPath}: ${error instanceof Error ? error.message : String(error)}`);
    };
    const stop = (): void => this.#native.stop();
    const relay = new ProgressRelay(options.onProgress, stop);
    // A run whose record cannot be written stops, as one whose callback throws.
    let logFailure: Error | undefined;
    const onEvent = (event: TrainerEvent): void => {
      history.push(event);
      try {
        log.append(event);
      } catch (error) {
        if (!logFailure) stop();
        logFailure ??= withCode(
          new Error(`train: cannot append to ${log.path} at step ${event.step}: ${error instanceof Error ? error.message : String(error)}`, {
            cause: error,
          }),
          ErrorCode.IO,
        );
      }
      // Charts are drawn off the callback, one at a time, so events never wait for a redraw.
      if (event.kind === 'eval') pending = pending.then(() => writeTrainingChart(chartPath, history)).catch(chartFailed);
      relay.report(event);
    };
    options.signal?.addEventListener('abort', stop, { once: true });
    try {
      const result = (await this.#native.train(
        { ...this.nativeOptions(parsed), ...(distributed && { distributed }) },
        onEvent as (event: unknown) => void,
      )) as TrainResult;
      this.model.refresh(); // training names the classes after the dataset's
      await pending;
      if (history.some((e) => e.kind === 'step')) await writeTrainingChart(chartPath, history).catch(chartFailed);
      const failure = logFailure ?? relay.failure(result);
      if (failure) throw failure;
      return result;
    } finally {
      options.signal?.removeEventListener('abort', stop);
      log.close();
    }
  }

  /** Loss, accuracy and top-5 accuracy on the dataset's validation split (all of it when it has none). */
  async evaluate(dataset: DatasetConfigInput): Promise<Metrics> {
    this.model.handle(); // a disposed model refuses
    const parsed = parseOrThrow(DatasetConfigSchema, dataset, 'Invalid dataset configuration');
    return this.#native.evaluate(parsed, this.config.batchSize);
  }

  private nativeOptions(config: TrainingConfig): NativeTrainingOptions {
    return { ...config, gradientCheckpointing: config.gradientCheckpointing ?? this.modelConfig?.gradientCheckpointing ?? false };
  }
}
