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
import type { ModelConfig } from '../schemas/model-config.js';
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

export type BaseTrainerOptions = { model: VisionModel; modelConfig: ModelConfig; learningRate?: number } & Partial<TrainingConfigInput>;

export class BaseTrainer {
  readonly model: VisionModel;
  readonly modelConfig: ModelConfig;
  /** The training configuration given at construction, defaults applied (used by trainingStep). */
  readonly config: TrainingConfig;
  #native: NativeTrainer;

  constructor(options: BaseTrainerOptions) {
    const { model, modelConfig, ...training } = options;
    if (!model || typeof model.handle !== 'function')
      throw invalidArgument(TypeError, 'BaseTrainer: options.model must be a VisionModel from loadModel()');
    this.model = model;
    this.modelConfig = modelConfig;
    this.config = parseTrainingConfig(training);
    this.#native = new (native().NativeTrainer)(model.handle(), this.nativeOptions(this.config));
  }

  /** One optimizer step on one batch in training mode: forward, loss, backward, clip, step, schedule. */
  async trainingStep(batch: TrainingBatch, options: { returnGradients?: boolean } = {}): Promise<TrainingStepResult> {
    if (batch === null || typeof batch !== 'object' || !batch.pixelValues || batch.labels === undefined) {
      throw invalidArgument(TypeError, 'trainingStep: expected { pixelValues, pixelMask?, labels }');
    }
    this.model.handle(); // a disposed model refuses, though the native trainer still holds it
    return (await this.#native.trainingStep(batch as NativeForwardInputs, options.returnGradients === true)) as TrainingStepResult;
  }

  /** Trains on `config.dataset`; resolves with the run's summary (also when stopped by `signal`). */
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
    const parsed = parseTrainingConfig(config);
    if (!parsed.dataset) throw invalidArgument(TypeError, 'train: the configuration has no dataset (training.dataset, or data: in the YAML file)');
    if (options.signal?.aborted) {
      throw withCode(new Error('train: the signal was aborted before the run started', { cause: options.signal.reason }), ErrorCode.ABORTED);
    }
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
    const onEvent = (event: TrainerEvent): void => {
      history.push(event);
      log.append(event);
      // Charts are drawn off the callback, one at a time, so events never wait for a redraw.
      if (event.kind === 'eval') pending = pending.then(() => writeTrainingChart(chartPath, history)).catch(chartFailed);
      options.onProgress?.(event);
    };
    const stop = (): void => this.#native.stop();
    options.signal?.addEventListener('abort', stop, { once: true });
    try {
      const result = await this.#native.train(
        { ...this.nativeOptions(parsed), ...(distributed && { distributed }) },
        onEvent as (event: unknown) => void,
      );
      this.model.refresh(); // training names the classes after the dataset's
      await pending;
      if (history.some((e) => e.kind === 'step')) await writeTrainingChart(chartPath, history).catch(chartFailed);
      return result as TrainResult;
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
