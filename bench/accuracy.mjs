// The accuracy cost of the fast paths: each fixture's logits in bfloat16 and with int8 dynamic
// quantization, against transformers' float32 reference outputs (test/fixtures/*/reference.*).
//   node bench/accuracy.mjs [--json results.json]
// Prints, per fixture and mode, the largest |error| relative to the largest |reference logit|,
// and whether every image's top class is unchanged (classification).
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HuggingFaceModelLoader, loadSafetensors, toFloat32 } from '../dist/index.js';
import { option } from './lib.mjs';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures');
const jsonPath = option(process.argv.slice(2), 'json', undefined);
const cases = /** @type {const} */ ([
  ['vit-tiny-random', 'classification'],
  ['resnet-tiny-random', 'classification'],
  ['convnext-tiny-random', 'classification'],
  ['segformer-tiny-random', 'segmentation'],
  ['detr-tiny-random', 'object_detection'],
]);
const modes = /** @type {const} */ ({ float32: {}, bfloat16: { dtype: 'bfloat16' }, int8: { quantization: 'int8' } });

function topClasses(values, classes) {
  const best = [];
  for (let start = 0; start < values.length; start += classes) {
    const row = values.subarray(start, start + classes);
    best.push(row.indexOf(Math.max(...row)));
  }
  return best;
}

const results = [];
console.log('| fixture | mode | max relative error | top class kept |');
console.log('|---|---|---|---|');
for (const [name, modelType] of cases) {
  const reference = await loadSafetensors(join(fixtures, name, 'reference.safetensors'));
  const expected = toFloat32(reference.logits);
  const range = expected.reduce((largest, value) => Math.max(largest, Math.abs(value)), 0);
  for (const [mode, extra] of Object.entries(modes)) {
    const model = await HuggingFaceModelLoader.loadModel({ modelName: join(fixtures, name), modelType, ...extra });
    const outputs = await model.forward({ pixelValues: reference.pixel_values, pixelMask: reference.pixel_mask });
    model.dispose();
    const actual = toFloat32(outputs.logits);
    const error = actual.reduce((largest, value, i) => Math.max(largest, Math.abs(value - expected[i])), 0) / range;
    const classes = reference.logits.shape.at(-1);
    const kept = modelType === 'classification' ? String(topClasses(actual, classes)) === String(topClasses(expected, classes)) : undefined;
    results.push({ fixture: name, mode, relativeError: error, topClassKept: kept });
    console.log(`| ${name} | ${mode} | ${error.toExponential(1)} | ${kept === undefined ? 'n/a' : kept ? 'yes' : 'no'} |`);
  }
}
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify({ benchmark: 'accuracy against transformers float32', results }, null, 2)}\n`);
