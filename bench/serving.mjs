// Serving while training: one process runs trainer.train() on a ViT while a client predicts on
// another model at a steady rate (open loop: a request every 1/rate seconds, whether or not the
// previous one has its answer), as a server that also fine-tunes does:
//   node bench/serving.mjs [--train-model <dir with config.json>] [--serve-model <dir>] [--batch 32]
//                          [--steps 60] [--rate 4] [--idle-requests 50] [--data <Fashion-MNIST IDX dir>]
//                          [--json results.json]
// Both models get random weights (the work is the same). Three phases, in order: predicts alone,
// the training run alone, both at once. Prints predict latency p50/p99 idle and while training,
// and the median seconds between training steps without and with the predicts.
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, HuggingFaceModelLoader, runtimeInfo } from '../dist/index.js';
import { median, option, quantile } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const trainDir = option(args, 'train-model', join(here, '..', 'config', 'models', 'vit-fashion-mnist'));
const serveDir = option(args, 'serve-model', join(here, '..', 'config', 'models', 'vit-fashion-mnist'));
const batch = Number(option(args, 'batch', '32'));
const steps = Number(option(args, 'steps', '60'));
const rate = Number(option(args, 'rate', '4'));
const idleRequests = Number(option(args, 'idle-requests', '50'));
const dataDir = option(args, 'data', '/usr/share/datasets/fashion-mnist');
const jsonPath = option(args, 'json', undefined);

const threads = runtimeInfo().computeThreads;
const trainConfig = { modelName: trainDir, modelType: /** @type {const} */ ('classification'), pretrained: false, numClasses: 10 };
const trained = await HuggingFaceModelLoader.loadModel(trainConfig, { seed: 0 });
const served = await HuggingFaceModelLoader.loadModel({ modelName: serveDir, modelType: 'classification', pretrained: false }, { seed: 0 });
// One native call per request: the latency measured is the request's own, not a batching window.
served.setBatching(false);
const photo = readFileSync(join(here, '..', 'test', 'fixtures', 'images', 'chelsea.png'));
const dataset = {
  format: /** @type {const} */ ('idx'),
  images: join(dataDir, 'train-images-idx3-ubyte.gz'),
  labels: join(dataDir, 'train-labels-idx1-ubyte.gz'),
  validationImages: join(dataDir, 't10k-images-idx3-ubyte.gz'),
  validationLabels: join(dataDir, 't10k-labels-idx1-ubyte.gz'),
  limit: batch * steps,
};

/**
 * Requests at `rate` per second until `until` settles (or `count` were sent); their latencies in ms.
 * @param {{ until?: Promise<unknown>, count?: number }} options
 */
async function serve({ until, count }) {
  const latencies = [];
  const pending = [];
  let sent = 0;
  let finished = false;
  until?.then(() => (finished = true));
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      if (finished || (count !== undefined && sent >= count)) {
        clearInterval(timer);
        resolve(undefined);
        return;
      }
      sent++;
      const start = performance.now();
      pending.push(served.predict(photo).then(() => latencies.push(performance.now() - start)));
    }, 1000 / rate);
  });
  await Promise.all(pending);
  return latencies;
}

/**
 * One training run; the seconds between consecutive step events (a step, and what ran after it).
 * @param {(step: number) => void} [onStep]
 */
async function train(onStep) {
  const trainer = new BaseTrainer({ model: trained, modelConfig: trainConfig });
  const elapsed = [];
  await trainer.train(
    { maxSteps: steps, batchSize: batch, learningRate: 1e-3, evalEvery: 0, outputDir: join(tmpdir(), 'visiontorch-bench-serving'), dataset },
    {
      onProgress: (e) => {
        if (e.kind !== 'step') return;
        elapsed.push(e.elapsedSeconds);
        onStep?.(e.step);
      },
    },
  );
  return elapsed.slice(1).map((t, i) => t - elapsed[i]);
}

// Warm-up: first calls build caches and packed weights.
await served.predict(photo);
console.error('predicts alone');
const idle = await serve({ count: idleRequests });
console.error('training alone');
const alone = await train();
console.error('both');
// Requests from the first step event to the last: opening the dataset before the first step, and
// the final evaluation and saves after the last, are phases with no step boundary to serve at.
let firstStep;
let lastStep;
const started = new Promise((resolve) => (firstStep = resolve));
const ended = new Promise((resolve) => (lastStep = resolve));
const training = train((step) => {
  if (step === 1) firstStep(undefined);
  if (step === steps) lastStep(undefined);
});
await Promise.race([started, training]);
const during = await serve({ until: Promise.race([ended, training]) });
const shared = await training;

const summary = (latencies) => ({ count: latencies.length, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) });
const result = {
  benchmark: 'predict while training',
  trainModel: trainDir.split('/').slice(-1)[0],
  serveModel: serveDir.split('/').slice(-1)[0],
  batch,
  steps,
  rate,
  threads,
  predictIdleMs: summary(idle),
  predictWhileTrainingMs: summary(during),
  stepSecondsAlone: { median: median(alone), max: Math.max(...alone) },
  stepSecondsWhileServing: { median: median(shared), max: Math.max(...shared) },
};
console.log(`${result.trainModel} train() (batch ${batch}, ${steps} steps) with ${result.serveModel} predict at ${rate}/s, ${threads} threads`);
console.log('| | predict p50 | predict p99 | requests | training step median | longest step |');
console.log('|---|---|---|---|---|---|');
const ms = (value) => `${value.toFixed(0)} ms`;
console.log(`| idle | ${ms(result.predictIdleMs.p50)} | ${ms(result.predictIdleMs.p99)} | ${idle.length} | | |`);
const sec = ({ median, max }) => `${median.toFixed(3)} s | ${max.toFixed(3)} s`;
console.log(`| training alone | | | | ${sec(result.stepSecondsAlone)} |`);
console.log(
  `| while training | ${ms(result.predictWhileTrainingMs.p50)} | ${ms(result.predictWhileTrainingMs.p99)} | ${during.length} | ${sec(result.stepSecondsWhileServing)} |`,
);
trained.dispose();
served.dispose();
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
