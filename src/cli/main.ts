#!/usr/bin/env node
/**
 * The `visiontorch` command:
 *   visiontorch train [config.yaml] [--nproc-per-node N] [--nnodes M --node-rank R --master-addr A --master-port P]
 *   visiontorch predict --model <id|dir> [--type T] [--task semantic|instance|panoptic] <image...> [--json]
 *   visiontorch models [--type T] [--json]
 *   visiontorch bench --model <id|dir> [--batch N] [--dtype D] [--json]
 *   visiontorch init [path] [--force] [--json]
 * Exit codes: 0 done, 1 the job failed, 2 a usage or configuration error, 130 (SIGINT) or 143
 * (SIGTERM) a train run interrupted after saving its checkpoint.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { NativeGroupOptions } from '../../binding.js';
import { loadConfig, type ProjectConfig } from '../config/project-config.js';
import { ConfigError } from '../errors.js';
import { fetchImageUrls } from '../models/image-url.js';
import { HuggingFaceModelLoader, type LoadableConfig, type LoadModelOptions } from '../models/loader.js';
import type { DetectionPrediction, Prediction, VisionModel } from '../models/vision-model.js';
import { drawDetections, drawSegmentation, drawSegments } from '../render/annotate.js';
import { type DistributedConfig, parseDistributedConfig } from '../schemas/distributed-config.js';
import { ModelType } from '../schemas/model-config.js';
import { tensor } from '../tensor.js';
import { BaseTrainer, type TrainResult } from '../training/base-trainer.js';
import { launchWorkers } from '../training/distributed-trainer.js';
import { groupFromEnvironment, runRank, type WorkerJob } from '../training/distributed-worker.js';
import { DEFAULT_JOB_FILE, FileExistsError, JOB_TEMPLATE, writeJobFile } from './init.js';
import { DownloadReporter, formatMetricsTable, ProgressReporter } from './progress.js';

const USAGE = `usage:
  visiontorch train [config.yaml] [--json]            fine-tune the model of a YAML config (default config/model_config.yaml)
      [--nproc-per-node N] [--nnodes M --node-rank R --master-addr A --master-port P]
                                                      data-parallel on N worker processes (per node), as torchrun; run under
                                                      torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) it is one rank
  visiontorch predict --model <id|dir> [--type T] [--task semantic|instance|panoptic] [--top-k K] [--threshold S]
                      [--mask-threshold M] [--draw out.png] <image...> [--json]
  visiontorch models [--type T] [--json]              architectures this build implements
  visiontorch bench --model <id|dir> [--type T] [--batch N] [--dtype D] [--iterations N] [--random-weights] [--json]
  visiontorch init [path] [--force] [--json]          write a commented job file to start from (default ${DEFAULT_JOB_FILE})
model types (--type; default: the task of the architecture config.json names): ${Object.values(ModelType).join(', ')}
  visiontorch <command> --help                        that command's usage; visiontorch --version: this package's version
--json: one JSON document on stdout (progress and downloads print nothing); a failure prints
  {"error": {"code", "message"}} on stdout instead of its message on stderr
exit codes: 0 done; 1 the job failed; 2 a usage or configuration error (nothing was run);
  130 (SIGINT, Ctrl-C) or 143 (SIGTERM) train was interrupted: it saved a checkpoint, which it reports`;

/** The process's exit status; documented in USAGE and the README. */
export const ExitCode = { OK: 0, FAILED: 1, USAGE: 2, SIGINT: 130, SIGTERM: 143 } as const;

/** The usage lines of one command: its entry in USAGE and the lines that continue it. */
function commandUsage(command: string): string {
  const lines = USAGE.split('\n').slice(1);
  const start = lines.findIndex((line) => line.startsWith(`  visiontorch ${command} `));
  const end = lines.findIndex((line, i) => i > start && !line.startsWith('      '));
  return ['usage:', ...lines.slice(start, end === -1 ? undefined : end)].join('\n');
}

function packageVersion(): string {
  return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version;
}

