/**
 * DistributedTrainer: data-parallel training on torch.distributed, launched as torchrun launches
 * it. This process is the launcher (torchrun's agent): on node 0 it hosts the rendezvous store
 * (a c10d TCPStore), starts `numWorkers` worker processes with torchrun's environment, forwards
 * rank 0's progress, stops every worker when one fails or the run is aborted, and restarts the
 * whole group from its last checkpoint up to `maxRestarts` times (each attempt under the store
 * prefix "/worker/attempt_<n>", as torchrun's workers use). The workers train with DDP's
 * semantics in the native core (native/core/distributed).
 */
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, invalidArgument, withCode } from '../errors.js';
import { native } from '../native.js';
import { type DistributedConfig, type DistributedConfigInput, parseDistributedConfig } from '../schemas/distributed-config.js';
import type { ModelConfig } from '../schemas/model-config.js';
import { parseTrainingConfig, type TrainingConfig, type TrainingConfigInput } from '../schemas/training-config.js';
import { type BaseTrainer, checkTrainOptions, ProgressRelay, type RankResult, type TrainOptions } from './base-trainer.js';
import { type FromWorker, hasCheckpoint, type ToWorker, type WorkerJob } from './distributed-worker.js';

/** A worker that failed: which rank, its process, and how it ended. */
export interface WorkerFailure {
  rank: number;
  localRank: number;
  pid: number | undefined;
  /** "exited with code 1", "was killed by SIGKILL", ... */
  how: string;
  /** The error the worker reported, if it reported one. */
  message?: string;
  code?: string;
}

export interface DistributedTrainOptions extends TrainOptions {
  /** A worker failed; `restarting`: the group restarts from its last checkpoint. */
  onWorkerFailure?: (failure: WorkerFailure, restarting: boolean) => void;
}

const DISTRIBUTED_TRAIN_OPTIONS = ['signal', 'onProgress', 'onWorkerFailure'] as const;

export interface DistributedTrainResult extends RankResult {
  /** Every local rank's result (node 0: rank 0's first), with its state digest. */
  workers: { rank: number; stateDigest?: string }[];
  /** How many times the group was restarted. */
  restarts: number;
}

// The built module (this file sits two levels below the package root as src/training/*.ts and
// as dist/training/*.js), so that workers run compiled JavaScript whoever imported this.
const WORKER_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'training', 'distributed-worker.js');
// Between SIGTERM and SIGKILL for a worker being stopped.
const KILL_GRACE_MS = 3000;

export class DistributedTrainer {
  readonly trainer: BaseTrainer;
  readonly options: DistributedConfig;

  constructor(trainer: BaseTrainer, options: DistributedConfigInput) {
    if (!trainer || typeof trainer.trainRank !== 'function') throw invalidArgument(TypeError, 'DistributedTrainer: expected a BaseTrainer');
    this.trainer = trainer;
    this.options = parseDistributedConfig(options);
  }

