// Two builds of visiontorch side by side on one machine, in one run: inference (the models of
// bench/inference.mjs, random weights) and training steps (ViT-B/16 and ResNet-50 at batch 8,
// the small Fashion-MNIST ViT at batch 128), alternating between the builds round by round, so
// that a change can be shown not to slow any case down.
//   node bench/versions.mjs --package before/dist/index.js,after/dist/index.js
//                           [--model vit,resnet50,segformer,detr] [--batch 1,8] [--dtype float32,bfloat16]
//                           [--rounds 3] [--training true] [--json results.json]
// Prints, per case, the median seconds per call of each build and the ratio of speeds
// (second / first: above 1, the second build is faster).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median, option } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const packages = option(args, 'package', '').split(',').filter(Boolean);
if (packages.length !== 2) {
  console.error('bench/versions.mjs: --package takes two dist/index.js paths, comma-separated');
  process.exit(1);
}
const models = option(args, 'model', 'vit,resnet50,segformer,detr').split(',');
const batches = option(args, 'batch', '1,8').split(',').map(Number);
const dtypes = option(args, 'dtype', 'float32,bfloat16').split(',');
const rounds = Number(option(args, 'rounds', '3'));
const withTraining = option(args, 'training', 'true') === 'true';
const jsonPath = option(args, 'json', undefined);
const MODELS = JSON.parse(readFileSync(join(here, 'inference-models.json'), 'utf8'));

const builds = [];
for (const path of packages) builds.push({ path, visiontorch: await import(pathToFileURL(resolve(path)).href) });

function pixels(visiontorch, batch, channels, size) {
  const values = visiontorch.tensor('float32', [batch, channels, size, size]);
  for (let i = 0; i < values.data.length; i++) values.data[i] = Math.sin(i * 0.37);
  return values;
}

async function seconds(call, repeats) {
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    await call();
    times.push((performance.now() - start) / 1000);
  }
  return times;
}

/** Alternates the builds' `prepare`d calls for `rounds` rounds after a warm-up each. */
async function compare(name, prepare, repeats = 2) {
  const calls = [];
  for (const build of builds) calls.push(await prepare(build.visiontorch));
  for (const call of calls) await call.run();
  const samples = builds.map(() => []);
  for (let round = 0; round < rounds; round++) {
    for (const [i, call] of calls.entries()) samples[i].push(...(await seconds(call.run, repeats)));
  }
  for (const call of calls) call.dispose();
  const [before, after] = samples.map(median);
  const row = { case: name, seconds: [before, after], ratio: before / after };
  console.log(`${name.padEnd(44)} ${before.toFixed(4)} s  ${after.toFixed(4)} s  ${row.ratio.toFixed(3)}x`);
  return row;
}

const rows = [];
console.log(`${'case'.padEnd(44)} ${packages[0]}  ${packages[1]}  speed ratio`);
for (const key of models) {
  const spec = MODELS[key];
  for (const dtype of dtypes) {
    for (const batch of batches) {
      rows.push(
        await compare(`${spec.title} inference ${dtype} b${batch}`, async (visiontorch) => {
          const model = await visiontorch.HuggingFaceModelLoader.loadModel({
            modelName: join(here, spec.config),
            modelType: spec.modelType,
            pretrained: false,
            dtype,
          });
          const input = pixels(visiontorch, batch, 3, spec.imageSize);
          return { run: () => model.forward({ pixelValues: input }), dispose: () => model.dispose() };
        }),
      );
    }
  }
}

if (withTraining) {
  /** @type {[string, string, number, number, number][]} */
  const jobs = [
    ['ViT-B/16', join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'), 8, 224, 3],
    ['ResNet-50', join(here, '..', 'test', 'fixtures', 'configs', 'resnet-50'), 8, 224, 3],
    ['Fashion-MNIST ViT', join(here, '..', 'config', 'models', 'vit-fashion-mnist'), 128, 28, 1],
  ];
  for (const [title, dir, batch, size, channels] of jobs) {
    for (const precision of ['no', 'bf16']) {
      rows.push(
        await compare(`${title} training ${precision === 'no' ? 'fp32' : 'bf16'} b${batch}`, async (visiontorch) => {
          const modelConfig = { modelName: dir, modelType: 'classification', pretrained: false };
          const model = await visiontorch.HuggingFaceModelLoader.loadModel(modelConfig);
          const trainer = new visiontorch.BaseTrainer({ model, modelConfig, learningRate: 1e-4, lrScheduler: 'constant', mixedPrecision: precision });
          const labelCount = model.labels.length;
          const labels = visiontorch.tensor(
            'int64',
            [batch],
            BigInt64Array.from({ length: batch }, (_, i) => BigInt(i % labelCount)),
          );
          const input = pixels(visiontorch, batch, channels, size);
          return { run: () => trainer.trainingStep({ pixelValues: input, labels }), dispose: () => model.dispose() };
        }),
      );
    }
  }
}
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify({ packages, rows }, null, 2)}\n`);
