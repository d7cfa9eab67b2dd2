// Training throughput, visiontorch against PyTorch eager (Debian's python3-torch), same
// architecture, batch and precision, run alternately in one process tree:
//   node bench/training.mjs [--model <dir with config.json>] [--batch 8] [--precision fp32|bf16]
//                           [--rounds 5] [--steps 3] [--json results.json]
// A ViT config trains against the same ViT in plain torch.nn; a ResNet config (ResNet-50's
// depths) against torchvision's ResNet-50, at the config's image_size or 224.
// Prints the median seconds per optimizer step of each and the ratio of images/s.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, HuggingFaceModelLoader, runtimeInfo, tensor } from '../dist/index.js';
import { median, option, startPeer } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const modelDir = option(args, 'model', join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'));
const batch = Number(option(args, 'batch', '8'));
const precision = option(args, 'precision', 'fp32');
const rounds = Number(option(args, 'rounds', '5'));
const steps = Number(option(args, 'steps', '3'));
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
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