  /**
   * Trains `config.dataset` on `numWorkers` processes here (times `numNodes` machines), each with
   * `batchSize` images per step; resolves with rank 0's summary. The model each worker starts
   * from is this trainer's (saved to a temporary directory they load); rank 0 writes the
   * checkpoints, metrics.jsonl and the final model to `outputDir`, and on node 0 the trainer's
   * model holds the trained weights afterwards, as after BaseTrainer.train.
   */
  async train(config: TrainingConfig | TrainingConfigInput, options: DistributedTrainOptions = {}): Promise<DistributedTrainResult> {
    checkTrainOptions(options, DISTRIBUTED_TRAIN_OPTIONS);
    const training = parseTrainingConfig(config);
    if (!training.dataset) throw invalidArgument(TypeError, 'train: the configuration has no dataset (training.dataset, or data: in the YAML file)');
    const directory = await mkdtemp(join(tmpdir(), 'visiontorch-workers-'));
    try {
      await this.trainer.model.save(directory);
      // What save() wrote already holds the head, labels and sizes the overrides gave: the
      // workers load it as it is.
      const { modelType, dtype, device, gradientCheckpointing } = this.trainer.modelConfig;
      const model: ModelConfig = { modelName: directory, modelType, pretrained: true, localFilesOnly: true, dtype, device, gradientCheckpointing };
      const result = await launchWorkers(
        { model, training, syncBatchNorm: this.options.syncBatchNorm, useGpu: this.options.useGpu },
        this.options,
        options,
      );
      // As after BaseTrainer.train, the trainer's model is the trained one (where rank 0 wrote it).
      if (this.options.nodeRank === 0) {
        await this.trainer.model.handle().loadSaved(result.aborted ? result.checkpoint : result.outputDir);
        this.trainer.model.refresh();
      }
      return result;
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }
}

interface Worker {
  rank: number;
  localRank: number;
  process: ChildProcess;
  result?: RankResult;
  failure?: WorkerFailure;
  exited: Promise<void>;
}

/**
 * Runs `job` on this node's share of a data-parallel group, torchrun-style (see the file's
 * comment). `visiontorch train --nproc-per-node` calls it directly, without a model in this process.
 */
export async function launchWorkers(
  job: WorkerJob,
  distributed: DistributedConfig,
  options: DistributedTrainOptions = {},
): Promise<DistributedTrainResult> {
  checkTrainOptions(options, DISTRIBUTED_TRAIN_OPTIONS);
  const info = native().runtimeInfo();
  if (distributed.useGpu && (!info.cudaAvailable || info.cudaDevices < distributed.numWorkers)) {
    throw withCode(
      new Error(
        `useGpu: ${distributed.numWorkers} workers need as many CUDA devices; this ${info.cudaAvailable ? `machine has ${info.cudaDevices}` : 'build or machine has none'}. Train on CPU (useGpu: false, backend gloo)`,
      ),
      ErrorCode.UNSUPPORTED,
    );
  }
  if (options.signal?.aborted) {
    throw withCode(new Error('train: the signal was aborted before the run started', { cause: options.signal.reason }), ErrorCode.ABORTED);
  }
  const worldSize = distributed.numWorkers * distributed.numNodes;
  const threads = distributed.threadsPerWorker ?? Math.max(1, Math.floor(info.defaultComputeThreads / distributed.numWorkers));
  const multiNode = distributed.numNodes > 1;
  const requestedPort = distributed.masterPort ?? (multiNode ? 29500 : 0);
  // Node 0 hosts the store every rank connects to, as torchrun's agent does.
  const store =
    distributed.nodeRank === 0 ? new (native().NativeStoreServer)(distributed.masterAddr, requestedPort, distributed.timeoutSeconds) : undefined;
  const masterPort = store ? store.port() : requestedPort;
  const runId = `visiontorch-${process.pid}-${Date.now()}`;
  let training = job.training;
  // The workers stop as one when the caller aborts or when its onProgress throws (which would
  // otherwise escape from the workers' message handler and end this process).
  const stopping = new AbortController();
  const relay = new ProgressRelay(options.onProgress, () => stopping.abort());
  const abort = (): void => stopping.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', abort, { once: true });
  const supervised: DistributedTrainOptions = { ...options, signal: stopping.signal, onProgress: (event) => relay.report(event) };
  try {
    for (let restart = 0; ; restart++) {
      const workers = startWorkers(
        { ...job, training, threads, backend: distributed.backend, timeoutSeconds: distributed.timeoutSeconds },
        distributed,
        {
          worldSize,
          masterPort,
          restart,
          runId,
          options: supervised,
        },
      );
      const failure = await superviseWorkers(workers, supervised);
      if (!failure) {
        const ranked = workers.filter((w) => w.result !== undefined).sort((a, b) => a.rank - b.rank);
        const first = ranked[0]!.result!;
        const callbackFailure = relay.failure(first);
        if (callbackFailure) throw callbackFailure;
        return { ...first, workers: ranked.map((w) => ({ rank: w.rank, stateDigest: w.result?.stateDigest })), restarts: restart };
      }
      const restarting = restart < distributed.maxRestarts && !stopping.signal.aborted;
      options.onWorkerFailure?.(failure, restarting);
      if (!restarting) throw failureError(failure, restart);
      // The next attempt resumes from the last checkpoint the failed one wrote, if it wrote one.
      if (hasCheckpoint(training.outputDir)) training = { ...training, resumeFrom: training.outputDir };
    }
  } finally {
    options.signal?.removeEventListener('abort', abort);
    store?.close();
  }
}

function failureError(failure: WorkerFailure, restarts: number): Error {
  const detail = failure.message ? `: ${failure.message}` : '';
  const after = restarts > 0 ? ` (after ${restarts} restart${restarts === 1 ? '' : 's'})` : '';
  const error = withCode(
    new Error(
      `distributed training failed${after}: rank ${failure.rank} (local rank ${failure.localRank}, pid ${failure.pid}) ${failure.how}${detail}`,
    ),
    (failure.code as ErrorCode | undefined) ?? ErrorCode.DISTRIBUTED,
  );
  return Object.assign(error, { rank: failure.rank });
}

function startWorkers(
  job: WorkerJob,
  distributed: DistributedConfig,
  attempt: { worldSize: number; masterPort: number; restart: number; runId: string; options: DistributedTrainOptions },
): Worker[] {
  const workers: Worker[] = [];
  for (let localRank = 0; localRank < distributed.numWorkers; localRank++) {
    const rank = distributed.nodeRank * distributed.numWorkers + localRank;
    // torchrun's environment, so that a worker reads its group exactly as torch.distributed does.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      RANK: String(rank),
      LOCAL_RANK: String(localRank),
      WORLD_SIZE: String(attempt.worldSize),
      LOCAL_WORLD_SIZE: String(distributed.numWorkers),
      GROUP_RANK: String(distributed.nodeRank),
      GROUP_WORLD_SIZE: String(distributed.numNodes),
      ROLE_RANK: String(rank),
      ROLE_WORLD_SIZE: String(attempt.worldSize),
      ROLE_NAME: 'default',
      MASTER_ADDR: distributed.masterAddr,
      MASTER_PORT: String(attempt.masterPort),
      TORCHELASTIC_RESTART_COUNT: String(attempt.restart),
      TORCHELASTIC_MAX_RESTARTS: String(distributed.maxRestarts),
      TORCHELASTIC_RUN_ID: attempt.runId,
      TORCHELASTIC_USE_AGENT_STORE: 'True',
      OMP_NUM_THREADS: String(job.threads),
      VISIONTORCH_DISTRIBUTED_WORKER: '1',
    };
    const child = fork(WORKER_SCRIPT, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    const worker: Worker = { rank, localRank, process: child, exited: Promise.resolve() };
    worker.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        if (worker.result === undefined && worker.failure === undefined) {
          worker.failure = {
            rank,
            localRank,
            pid: child.pid,
            how: signal ? `was killed by ${signal}` : `exited with code ${code} before reporting a result`,
          };
        } else if (worker.failure && worker.failure.how === '') {
          worker.failure.how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        }
        resolve();
      });
      child.once('error', (error) => {
        worker.failure ??= { rank, localRank, pid: child.pid, how: 'could not be started', message: error.message };
        resolve();
      });
    });
    child.on('message', (message: FromWorker) => {
      if (message.type === 'event') attempt.options.onProgress?.(message.event);
      else if (message.type === 'result') worker.result = message.result;
      else if (message.type === 'error') worker.failure = { rank, localRank, pid: child.pid, how: '', message: message.message, code: message.code };
    });
    child.send({ type: 'job', job } satisfies ToWorker);
    workers.push(worker);
  }
  return workers;
}

