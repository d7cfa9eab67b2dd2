// Training throughput, visiontorch against PyTorch eager (Debian's python3-torch), same
// architecture, batch and precision, run alternately in one process tree:
//   node bench/training.mjs [--model <dir with config.json>] [--batch 8] [--precision fp32|bf16]
//                           [--rounds 5] [--steps 3] [--profile 0] [--json results.json]
// A ViT config trains against the same ViT in plain torch.nn; a ResNet config (ResNet-50's
// depths) against torchvision's ResNet-50, at the config's image_size or 224.
// Prints the median seconds per optimizer step of each and the ratio of images/s. --profile N then
// profiles N more steps of each (visiontorch's startProfiler/stopProfiler, torch.profiler in the
// peer) and prints where a step's time goes, by category (bench/profile-categories.mjs).
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, HuggingFaceModelLoader, runtimeInfo, startProfiler, stopProfiler, tensor } from '../dist/index.js';
import { median, option, startPeer } from './lib.mjs';
import { CATEGORIES, summarizeProfile } from './profile-categories.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const modelDir = option(args, 'model', join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'));
const batch = Number(option(args, 'batch', '8'));
const precision = option(args, 'precision', 'fp32');
const rounds = Number(option(args, 'rounds', '5'));
const steps = Number(option(args, 'steps', '3'));
const profileSteps = Number(option(args, 'profile', '0'));
const jsonPath = option(args, 'json', undefined);

const threads = runtimeInfo().computeThreads;
const modelConfig = { modelName: modelDir, modelType: /** @type {const} */ ('classification'), pretrained: false };
const model = await HuggingFaceModelLoader.loadModel(modelConfig);
const channels = Number(model.config.num_channels ?? 3);
const size = Number(model.config.image_size ?? 224);
const trainer = new BaseTrainer({
  model,
  modelConfig,
  learningRate: 1e-4,
  lrScheduler: 'constant',
  maxGradNorm: 1,
  mixedPrecision: precision === 'bf16' ? 'bf16' : 'no',
});
const pixels = tensor('float32', [batch, channels, size, size]);
for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.37);
const labels = tensor(
  'int64',
  [batch],
  BigInt64Array.from({ length: batch }, (_, i) => BigInt(i % model.labels.length)),
);

const peer = startPeer(join(here, 'peers', 'torch_vit.py'));
await peer.request({ op: 'setup', config: join(modelDir, 'config.json'), batch, precision, threads, image_size: size });

async function visiontorchSteps(count) {
  const seconds = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    await trainer.trainingStep({ pixelValues: pixels, labels });
    seconds.push((performance.now() - start) / 1000);
  }
  return seconds;
}

// Warm-up: first steps allocate optimizer state and caches on both sides.
await visiontorchSteps(1);
await peer.request({ op: 'train', steps: 1 });
const ours = [];
const theirs = [];
for (let round = 0; round < rounds; round++) {
  ours.push(...(await visiontorchSteps(steps)));
  theirs.push(...(await peer.request({ op: 'train', steps })).seconds);
}
let profiles;
if (profileSteps > 0) {
  await startProfiler();
  await visiontorchSteps(profileSteps);
  const visiontorchProfile = summarizeProfile(await stopProfiler(), profileSteps);
  const { profile } = await peer.request({ op: 'train', steps: profileSteps, profile: true });
  profiles = { visiontorch: visiontorchProfile, pytorch: summarizeProfile(profile, profileSteps) };
}
peer.close();
model.dispose();

const result = {
  benchmark: 'training step (AdamW, clip 1.0)',
  model: modelDir.split('/').slice(-1)[0],
  batch,
  precision,
  threads,
  visiontorch: { secondsPerStep: median(ours), imagesPerSecond: batch / median(ours) },
  pytorch: { secondsPerStep: median(theirs), imagesPerSecond: batch / median(theirs) },
};
result.ratio = result.visiontorch.imagesPerSecond / result.pytorch.imagesPerSecond;
console.log(
  `${result.model} training, batch ${batch}, ${precision}, ${threads} threads: ` +
    `visiontorch ${result.visiontorch.imagesPerSecond.toFixed(2)} img/s, PyTorch eager ${result.pytorch.imagesPerSecond.toFixed(2)} img/s, ratio ${result.ratio.toFixed(2)}x`,
);
if (profiles) {
  result.profile = profiles;
  const { visiontorch: ours, pytorch: theirs } = profiles;
  const cell = (summary, category) =>
    `${(summary.categories[category] * 1000).toFixed(0)} ms (${((100 * summary.categories[category]) / summary.secondsPerStep).toFixed(0)}%)`;
  console.log(`\nWhere a step's time goes (${profileSteps} profiled steps each, self time per step):`);
  console.log('| category | visiontorch | PyTorch eager |');
  console.log('|---|---|---|');
  for (const category of CATEGORIES) console.log(`| ${category} | ${cell(ours, category)} | ${cell(theirs, category)} |`);
  console.log(`| step | ${(ours.secondsPerStep * 1000).toFixed(0)} ms | ${(theirs.secondsPerStep * 1000).toFixed(0)} ms |`);
  for (const [runtime, summary] of Object.entries(profiles)) {
    console.log(`\n${runtime}, largest operators:`);
    for (const op of summary.largest) {
      console.log(`  ${(op.secondsPerStep * 1000).toFixed(1).padStart(8)} ms  ${op.category.padEnd(13)} ${op.phase.padEnd(9)} ${op.name}`);
    }
  }
}
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
