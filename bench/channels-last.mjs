// Channels-last (NHWC) against contiguous (NCHW) layout for the convolutional models, the same
// model and input alternately in one run:
//   node bench/channels-last.mjs [--model <config dir>] [--batch 8] [--dtype float32|bfloat16] [--rounds 3]
// Prints the median seconds per forward pass of each layout and the speed-up.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HuggingFaceModelLoader, tensor } from '../dist/index.js';
import { median, option } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const modelDir = option(args, 'model', join(here, '..', 'test', 'fixtures', 'configs', 'resnet-50'));
const batch = Number(option(args, 'batch', '8'));
const dtype = option(args, 'dtype', 'float32');
const rounds = Number(option(args, 'rounds', '3'));
const jsonPath = option(args, 'json', undefined);

// The command line's dtype, checked by loadModel at run time.
const modelConfig = /** @type {import('visiontorch').LoadableConfig} */ ({
  modelName: modelDir,
  modelType: 'classification',
  pretrained: false,
  dtype,
});
const layouts = /** @type {const} */ (['contiguous', 'channels_last']);
const models = {};
for (const memoryFormat of layouts) models[memoryFormat] = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 0, memoryFormat });
const size = Number(models.contiguous.processorConfig.crop_size?.height ?? models.contiguous.processorConfig.size?.shortest_edge ?? 224);
const pixels = tensor('float32', [batch, 3, size, size]);
for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.13);

const seconds = { contiguous: [], channels_last: [] };
for (const memoryFormat of layouts) await models[memoryFormat].forward({ pixelValues: pixels }); // warm-up
for (let round = 0; round < rounds; round++) {
  for (const memoryFormat of layouts) {
    const start = performance.now();
    await models[memoryFormat].forward({ pixelValues: pixels });
    seconds[memoryFormat].push((performance.now() - start) / 1000);
  }
}
const result = {
  benchmark: 'forward pass by memory format',
  model: modelDir.split('/').slice(-1)[0],
  batch,
  dtype,
  contiguous: { secondsPerBatch: median(seconds.contiguous), imagesPerSecond: batch / median(seconds.contiguous) },
  channelsLast: { secondsPerBatch: median(seconds.channels_last), imagesPerSecond: batch / median(seconds.channels_last) },
};
result.speedup = result.contiguous.secondsPerBatch / result.channelsLast.secondsPerBatch;
console.log(
  `${result.model} forward, batch ${batch}, ${dtype}: contiguous ${result.contiguous.imagesPerSecond.toFixed(2)} img/s, ` +
    `channels-last ${result.channelsLast.imagesPerSecond.toFixed(2)} img/s, ${result.speedup.toFixed(2)}x`,
);
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
for (const model of Object.values(models)) model.dispose();