/**
 * Waits for every worker to end. The first to fail stops the others (SIGTERM, then SIGKILL);
 * an abort asks every worker to stop after its current step, as one. Resolves with the failure
 * that caused the others: a worker that died or failed on its own before those that only lost
 * their peer.
 */
async function superviseWorkers(workers: Worker[], options: DistributedTrainOptions): Promise<WorkerFailure | undefined> {
  const stop = (): void => {
    for (const w of workers) if (w.process.connected) w.process.send({ type: 'stop' } satisfies ToWorker);
  };
  options.signal?.addEventListener('abort', stop, { once: true });
  const failures: WorkerFailure[] = [];
  let stopping = false;
  const killAll = (): void => {
    if (stopping) return;
    stopping = true;
    for (const w of workers) {
      if (w.process.exitCode === null && w.process.signalCode === null) {
        w.process.kill('SIGTERM');
        setTimeout(() => {
          if (w.process.exitCode === null && w.process.signalCode === null) w.process.kill('SIGKILL');
        }, KILL_GRACE_MS).unref();
      }
    }
  };
  try {
    await Promise.all(
      workers.map((w) =>
        w.exited.then(() => {
          if (!w.failure) return;
          if (!stopping) failures.push(w.failure);
          else if (w.failure.message && w.failure.code !== ErrorCode.DISTRIBUTED) failures.push(w.failure);
          killAll();
        }),
      ),
    );
  } finally {
    options.signal?.removeEventListener('abort', stop);
  }
  if (failures.length === 0) return undefined;
  // A rank that lost its peer reports a distributed error naming it; the peer itself is the cause.
  return failures.find((f) => f.code !== ErrorCode.DISTRIBUTED) ?? failures[0];
}
