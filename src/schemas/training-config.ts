import { z } from 'zod';
import {
  bool,
  fraction,
  nonEmptyString,
  nonNegativeInt,
  nonNegativeNumber,
  oneOf,
  parseOrThrow,
  positiveInt,
  positiveNumber,
  whenValid,
} from './common.js';
import { DatasetConfigSchema } from './dataset-config.js';

export {
  type AugmentConfig,
  AugmentSchema,
  DATASET_PATH_FIELDS,
  type DatasetConfig,
  type DatasetConfigInput,
  DatasetConfigSchema,
  type DatasetFormat,
  resolveDatasetPaths,
} from './dataset-config.js';

const beta = () => {
  const e = { error: 'expected a number in [0, 1)' };
  return z.number(e).nonnegative(e).lt(1, e);
};

// Defaults follow transformers' TrainingArguments where it has the same knob.
export const TrainingConfigSchema = z
  .strictObject({
    epochs: positiveInt().default(3),
    /** Stop after this many optimizer steps (overrides epochs), as transformers' max_steps. */
    maxSteps: positiveInt().optional(),
    batchSize: positiveInt().default(8),
    learningRate: positiveNumber().default(5e-5),
    weightDecay: nonNegativeNumber().default(0),
    optimizer: oneOf(['adamw', 'sgd']).default('adamw'),
    /** SGD only. */
    momentum: nonNegativeNumber().default(0.9),
    adamBeta1: beta().default(0.9),
    adamBeta2: beta().default(0.999),
    adamEpsilon: positiveNumber().default(1e-8),
    lrScheduler: oneOf(['linear', 'cosine', 'constant', 'constant_with_warmup']).default('linear'),
    warmupSteps: nonNegativeInt().default(0),
    warmupRatio: fraction().default(0),
    gradientAccumulationSteps: positiveInt().default(1),
    /** 0 turns gradient clipping off. */
    maxGradNorm: nonNegativeNumber().default(1.0),
    mixedPrecision: oneOf(['no', 'bf16', 'fp16']).default('no'),
    labelSmoothing: fraction().default(0),
    seed: nonNegativeInt().default(42),
    /** Evaluate every N optimizer steps; 0 = at the end of each epoch. */
    evalEvery: nonNegativeInt().default(0),
    /** Checkpoint every N optimizer steps; 0 = only at the end. */
    saveEvery: nonNegativeInt().default(0),
    /** Log every N optimizer steps. */
    logEvery: positiveInt().default(10),
    outputDir: nonEmptyString().default('runs/latest'),
    /** A checkpoint directory written by a previous run. */
    resumeFrom: nonEmptyString().optional(),
    /** Stop after this many evaluations without improvement of `earlyStoppingMetric`. */
    earlyStoppingPatience: positiveInt().optional(),
    /**
     * Classification: eval_loss, eval_accuracy, eval_top5_accuracy; detection: eval_loss, eval_map, eval_map_50,
     * eval_map_75; segmentation: eval_loss, eval_mean_iou, eval_overall_accuracy.
     */
    earlyStoppingMetric: oneOf([
      'eval_loss',
      'eval_accuracy',
      'eval_top5_accuracy',
      'eval_map',
      'eval_map_50',
      'eval_map_75',
      'eval_mean_iou',
      'eval_overall_accuracy',
    ]).default('eval_loss'),
    /** false: no weight decay on biases and LayerNorm weights (transformers' Trainer); true: decay all. */
    decayBiasAndNorm: bool().default(false),
    /** BatchNorm layers keep their running statistics and weights (small batches, detection backbones). */
    freezeBatchNorm: bool().default(false),
    gradientCheckpointing: bool().optional(),
    /** Data-loading threads (not processes: see DistributedTrainer for those). */
    numWorkers: nonNegativeInt().default(2),
    /** Drop an epoch's last, incomplete batch (data-parallel: also the samples that do not fill every rank, rather than repeating some). */
    dropLast: bool().default(false),
    dataset: DatasetConfigSchema.optional(),
  })
  .superRefine(
    (cfg, ctx) => {
      // transformers lets warmup_steps silently override warmup_ratio; refusing both avoids surprise.
      if (cfg.warmupSteps > 0 && cfg.warmupRatio > 0) {
        ctx.addIssue({ code: 'custom', path: ['warmupRatio'], message: 'cannot be non-zero together with {warmupSteps}: give one or the other' });
      }
    },
    whenValid('warmupSteps', 'warmupRatio'),
  );

export type TrainingConfigInput = z.input<typeof TrainingConfigSchema>;
export type TrainingConfig = z.output<typeof TrainingConfigSchema>;

/** Validates a camelCase training configuration, applying defaults; throws ConfigError listing every problem. */
export function parseTrainingConfig(input: unknown): TrainingConfig {
  return parseOrThrow(TrainingConfigSchema, input, 'Invalid training configuration');
}
