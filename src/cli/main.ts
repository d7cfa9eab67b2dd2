#!/usr/bin/env node
/**
 * The `visiontorch` command:
 *   visiontorch train [config.yaml] [--nproc-per-node N] [--nnodes M --node-rank R --master-addr A --master-port P]
 *   visiontorch predict --model <id|dir> [--type T] [--task semantic|instance|panoptic] <image...> [--json]
 *   visiontorch models [--type T] [--json]
 *   visiontorch bench --model <id|dir> [--batch N] [--dtype D] [--json]
 */
import { readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
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
model types (--type; default: the task of the architecture config.json names): ${Object.values(ModelType).join(', ')}
  visiontorch <command> --help                        that command's usage; visiontorch --version: this package's version`;

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

class UsageError extends Error {}

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

async function train(args: string[]): Promise<void> {
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
  const configPath = positionals[0] ?? 'config/model_config.yaml';
  const config = await loadConfig(configPath);
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
  const interrupt = (): void => {
    process.stderr.write('\nStopping after this step and saving a checkpoint (Ctrl-C again to quit at once)...\n');
    controller.abort();
    process.once('SIGINT', () => process.exit(130));
  };
  process.once('SIGINT', interrupt);
  try {
    if (!values.json) {
      console.error(`Training ${model.architecture} (${model.loadReport.source}) with ${config.path}`);
    }
    const trainer = new BaseTrainer({ model, modelConfig: config.model, ...config.training });
    const result = await trainer.train(config.training, { signal: controller.signal, onProgress: reporter.report });
    reporter.finish();
    printResult(config, model.architecture, result, values.json === true);
  } finally {
    process.removeListener('SIGINT', interrupt);
    model.dispose();
  }
}

/** Prints a finished run: its metrics, where the model and checkpoint are, how to resume. */
function printResult(config: ProjectConfig, architecture: string, result: TrainResult, json: boolean): void {
  const summary = {
    ...result.metrics,
    train_loss: result.trainLoss,
    train_runtime: result.trainRuntime,
    train_samples_per_second: result.trainSamplesPerSecond,
    global_step: result.globalStep,
    epoch: result.epoch,
  };
  if (json) {
    console.log(JSON.stringify({ config: config.path, architecture, ...result }, null, 2));
    return;
  }
  console.log(formatMetricsTable(summary, result.aborted ? 'Interrupted run' : 'Results'));
  console.log(`\nmodel:       ${result.outputDir}`);
  console.log(`checkpoint:  ${result.checkpoint}`);
  console.log(`metrics:     ${join(result.outputDir, 'metrics.jsonl')}, chart ${join(result.outputDir, 'training_chart.png')}`);
  if (result.aborted) console.log(`resume with: resume_from: ${result.checkpoint}`);
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
async function trainAsRank(config: ProjectConfig, group: NativeGroupOptions, json: boolean): Promise<void> {
  const distributed = config.distributed;
  const reporter = group.rank === 0 ? new ProgressReporter({ json, logEvery: config.training.logEvery }) : undefined;
  if (reporter && !json) {
    console.error(`Training ${config.model.modelName} with ${config.path} as rank 0 of ${group.worldSize} (${group.masterAddr}:${group.masterPort})`);
  }
  // Signals keep their default: the launcher (torchrun, the operator) stops every rank together.
  const result = await runRank(workerJob(config, distributed), group, { onProgress: reporter?.report });
  reporter?.finish();
  if (group.rank === 0) printResult(config, config.model.modelName, result, json);
}

/** This machine's workers of a data-parallel run (torchrun's launcher): node 0's rank 0 reports. */
async function trainDistributed(config: ProjectConfig, distributed: DistributedConfig, json: boolean): Promise<void> {
  const reporter = new ProgressReporter({ json, logEvery: config.training.logEvery });
  const controller = new AbortController();
  const interrupt = (): void => {
    process.stderr.write('\nStopping every worker after this step and saving a checkpoint (Ctrl-C again to quit at once)...\n');
    controller.abort();
    process.once('SIGINT', () => process.exit(130));
  };
  process.once('SIGINT', interrupt);
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
  } finally {
    process.removeListener('SIGINT', interrupt);
  }
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = { train, predict, models, bench };

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE);
    return command === undefined ? 1 : 0;
  }
  if (command === '--version' || command === '-v' || command === 'version') {
    console.log(packageVersion());
    return 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    console.error(`unknown command "${command}"\n${USAGE}`);
    return 1;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(commandUsage(command));
    return 0;
  }
  try {
    await run(rest);
    return 0;
  } catch (error) {
    if (error instanceof UsageError || (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS'))) {
      console.error(`visiontorch ${command}: ${error.message}\n${USAGE}`);
      return 1;
    }
    const message = error instanceof ConfigError || error instanceof Error ? error.message : String(error);
    console.error(`visiontorch ${command}: ${message}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
