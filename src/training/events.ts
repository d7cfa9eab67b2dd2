/**
 * What a trainer reports while it runs. One stream of these feeds the progress bar, the
 * metrics.jsonl log and the training chart, so each event is self-contained (no state needed to
 * read it) and JSON-serialisable.
 */

/** One optimizer step. */
export interface ProgressEvent {
  kind: 'step';
  /** Optimizer steps done, 1-based. */
  step: number;
  totalSteps: number;
  /** Fractional: 1.25 is a quarter into the second epoch. */
  epoch: number;
  totalEpochs: number;
  /** Training loss of this step (mean over its micro-batches); may be NaN when training diverges. */
  loss: number;
  learningRate: number;
  /** Gradient norm before clipping, where the trainer computes it. */
  gradNorm?: number;
  /** The loss or the gradients were not finite: the optimizer skipped the step, the weights did not move. */
  skipped?: boolean;
  imagesPerSecond: number;
  /** NaN or Infinity while unknown (first steps). */
  etaSeconds: number;
  elapsedSeconds: number;
}

/** One evaluation pass. */
export interface EvalEvent {
  kind: 'eval';
  step: number;
  epoch: number;
  /** transformers' names: eval_loss, eval_accuracy, eval_top5_accuracy, eval_runtime, ... */
  metrics: Record<string, number>;
}

/** A checkpoint written to `path`. */
export interface SaveEvent {
  kind: 'save';
  step: number;
  path: string;
}

export type TrainerEvent = ProgressEvent | EvalEvent | SaveEvent;