/** A command line or job file that cannot run: exit code 2; `showUsage` adds the usage text. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly showUsage = true,
  ) {
    super(message);
  }
}

/** --type, checked; absent: the model's config.json says (its architecture's task). */
function modelType(value: string | undefined): ModelType | undefined {
  if (value === undefined) return undefined;
  if (!(Object.values(ModelType) as string[]).includes(value)) {
    throw new UsageError(`--type must be one of ${Object.values(ModelType).join(', ')}, got "${value}"`);
  }
  return value as ModelType;
}

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer, got "${value}"`);
  return n;
}

/** loadModel, showing on stderr the progress of what it downloads (nothing with --json). */
async function loadModel(config: LoadableConfig, json: boolean | undefined, options: LoadModelOptions = {}) {
  const downloads = new DownloadReporter({ json: json === true });
  try {
    return await HuggingFaceModelLoader.loadModel(config, { ...options, onProgress: downloads.report });
  } finally {
    downloads.finish();
  }
}

async function models(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { type: { type: 'string' }, json: { type: 'boolean' } } });
  const list = HuggingFaceModelLoader.getAvailableModels(values.type === undefined ? undefined : modelType(values.type));
  if (values.json) {
    console.log(JSON.stringify(list, null, 2));
    return;
  }
  for (const info of list) {
    console.log(`${info.architecture.padEnd(34)} ${info.modelType.padEnd(17)} ${info.checkpoints.join(', ')}`);
  }
}

async function predict(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      type: { type: 'string' },
      'top-k': { type: 'string' },
      threshold: { type: 'string' },
      task: { type: 'string' },
      'mask-threshold': { type: 'string' },
      draw: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new UsageError('predict needs --model <hub id or directory>');
  if (positionals.length === 0) throw new UsageError('predict needs at least one image file or http(s) URL');
  const fraction = (name: string, text: string | undefined): number | undefined => {
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!(text.trim() !== '' && value >= 0 && value <= 1)) throw new UsageError(`--${name} must be a number from 0 to 1, got "${text}"`);
    return value;
  };
  const threshold = fraction('threshold', values.threshold);
  const maskThreshold = fraction('mask-threshold', values['mask-threshold']);
  const task = values.task;
  if (task !== undefined && task !== 'semantic' && task !== 'instance' && task !== 'panoptic')
    throw new UsageError(`--task must be semantic, instance or panoptic, got "${task}"`);
  // Checked before the (possibly long) load, as the other options are.
  const topK = positiveInt('top-k', values['top-k'], 5);
  const model = await loadModel({ modelName: values.model, modelType: modelType(values.type) }, values.json);
  try {
    // URLs fetched once, for the prediction and the drawing; the output still names them as given.
    const images = await fetchImageUrls(positionals, 'predict');
    const predictions = await model.predict(images, { topK, threshold, task, maskThreshold });
    const drawn = values.draw === undefined ? [] : await drawPredictions(model, images, predictions, values.draw);
    if (values.json) {
      // A label map goes out as a plain array: JSON has no typed arrays.
      const plain = (p: Prediction | undefined) =>
        p && 'labelMap' in p
          ? { ...p, labelMap: Array.from(p.labelMap) }
          : p && 'segmentation' in p
            ? { ...p, segmentation: Array.from(p.segmentation) }
            : p;
      console.log(
        JSON.stringify(positionals.map((image, i) => ({ image, predictions: plain(predictions[i]), ...(drawn[i] && { drawn: drawn[i] }) }))),
      );
      return;
    }
    positionals.forEach((image, i) => {
      console.log(image);
      const prediction = predictions[i]!;
      if ('labelMap' in prediction) {
        const total = prediction.width * prediction.height;
        for (const s of prediction.segments) console.log(`  ${((100 * s.pixels) / total).toFixed(1).padStart(5)}%  ${s.label}`);
      } else if ('segmentation' in prediction) {
        const total = prediction.width * prediction.height;
        for (const s of prediction.segments)
          console.log(
            `  #${s.id}  ${s.score.toFixed(4)}  ${((100 * s.pixels) / total).toFixed(1).padStart(5)}%  ${s.label}${s.isThing ? '' : ' (stuff)'}`,
          );
      } else {
        for (const p of prediction) {
          const box = 'box' in p ? `  [${[p.box.xmin, p.box.ymin, p.box.xmax, p.box.ymax].map((v) => v.toFixed(1)).join(', ')}]` : '';
          console.log(`  ${p.score.toFixed(4)}  ${p.label}${box}`);
        }
      }
      if (drawn[i]) console.log(`  drawn: ${drawn[i]}`);
    });
  } finally {
    model.dispose();
  }
}

