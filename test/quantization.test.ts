import { afterAll, describe, expect, it } from 'vitest';
import {
  BaseTrainer,
  ConfigError,
  ErrorCode,
  HuggingFaceModelLoader,
  type ModelType,
  type Tensor,
  toFloat32,
  type VisionModel,
} from '../src/index.js';
import { expectError, fixture, reference } from './helpers.js';

const loaded: VisionModel[] = [];
afterAll(() => {
  for (const model of loaded) model.dispose();
});

async function load(name: string, modelType: ModelType, extra: Record<string, unknown> = {}): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName: fixture(name), modelType, ...extra });
  loaded.push(model);
  return model;
}

/** Largest |actual - expected| relative to the largest |expected|. */
function relativeError(actual: Tensor, expected: Tensor): number {
  const a = toFloat32(actual);
  const e = toFloat32(expected);
  let error = 0;
  let range = 0;
  for (let i = 0; i < e.length; i++) {
    error = Math.max(error, Math.abs((a[i] ?? Number.NaN) - (e[i] ?? 0)));
    range = Math.max(range, Math.abs(e[i] ?? 0));
  }
  return error / range;
}

/** Index of the largest value in each row of a [..., n] tensor. */
function argmaxRows(tensor: Tensor): number[] {
  const values = toFloat32(tensor);
  const n = tensor.shape.at(-1)!;
  const rows: number[] = [];
  for (let start = 0; start < values.length; start += n) {
    const row = values.subarray(start, start + n);
    rows.push(row.indexOf(Math.max(...row)));
  }
  return rows;
}

// The accuracy cost of int8 against transformers' float32 outputs on the fixtures. These models
// are tiny (hidden sizes 16 to 64), where one quantization step weighs most; the bound is the
// one the README states.
const INT8_RELATIVE_ERROR_BOUND = 0.05;

describe.each([
  { name: 'vit-tiny-random', modelType: 'classification' as const },
  { name: 'convnext-tiny-random', modelType: 'classification' as const },
  { name: 'segformer-tiny-random', modelType: 'segmentation' as const },
  { name: 'detr-tiny-random', modelType: 'object_detection' as const },
])('int8 dynamic quantization: $name', ({ name, modelType }) => {
  it(`logits stay within ${INT8_RELATIVE_ERROR_BOUND * 100}% of transformers' float32 ones`, async () => {
    const ref = await reference(name);
    const model = await load(name, modelType, { quantization: 'int8' });
    expect(model.quantization).toBe('int8');
    expect(model.dtype).toBe('float32');
    const inputs = { pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask };
    const outputs = await model.forward(inputs);
    const error = relativeError(outputs.logits!, ref.tensors.logits!);
    // The int8 path really ran: its error is quantization's (1e-3 and up here), far above the float32
    // model's own rounding error against the same reference (1e-7 to 1e-6).
    const float32 = await load(name, modelType);
    const float32Error = relativeError((await float32.forward(inputs)).logits!, ref.tensors.logits!);
    expect(error).toBeGreaterThan(100 * float32Error);
    expect(error).toBeLessThanOrEqual(INT8_RELATIVE_ERROR_BOUND);
    if (modelType === 'classification') expect(argmaxRows(outputs.logits!)).toEqual(argmaxRows(ref.tensors.logits!));
  });
});

describe('int8 quantization: where it does not apply', () => {
  it('is rejected in the config when unknown', async () => {
    const config = { modelName: fixture('vit-tiny-random'), modelType: 'classification', quantization: 'int4' };
    // @ts-expect-error: a JavaScript caller's mistake (no such quantization), refused at run time too
    const error = await expectError(HuggingFaceModelLoader.loadModel(config), ErrorCode.CONFIG, 'quantization', '"int4"');
    expect(error).toBeInstanceOf(ConfigError);
  });

  it('needs float32', async () => {
    await expectError(
      load('vit-tiny-random', 'classification', { quantization: 'int8', dtype: 'bfloat16' }),
      ErrorCode.INVALID_ARGUMENT,
      'int8',
      'bfloat16',
    );
  });

  it('is for inference: a trainer refuses the model', async () => {
    const model = await load('vit-tiny-random', 'classification', { quantization: 'int8' });
    const modelConfig = { modelName: fixture('vit-tiny-random'), modelType: 'classification' as const, pretrained: true };
    expectError(() => new BaseTrainer({ model, modelConfig }), ErrorCode.INVALID_ARGUMENT, 'int8');
  });
});
