// Data-parallel training throughput on this machine, in one run: the same global batch on
// 1 worker x all threads against N workers x 1 thread (DistributedTrainer: torch.distributed,
// Gloo, DDP's reducer), and against PyTorch's DistributedDataParallel (Debian's python3-torch,
// gloo, N processes) training the same ViT in plain torch.nn. For each: images/s over the timed
// steps, and DDP's own timing of a step (its logger, both sides): backward, all-reduce, and how
// much of the all-reduce ran while backward still computed.
//   node bench/distributed.mjs [--models default,vit-base] [--workers 2] [--json results.json]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, DistributedTrainer, HuggingFaceModelLoader, runtimeInfo } from '../dist/index.js';
import { option, PYTHON } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const workers = Number(option(args, 'workers', '2'));
const jsonPath = option(args, 'json', undefined);
const cores = runtimeInfo().defaultComputeThreads;
const FASHION = '/usr/share/datasets/fashion-mnist';

// The small Fashion-MNIST ViT (config/examples/vit-fashion-mnist.yaml's) at its batch and
// precision, and ViT-B/16 at batch 8 in float32: the PyTorch DDP peer trains the same ViT.
const MODELS = {
  default: {
    dir: join(here, '..', 'config', 'models', 'vit-fashion-mnist'),
    batch: 128,
    precision: 'bf16',
    warmup: 5,
    steps: 40,
    fashion: true,
  },
  'vit-base': {
    dir: join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'),
    batch: 8,
    precision: 'fp32',
    warmup: 2,
    steps: 8,
    fashion: false,
  },
};
const chosen = option(args, 'models', 'default,vit-base').split(',');

function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/** @param {{dir: string, batch: number, precision: string, warmup: number, steps: number}} spec @param {number} count @param {number} threads */
async function visiontorch(spec, count, threads) {
  const modelConfig = { modelName: spec.dir, modelType: /** @type {const} */ ('classification'), pretrained: false, numClasses: 10 };
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 0 });
  const outputDir = mkdtempSync(join(tmpdir(), 'visiontorch-bench-'));
  /** @type {number[]} */
  const elapsed = [];
  try {
    const trainer = new BaseTrainer({ model, modelConfig });
    const result = await new DistributedTrainer(trainer, { numWorkers: count, threadsPerWorker: threads }).train(
      {
        maxSteps: spec.warmup + spec.steps,
        batchSize: spec.batch / count,
        learningRate: 1e-4,
        lrScheduler: 'constant',
        maxGradNorm: 1,
        mixedPrecision: spec.precision === 'bf16' ? 'bf16' : 'no',
        outputDir,
        logEvery: 1,
        dataset: {
          format: 'idx',
          images: join(FASHION, 'train-images-idx3-ubyte.gz'),
          labels: join(FASHION, 'train-labels-idx1-ubyte.gz'),
          limit: spec.batch * (spec.warmup + spec.steps),
          validationSplit: 0,
        },
      },
      { onProgress: (e) => e.kind === 'step' && elapsed.push(e.elapsedSeconds) },
    );
    const seconds = elapsed[elapsed.length - 1] - elapsed[spec.warmup - 1];
    const communication = /** @type {Record<string, number>} */ (result.communication ?? {});
    return {
      imagesPerSecond: (spec.batch * spec.steps) / seconds,
      secondsPerStep: seconds / spec.steps,
      backwardSeconds: communication.backward_seconds,
      allreduceSeconds: communication.allreduce_seconds,
      overlapSeconds: communication.allreduce_overlapping_backward_seconds,
    };
  } finally {
    model.dispose();
    rmSync(outputDir, { recursive: true, force: true });
  }
}

/** @param {{dir: string, batch: number, precision: string, warmup: number, steps: number, fashion: boolean}} spec @param {number} count @param {number} threads */
async function pytorch(spec, count, threads) {
  const settings = {
    config: join(spec.dir, 'config.json'),
    world: count,
    batch: spec.batch / count,
    threads,
    steps: spec.steps,
    warmup: spec.warmup,
    port: await freePort(),
    fashion: spec.fashion ? FASHION : null,
    precision: spec.precision,
  };
  const run = spawnSync(PYTHON, [join(here, 'peers', 'torch_ddp.py'), JSON.stringify(settings)], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`torch_ddp.py failed: ${run.stderr}`);
  return JSON.parse(run.stdout.trim().split('\n').at(-1));
}

// Lets one runtime's threads settle before the next is timed.
const settle = () => new Promise((resolve) => setTimeout(resolve, 2000));
const format = (r) =>
  `${r.imagesPerSecond.toFixed(1)} img/s, all-reduce ${(1000 * (r.allreduceSeconds ?? Number.NaN)).toFixed(1)} ms/step` +
  ` (${(100 * ((r.overlapSeconds ?? 0) / (r.allreduceSeconds || Number.NaN))).toFixed(0)}% during backward)`;

const results = [];
for (const name of chosen) {
  const spec = MODELS[/** @type {keyof typeof MODELS} */ (name)];
  if (!spec) throw new Error(`--models: unknown model ${name} (known: ${Object.keys(MODELS).join(', ')})`);
  const alone = await visiontorch(spec, 1, cores);
  await settle();
  const parallel = await visiontorch(spec, workers, Math.max(1, Math.floor(cores / workers)));
  await settle();
  const peer = await pytorch(spec, workers, Math.max(1, Math.floor(cores / workers)));
  await settle();
  const result = {
    model: name,
    globalBatch: spec.batch,
    precision: spec.precision,
    workers,
    cores,
    [`visiontorch 1x${cores}`]: alone,
    [`visiontorch ${workers}x${Math.max(1, Math.floor(cores / workers))}`]: parallel,
    [`pytorch DDP ${workers}x${Math.max(1, Math.floor(cores / workers))}`]: peer,
    scaling: parallel.imagesPerSecond / alone.imagesPerSecond,
    againstPyTorch: parallel.imagesPerSecond / peer.imagesPerSecond,
  };
  results.push(result);
  console.log(`${name}, global batch ${spec.batch}, ${spec.precision}:`);
  console.log(`  visiontorch 1 worker x ${cores} threads:  ${format(alone)}`);
  console.log(`  visiontorch ${workers} workers x 1 thread:   ${format(parallel)}  (${result.scaling.toFixed(2)}x of 1 worker)`);
  console.log(`  PyTorch DDP ${workers} workers x 1 thread:   ${format(peer)}  (visiontorch ${result.againstPyTorch.toFixed(2)}x)`);
}
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(results, null, 2)}\n`);