/** `--draw out.png`: each image with its predictions drawn on; several images get out-1.png, out-2.png, ... */
async function drawPredictions(model: VisionModel, images: (string | Uint8Array)[], predictions: Prediction[], path: string): Promise<string[]> {
  if (model.modelType === ModelType.CLASSIFICATION) throw new UsageError('--draw draws detections and segmentations; this is a classification model');
  const ext = extname(path) || '.png';
  const base = path.slice(0, path.length - extname(path).length);
  const paths = images.map((_, i) => (images.length === 1 ? path : `${base}-${i + 1}${ext}`));
  for (const [i, image] of images.entries()) {
    const prediction = predictions[i]!;
    if ('labelMap' in prediction) await drawSegmentation(image, prediction.labelMap, model.labels, paths[i]!);
    else if ('segmentation' in prediction) await drawSegments(image, prediction.segmentation, prediction.segments, paths[i]!);
    else await drawDetections(image, prediction as DetectionPrediction[], paths[i]!);
  }
  return paths;
}

async function bench(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      type: { type: 'string' },
      batch: { type: 'string' },
      dtype: { type: 'string' },
      iterations: { type: 'string' },
      'random-weights': { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new UsageError('bench needs --model <hub id or directory>');
  const dtype = values.dtype ?? 'float32';
  if (!['float32', 'bfloat16', 'float16'].includes(dtype)) throw new UsageError(`--dtype must be float32, bfloat16 or float16, got "${dtype}"`);
  const batch = positiveInt('batch', values.batch, 1);
  const iterations = positiveInt('iterations', values.iterations, 10);
  const loadStart = performance.now();
  // --random-weights: a config.json alone (e.g. a full-size architecture) with random initialisation.
  const model = await loadModel(
    {
      modelName: values.model,
      modelType: modelType(values.type),
      dtype: dtype as 'float32' | 'bfloat16' | 'float16',
      pretrained: !values['random-weights'],
    },
    values.json,
  );
  const loadSeconds = (performance.now() - loadStart) / 1000;
  try {
    const size = model.processorConfig.size as { height?: number; width?: number; shortest_edge?: number } | undefined;
    const height = size?.height ?? size?.shortest_edge ?? 224;
    const width = size?.width ?? size?.shortest_edge ?? 224;
    const channels = Number(model.config.num_channels ?? 3);
    const input = tensor('float32', [batch, channels, height, width]);
    for (let i = 0; i < input.data.length; i++) input.data[i] = Math.sin(i);
    await model.forward({ pixelValues: input }); // warm-up
    const times: number[] = [];
    for (let i = 0; i < iterations; i++) {
      const start = performance.now();
      await model.forward({ pixelValues: input });
      times.push((performance.now() - start) / 1000);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)] ?? Number.NaN;
    const result = {
      model: values.model,
      architecture: model.architecture,
      dtype,
      batch,
      height,
      width,
      iterations,
      loadSeconds,
      medianSeconds: median,
      imagesPerSecond: batch / median,
    };
    if (values.json) console.log(JSON.stringify(result, null, 2));
    else {
      console.log(
        `${model.architecture} ${dtype} batch ${batch} at ${height}x${width}: median ${(median * 1000).toFixed(1)} ms, ${(batch / median).toFixed(2)} images/s (load ${loadSeconds.toFixed(2)} s)`,
      );
    }
  } finally {
    model.dispose();
  }
}

