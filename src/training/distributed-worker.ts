/**
 * One rank of a data-parallel run, in its own process. DistributedTrainer forks this module with
 * torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
 * TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_USE_AGENT_STORE, ...) and sends the job over the IPC
 * channel; `visiontorch train` runs `runRank` itself when torchrun or a PyTorchJob started it.
 * Either way the group comes from the environment, as torch.distributed's env:// reads it.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { NativeGroupOptions } from '../../binding.js';
import { ErrorCode, withCode } from '../errors.js';
import { HuggingFaceModelLoader } from '../models/loader.js';
import { native } from '../native.js';
import { setNumThreads } from '../runtime.js';
import type { ModelConfig } from '../schemas/model-config.js';
import type { TrainingConfig } from '../schemas/training-config.js';
import { BaseTrainer, type RankResult, type TrainOptions } from './base-trainer.js';
import type { TrainerEvent } from './events.js';

/** What every rank of a job loads and runs. */
export interface WorkerJob {
  model: ModelConfig;
  /** Seeds random initialisation, as loadModel's `seed`. */
  seed?: number;
  training: TrainingConfig;
  syncBatchNorm: boolean;
  /** How long a collective or the rendezvous waits for a rank (default 60 s). */
  timeoutSeconds?: number;
  /** Default: nccl with useGpu, else gloo. */
  backend?: 'gloo' | 'nccl';
  /** Compute threads; default OMP_NUM_THREADS, else this machine's cores divided among its ranks. */
  threads?: number;
  useGpu: boolean;
}

/** Messages between DistributedTrainer and its workers. */
export type ToWorker = { type: 'job'; job: WorkerJob } | { type: 'stop' };
export type FromWorker =
  | { type: 'event'; event: TrainerEvent }
  | { type: 'result'; result: RankResult }
  | { type: 'error'; message: string; code?: string };

/** The group this process's environment describes (torchrun's variables), or undefined. */
export function groupFromEnvironment(environment: NodeJS.ProcessEnv = process.env): NativeGroupOptions | undefined {
  return native().distributedEnvironment(environment) ?? undefined;
}

/** A checkpoint-<step> directory with a trainer state in `outputDir`: where a restarted group resumes. */
export function hasCheckpoint(outputDir: string): boolean {
  if (!existsSync(outputDir)) return false;
  return readdirSync(outputDir).some((name) => /^checkpoint-\d+$/.test(name) && existsSync(join(outputDir, name, 'trainer_state.json')));
}

function computeThreads(job: WorkerJob, group: NativeGroupOptions): number {
  if (job.threads !== undefined) return job.threads;
  const fromEnvironment = Number(process.env.OMP_NUM_THREADS);
  if (Number.isInteger(fromEnvironment) && fromEnvironment > 0) return fromEnvironment;
  return Math.max(1, Math.floor(native().runtimeInfo().defaultComputeThreads / (group.localWorldSize ?? 1)));
}

/** Loads the job's model and trains it as rank `group.rank`; resolves with this rank's result. */
export async function runRank(job: WorkerJob, group: NativeGroupOptions, options: TrainOptions = {}): Promise<RankResult> {
  setNumThreads(computeThreads(job, group));
  const restartCount = group.restartCount ?? 0;
  const training = { ...job.training };
  // A restarted group continues from the last checkpoint its previous attempt wrote.
  if (restartCount > 0 && training.resumeFrom === undefined && hasCheckpoint(training.outputDir)) training.resumeFrom = training.outputDir;
  const device = job.useGpu ? `cuda:${group.localRank ?? 0}` : job.model.device;
  if (job.useGpu && !native().runtimeInfo().cudaAvailable) {
    throw withCode(
      new Error('useGpu: this build of visiontorch or this machine has no CUDA device; train on CPU (useGpu: false, backend gloo)'),
      ErrorCode.UNSUPPORTED,
    );
  }
  const model = await HuggingFaceModelLoader.loadModel({ ...job.model, ...(device && { device }) }, { seed: job.seed });
  try {
    const trainer = new BaseTrainer({ model, modelConfig: job.model, ...training });
    const distributed = {
      ...group,
      backend: job.backend ?? (job.useGpu ? 'nccl' : 'gloo'),
      timeoutSeconds: job.timeoutSeconds ?? group.timeoutSeconds,
      syncBatchNorm: job.syncBatchNorm,
    } as const;
    return await trainer.trainRank(training, distributed, options);
  } finally {
    model.dispose();
  }
}

/** The forked worker: one job from the parent, its events and result back, then exit. */
function serveParent(): void {
  const send = (message: FromWorker): Promise<void> =>
    new Promise((resolve) => {
      if (!process.connected) resolve();
      else process.send?.(message, undefined, {}, () => resolve());
    });
  const controller = new AbortController();
  // The launcher coordinates stopping: an interrupt reaches it too, and it tells every rank.
  process.on('SIGINT', () => {});
  // A launcher that is gone leaves nobody to report to: stop at once rather than linger. (Not
  // process.exit: it would wait for the native run to end; checkpoints on disk are atomic.)
  process.on('disconnect', () => process.kill(process.pid, 'SIGKILL'));
  process.on('message', (message: ToWorker) => {
    if (message.type === 'stop') {
      controller.abort();
      return;
    }
    if (message.type !== 'job') return;
    const group = groupFromEnvironment();
    const run = group
      ? runRank(message.job, group, { signal: controller.signal, onProgress: (event) => void send({ type: 'event', event }) })
      : Promise.reject(new Error('distributed worker: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set'));
    run.then(
      async (result) => {
        await send({ type: 'result', result });
        process.exit(0);
      },
      async (error: unknown) => {
        const { message: text, code } = error instanceof Error ? (error as Error & { code?: string }) : { message: String(error), code: undefined };
        await send({ type: 'error', message: text, ...(code && { code }) });
        process.exit(1);
      },
    );
  });
}

if (process.env.VISIONTORCH_DISTRIBUTED_WORKER === '1' && process.send) serveParent();
