// Micro-batching throughput: many concurrent callers, each predicting one image on one model (a
// server's requests), with batching on against one by one (batching off), alternately in one run:
//   node bench/batching.mjs [--model <dir with config.json>] [--type classification|object_detection|segmentation]
//                           [--callers 64] [--max-batch-size 16] [--max-wait-ms 5] [--rounds 3]
//                           [--dtype float32|bfloat16] [--json [results.json]]
// The model gets random weights (the work is the same). Prints the median images/s of each mode
// and their ratio; --json prints one JSON document instead, or writes it to the file named.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HuggingFaceModelLoader, runtimeInfo } from '../dist/index.js';
import { median, option } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const modelDir = option(args, 'model', join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'));
const modelType = option(args, 'type', 'classification');
const callers = Number(option(args, 'callers', '64'));
const maxBatchSize = Number(option(args, 'max-batch-size', '16'));
const maxWaitMs = Number(option(args, 'max-wait-ms', '5'));
const rounds = Number(option(args, 'rounds', '3'));
const dtype = option(args, 'dtype', 'float32');
const jsonIndex = args.indexOf('--json');
const json = jsonIndex >= 0;
const jsonPath = json && args[jsonIndex + 1] && !args[jsonIndex + 1].startsWith('--') ? args[jsonIndex + 1] : undefined;
const log = (line) => (json ? process.stderr : process.stdout).write(`${line}\n`);

const model = await HuggingFaceModelLoader.loadModel({ modelName: modelDir, modelType, pretrained: false, dtype }, { seed: 0 });
// Encoded photos, as a server receives them: every call decodes and preprocesses its own image.
const fixtures = join(here, '..', 'test', 'fixtures');
const photos = [
  join(fixtures, 'images', 'rocket.jpg'),
  join(fixtures, 'images', 'chelsea.png'),
  join(fixtures, 'coco-sample', '000000039769.jpg'),
].map((path) => readFileSync(path));
const batching = { maxBatchSize, maxWaitMs };

/** Every caller predicts one image at once; seconds until the last one has its answer. */
async function round(mode) {
  model.setBatching(mode === 'batched' ? batching : false);
  const before = model.batchingStats.batches;
  const start = performance.now();
  await Promise.all(Array.from({ length: callers }, (_, i) => model.predict(photos[i % photos.length])));
  const seconds = (performance.now() - start) / 1000;
  return { seconds, calls: mode === 'batched' ? model.batchingStats.batches - before : callers };
}

// Warm-up: first calls allocate, and the largest batch size has its own first call.
model.setBatching(false);
await model.predict(photos[0]);
await model.predict(Array.from({ length: Math.min(maxBatchSize, callers) }, (_, i) => photos[i % photos.length]));

const seconds = { oneByOne: [], batched: [] };
const nativeCalls = { oneByOne: [], batched: [] };
for (let r = 0; r < rounds; r++) {
  // Alternating the order cancels a drift in the machine's speed between the two modes.
  const order = r % 2 === 0 ? ['oneByOne', 'batched'] : ['batched', 'oneByOne'];
  for (const mode of order) {
    const { seconds: s, calls } = await round(mode);
    seconds[mode].push(s);
    nativeCalls[mode].push(calls);
    log(`round ${r + 1} ${mode}: ${(callers / s).toFixed(2)} images/s (${calls} native calls)`);
  }
}

const imagesPerSecond = (mode) => callers / median(seconds[mode]);
const result = {
  benchmark: 'concurrent predict calls, micro-batching against one by one',
  model: modelDir.split(/[\\/]/).filter(Boolean).slice(-1)[0],
  modelType,
  dtype,
  callers,
  batching,
  rounds,
  computeThreads: runtimeInfo().computeThreads,
  oneByOne: { imagesPerSecond: imagesPerSecond('oneByOne'), secondsPerRound: seconds.oneByOne },
  batched: {
    imagesPerSecond: imagesPerSecond('batched'),
    secondsPerRound: seconds.batched,
    nativeCallsPerRound: nativeCalls.batched,
  },
};
result.speedup = result.batched.imagesPerSecond / result.oneByOne.imagesPerSecond;
model.dispose();

if (json && !jsonPath) {
  console.log(JSON.stringify(result, null, 2));
} else {
  log(
    `${result.model}, ${callers} concurrent callers, one image each, ${dtype}: one by one ${result.oneByOne.imagesPerSecond.toFixed(2)} images/s, ` +
      `batched (max ${maxBatchSize}, wait ${maxWaitMs} ms) ${result.batched.imagesPerSecond.toFixed(2)} images/s, ${result.speedup.toFixed(2)}x`,
  );
  if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
}