/** The YAML `distributed:` block with the command line's torchrun-style flags over it; undefined for one process. */
function distributedSettings(values: Record<string, string | boolean | undefined>, config: ProjectConfig): DistributedConfig | undefined {
  const flags: Record<string, unknown> = {};
  const integer = (name: string): number | undefined => {
    const value = values[name];
    if (value === undefined) return undefined;
    const n = Number(value);
    if (typeof value !== 'string' || !Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got "${value}"`);
    return n;
  };
  if (values['nproc-per-node'] !== undefined) flags.numWorkers = integer('nproc-per-node');
  if (values.nnodes !== undefined) flags.numNodes = integer('nnodes');
  if (values['node-rank'] !== undefined) flags.nodeRank = integer('node-rank');
  if (values['master-port'] !== undefined) flags.masterPort = integer('master-port');
  if (values['master-addr'] !== undefined) flags.masterAddr = values['master-addr'];
  if (!config.distributed && Object.keys(flags).length === 0) return undefined;
  const given = config.distributed ? { ...config.distributed, ...flags } : { numWorkers: 1, ...flags };
  return parseDistributedConfig(given);
}

/**
 * Stops a run on SIGINT or SIGTERM through `controller` (after the current step, with a
 * checkpoint); a second signal quits at once. `signal()` says which one came, for the exit code;
 * `dispose()` restores the default handlers.
 */
function interruptOn(controller: AbortController, what: string): { signal(): 'SIGINT' | 'SIGTERM' | undefined; dispose(): void } {
  let received: 'SIGINT' | 'SIGTERM' | undefined;
  const again = (signal: 'SIGINT' | 'SIGTERM') => () => process.exit(ExitCode[signal]);
  const handlers = new Map<'SIGINT' | 'SIGTERM', () => void>();
  const first = (signal: 'SIGINT' | 'SIGTERM') => (): void => {
    process.stderr.write(
      `\n${what} after this step and saving a checkpoint (${signal === 'SIGINT' ? 'Ctrl-C' : 'SIGTERM'} again to quit at once)...\n`,
    );
    if (received === undefined) received = signal;
    controller.abort();
    for (const [name, handler] of handlers) process.removeListener(name, handler);
    handlers.clear();
    for (const name of ['SIGINT', 'SIGTERM'] as const) {
      handlers.set(name, again(name));
      process.once(name, handlers.get(name)!);
    }
  };
  for (const name of ['SIGINT', 'SIGTERM'] as const) {
    handlers.set(name, first(name));
    process.once(name, handlers.get(name)!);
  }
  return {
    signal: () => received,
    dispose: () => {
      for (const [name, handler] of handlers) process.removeListener(name, handler);
    },
  };
}

/** The job file `train` was given, or the default one; a missing default says how to start one. */
function jobFile(given: string | undefined): string {
  if (given !== undefined) return given;
  if (!existsSync(DEFAULT_JOB_FILE)) {
    throw new UsageError(
      `no job file given, and ${DEFAULT_JOB_FILE} does not exist in ${process.cwd()}.\n` +
        `Start one with \`visiontorch init\` (writes ${DEFAULT_JOB_FILE}, every key explained), then edit it; ` +
        'or name a job file: visiontorch train path/to/job.yaml',
      false,
    );
  }
  return DEFAULT_JOB_FILE;
}

async function train(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      'nproc-per-node': { type: 'string' },
      nnodes: { type: 'string' },
      'node-rank': { type: 'string' },
      'master-addr': { type: 'string' },
      'master-port': { type: 'string' },
    },
  });
  const config = await loadConfig(jobFile(positionals[0]));
  // Launcher flags make this process the node's launcher even where a PyTorchJob's RANK (the
  // node's) is set; without them, a launcher's environment makes it one rank.
  const launching = ['nproc-per-node', 'nnodes', 'node-rank', 'master-addr', 'master-port'].some(
    (flag) => values[flag as keyof typeof values] !== undefined,
  );
  const group = launching ? undefined : groupFromEnvironment();
  if (group) return trainAsRank(config, group, values.json === true);
  const distributed = distributedSettings(values, config);
  if (distributed) return trainDistributed(config, distributed, values.json === true);
  // The run's seed also fixes the initialisation of anything the checkpoint does not hold.
  const model = await loadModel(config.model, values.json, { seed: config.training.seed });
  const reporter = new ProgressReporter({ json: values.json === true, logEvery: config.training.logEvery });
  const controller = new AbortController();
  const interrupt = interruptOn(controller, 'Stopping');
  try {
    if (!values.json) {
      console.error(`Training ${model.architecture} (${model.loadReport.source}) with ${config.path}`);
    }
    const trainer = new BaseTrainer({ model, modelConfig: config.model, ...config.training });
    const result = await trainer.train(config.training, { signal: controller.signal, onProgress: reporter.report });
    reporter.finish();
    printResult(config, model.architecture, result, values.json === true);
    return result.aborted ? ExitCode[interrupt.signal() ?? 'SIGINT'] : ExitCode.OK;
  } finally {
    interrupt.dispose();
    model.dispose();
  }
}

/**
 * The checkpoint a run ended with: its directory and step (checkpoint-<step>), or null where
 * none is on disk (another node's launcher, which saves nothing).
 */
