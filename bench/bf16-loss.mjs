// Does bf16 autocast train like float32? A job (default config/model_config.yaml, npm start's)
// run for a few hundred steps twice from the same seed, once in float32 and once under bf16
// autocast, on the same batches:
//   node bench/bf16-loss.mjs [--config job.yaml] [--steps 300] [--json out.json] [--png out.png]
// Prints the mean loss of each 25-step window for both and their largest relative difference.
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, HuggingFaceModelLoader, loadConfig } from '../dist/index.js';
import { Canvas, encodePng } from '../dist/render/canvas.js';
import { option } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const steps = Number(option(args, 'steps', '300'));
const window = 25;
const jsonPath = option(args, 'json', undefined);
const pngPath = option(args, 'png', undefined);

const configPath = option(args, 'config', join(here, '..', 'config', 'model_config.yaml'));
const config = await loadConfig(configPath);
const outputDir = await mkdtemp(join(tmpdir(), 'visiontorch-bf16-loss-'));

async function lossCurve(mixedPrecision) {
  const model = await HuggingFaceModelLoader.loadModel(config.model, { seed: config.training.seed });
  const training = { ...config.training, mixedPrecision, maxSteps: steps, evalEvery: 0, saveEvery: 0, outputDir: join(outputDir, mixedPrecision) };
  const trainer = new BaseTrainer({ model, modelConfig: config.model, ...training });
  const losses = [];
  const start = performance.now();
  await trainer.train(training, { onProgress: (event) => event.kind === 'step' && losses.push(event.loss) });
  const seconds = (performance.now() - start) / 1000;
  model.dispose();
  return { losses, seconds };
}

const fp32 = await lossCurve('no');
const bf16 = await lossCurve('bf16');
await rm(outputDir, { recursive: true, force: true });

const windowMeans = (losses) =>
  Array.from(
    { length: Math.floor(losses.length / window) },
    (_, i) => losses.slice(i * window, (i + 1) * window).reduce((a, b) => a + b, 0) / window,
  );
const fp32Means = windowMeans(fp32.losses);
const bf16Means = windowMeans(bf16.losses);
const largestRelativeDifference = Math.max(...fp32Means.map((loss, i) => Math.abs(bf16Means[i] - loss) / loss));

console.log(`| steps | float32 loss | bf16 autocast loss |`);
console.log(`|---|---|---|`);
for (const [i, loss] of fp32Means.entries()) {
  console.log(`| ${i * window + 1}-${(i + 1) * window} | ${loss.toFixed(4)} | ${bf16Means[i].toFixed(4)} |`);
}
console.log(`largest relative difference of ${window}-step means: ${(largestRelativeDifference * 100).toFixed(2)}%`);
console.log(`time: float32 ${fp32.seconds.toFixed(0)} s, bf16 ${bf16.seconds.toFixed(0)} s`);

if (jsonPath) {
  writeFileSync(
    jsonPath,
    `${JSON.stringify({ benchmark: 'bf16 autocast loss against float32', config: configPath, steps, window, fp32, bf16, largestRelativeDifference }, null, 2)}\n`,
  );
}
if (pngPath) {
  // Both curves, per-step losses, float32 in blue and bf16 in orange.
  const width = 800,
    height = 400,
    margin = 40;
  const canvas = new Canvas(width, height);
  const all = [...fp32.losses, ...bf16.losses].filter(Number.isFinite);
  const top = Math.max(...all),
    bottom = Math.min(...all);
  const x = (i) => margin + ((width - 2 * margin) * i) / Math.max(1, steps - 1);
  const y = (loss) => height - margin - ((height - 2 * margin) * (loss - bottom)) / (top - bottom || 1);
  canvas.line(margin, height - margin, width - margin, height - margin, [0, 0, 0], 1);
  canvas.line(margin, margin, margin, height - margin, [0, 0, 0], 1);
  /** @type {[number[], [number, number, number]][]} */
  const curves = [
    [fp32.losses, [31, 119, 180]],
    [bf16.losses, [255, 127, 14]],
  ];
  for (const [losses, colour] of curves) {
    for (let i = 1; i < losses.length; i++) canvas.line(x(i - 1), y(losses[i - 1]), x(i), y(losses[i]), colour, 1);
  }
  canvas.text(margin + 10, 10, `loss: float32 (blue), bf16 (orange)`, [0, 0, 0]);
  writeFileSync(pngPath, encodePng(width, height, canvas.pixels));
}