function savedCheckpoint(result: TrainResult): { path: string; step: number } | null {
  if (!result.checkpoint || !existsSync(result.checkpoint)) return null;
  const step = /^checkpoint-(\d+)$/.exec(basename(result.checkpoint));
  return { path: result.checkpoint, step: step ? Number(step[1]) : result.globalStep };
}

/**
 * Prints a finished run: its metrics, where the model and checkpoint are, how to resume. An
 * interrupted run saved no final model (the trainer writes it only at the end): it reports its
 * checkpoint instead, with the step it holds.
 */
function printResult(config: ProjectConfig, architecture: string, result: TrainResult, json: boolean): void {
  const checkpoint = savedCheckpoint(result);
  const model = result.aborted ? null : result.outputDir;
  const summary = {
    ...result.metrics,
    train_loss: result.trainLoss,
    train_runtime: result.trainRuntime,
    train_samples_per_second: result.trainSamplesPerSecond,
    global_step: result.globalStep,
    epoch: result.epoch,
  };
  if (json) {
    const status = result.aborted ? 'interrupted' : 'completed';
    console.log(JSON.stringify({ status, config: config.path, architecture, ...result, model, checkpoint }, null, 2));
    return;
  }
  console.log(formatMetricsTable(summary, result.aborted ? 'Interrupted run' : 'Results'));
  console.log('');
  if (model) console.log(`model:       ${model}`);
  else console.log(`model:       none: the run was interrupted at step ${result.globalStep}, before the final model is written`);
  console.log(`checkpoint:  ${checkpoint ? `${checkpoint.path} (step ${checkpoint.step})` : 'none'}`);
  console.log(`metrics:     ${join(result.outputDir, 'metrics.jsonl')}, chart ${join(result.outputDir, 'training_chart.png')}`);
  if (result.aborted && checkpoint) console.log(`resume with: resume_from: ${checkpoint.path}  (under training: in ${config.path})`);
}

/** The job every rank runs for a YAML config: its model (seeded) and training block. */
function workerJob(config: ProjectConfig, distributed: DistributedConfig | undefined): WorkerJob {
  return {
    model: config.model,
    seed: config.training.seed,
    training: config.training,
    syncBatchNorm: distributed?.syncBatchNorm ?? false,
    useGpu: distributed?.useGpu ?? false,
    ...(distributed && { timeoutSeconds: distributed.timeoutSeconds, backend: distributed.backend, threads: distributed.threadsPerWorker }),
  };
}

/** One rank of a group that torchrun, a PyTorchJob or a SLURM script started: rank 0 reports. */
async function trainAsRank(config: ProjectConfig, group: NativeGroupOptions, json: boolean): Promise<number> {
  const distributed = config.distributed;
  const reporter = group.rank === 0 ? new ProgressReporter({ json, logEvery: config.training.logEvery }) : undefined;
  if (reporter && !json) {
    console.error(`Training ${config.model.modelName} with ${config.path} as rank 0 of ${group.worldSize} (${group.masterAddr}:${group.masterPort})`);
  }
  // Signals keep their default: the launcher (torchrun, the operator) stops every rank together.
  const result = await runRank(workerJob(config, distributed), group, { onProgress: reporter?.report });
  reporter?.finish();
  if (group.rank === 0) printResult(config, config.model.modelName, result, json);
  // The group stopped together because a signal reached one of its processes.
  return result.aborted ? ExitCode.SIGINT : ExitCode.OK;
}

/** This machine's workers of a data-parallel run (torchrun's launcher): node 0's rank 0 reports. */
async function trainDistributed(config: ProjectConfig, distributed: DistributedConfig, json: boolean): Promise<number> {
  const reporter = new ProgressReporter({ json, logEvery: config.training.logEvery });
  const controller = new AbortController();
  const interrupt = interruptOn(controller, 'Stopping every worker');
  try {
    if (!json) {
      const ranks = distributed.numWorkers * distributed.numNodes;
      console.error(
        `Training ${config.model.modelName} with ${config.path} on ${distributed.numWorkers} worker${distributed.numWorkers === 1 ? '' : 's'}` +
          (distributed.numNodes > 1 ? ` on node ${distributed.nodeRank} of ${distributed.numNodes}` : '') +
          ` (${ranks} rank${ranks === 1 ? '' : 's'})`,
      );
    }
    const result = await launchWorkers(workerJob(config, distributed), distributed, {
      signal: controller.signal,
      onProgress: reporter.report,
      onWorkerFailure: (failure, restarting) => {
        if (!json || restarting) {
          process.stderr.write(
            `\nrank ${failure.rank} ${failure.how}${failure.message ? `: ${failure.message}` : ''}${restarting ? '; restarting every worker from the last checkpoint' : ''}\n`,
          );
        }
      },
    });
    reporter.finish();
    // Another node's launcher reports nothing of its own: node 0's rank 0 has the run's record.
    if (distributed.nodeRank === 0) printResult(config, config.model.modelName, result, json);
    return result.aborted ? ExitCode[interrupt.signal() ?? 'SIGINT'] : ExitCode.OK;
  } finally {
    interrupt.dispose();
  }
}

/** `visiontorch init [path]`: a commented job file, never over an existing one without --force. */
async function init(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { force: { type: 'boolean' }, json: { type: 'boolean' } } });
  if (positionals.length > 1) throw new UsageError(`init takes one path, got ${positionals.length}`);
  const written = writeJobFile(positionals[0] ?? DEFAULT_JOB_FILE, JOB_TEMPLATE, values.force === true);
  if (values.json) {
    console.log(JSON.stringify(written, null, 2));
    return;
  }
  const command = resolve(DEFAULT_JOB_FILE) === written.path ? 'visiontorch train' : `visiontorch train ${positionals[0]}`;
  console.log(`${written.replaced ? 'replaced' : 'wrote'} ${written.path}`);
  console.log(`Edit it (model.name, model.num_classes, data.root: every key is explained), then run: ${command}`);
}

// Each resolves with its exit code, or nothing when done (0).
const COMMANDS: Record<string, (args: string[]) => Promise<unknown>> = { train, predict, models, bench, init };

/** `error`'s stable code: the library's ERR_VISIONTORCH_* (or Node's) where it has one. */
function errorCode(error: unknown, usage: boolean): string {
  if (usage) return error instanceof ConfigError ? error.code : 'ERR_VISIONTORCH_USAGE';
  const code = error !== null && typeof error === 'object' && 'code' in error ? error.code : undefined;
  return typeof code === 'string' ? code : 'ERR_VISIONTORCH_FAILED';
}

/** Whether `error` is the caller's to fix before anything runs: exit code 2. */
function isUsageError(error: unknown): boolean {
  return (
    error instanceof UsageError ||
    error instanceof ConfigError ||
    error instanceof FileExistsError ||
    (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS'))
  );
}

/** Reports a failure: with --json one document on stdout, else the message (and usage where it helps) on stderr. */
function fail(command: string | undefined, error: unknown, json: boolean): number {
  const usage = isUsageError(error);
  const message = error instanceof Error ? error.message : String(error);
  if (json) {
    const issues = error instanceof ConfigError ? { issues: error.issues } : {};
    console.log(JSON.stringify({ error: { code: errorCode(error, usage), message, ...issues } }, null, 2));
  } else {
    const withUsage =
      usage && !(error instanceof UsageError && !error.showUsage) && !(error instanceof ConfigError) && !(error instanceof FileExistsError);
    const usageText = withUsage ? `\n${command && COMMANDS[command] ? commandUsage(command) : USAGE}` : '';
    console.error(`${command && COMMANDS[command] ? `visiontorch ${command}: ` : 'visiontorch: '}${message}${usageText}`);
  }
  return usage ? ExitCode.USAGE : ExitCode.FAILED;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const json = rest.includes('--json');
  if (command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE);
    return ExitCode.OK;
  }
  if (command === undefined) return fail(undefined, new UsageError('no command given'), json);
  if (command === '--version' || command === '-v' || command === 'version') {
    console.log(packageVersion());
    return ExitCode.OK;
  }
  const run = COMMANDS[command];
  if (!run) return fail(undefined, new UsageError(`unknown command "${command}"`), json);
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(commandUsage(command));
    return ExitCode.OK;
  }
  try {
    const code = await run(rest);
    return typeof code === 'number' ? code : ExitCode.OK;
  } catch (error) {
    return fail(command, error, json);
  }
}

process.exitCode = await main(process.argv.slice(2));
