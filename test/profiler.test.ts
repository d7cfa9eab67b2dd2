import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, HuggingFaceModelLoader, startProfiler, stopProfiler, tensor, type VisionModel } from '../src/index.js';
import { fixture } from './helpers.js';

// The operator profile (native/core/runtime/op_profile.h): what bench/training.mjs --profile
// splits into the README's categories.
const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

const configOf = (name: string) => ({ modelName: fixture(name), modelType: 'classification' as const, pretrained: false });

async function load(name: string): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel(configOf(name), { seed: 5 });
  models.push(model);
  return model;
}

function batchOf(model: VisionModel, size: number) {
  const pixelValues = tensor('float32', [2, 3, size, size]);
  for (let i = 0; i < pixelValues.data.length; i++) pixelValues.data[i] = Math.cos(i * 0.11);
  const labels = tensor('int64', [2], BigInt64Array.from([0n, BigInt(model.labels.length - 1)]));
  return { pixelValues, labels };
}

describe('startProfiler / stopProfiler', () => {
  it('times each phase of a training step and the operators inside it', async () => {
    const model = await load('vit-tiny-random');
    const trainer = new BaseTrainer({ model, modelConfig: configOf('vit-tiny-random'), learningRate: 1e-3, lrScheduler: 'constant', maxGradNorm: 1 });
    const batch = batchOf(model, 32);
    await trainer.trainingStep(batch);
    await startProfiler();
    await trainer.trainingStep(batch);
    await trainer.trainingStep(batch);
    const profile = await stopProfiler();

    const phases = new Set(profile.ops.map((op) => op.phase));
    for (const phase of ['data', 'forward', 'backward', 'clip', 'optimizer']) expect(phases).toContain(phase);
    const find = (phase: string, name: string) => profile.ops.find((op) => op.phase === phase && op.name === name);
    // Each phase's own record, once per step, holding everything timed inside it.
    for (const phase of ['forward', 'backward', 'optimizer']) expect(find(phase, phase)?.calls).toBe(2);
    expect(find('optimizer', 'visiontorch::adamw')?.calls).toBe(2);
    expect(find('clip', 'visiontorch::gradient_norm')?.calls).toBe(2);
    expect(profile.ops.some((op) => op.phase === 'forward' && op.name === 'aten::native_layer_norm')).toBe(true);
    expect(profile.ops.some((op) => op.phase === 'backward' && /Backward/.test(op.name))).toBe(true);

    let selfTotal = 0;
    for (const op of profile.ops) {
      expect(op.calls).toBeGreaterThan(0);
      expect(op.selfSeconds).toBeGreaterThanOrEqual(0);
      expect(op.selfSeconds).toBeLessThanOrEqual(op.totalSeconds + 1e-9);
      selfTotal += op.selfSeconds;
    }
    // Self times never overlap, so together they fit in the profile's wall time.
    expect(selfTotal).toBeLessThanOrEqual(profile.wallSeconds + 1e-6);
    const forward = find('forward', 'forward')!;
    const insideForward = profile.ops.filter((op) => op.phase === 'forward').reduce((sum, op) => sum + op.selfSeconds, 0);
    expect(insideForward).toBeCloseTo(forward.totalSeconds, 6);
    // Largest self time first.
    for (let i = 1; i < profile.ops.length; i++) expect(profile.ops[i]!.selfSeconds).toBeLessThanOrEqual(profile.ops[i - 1]!.selfSeconds);
  });

  it('times inference outside any phase, and nothing after it stops', async () => {
    const model = await load('resnet-tiny-random');
    const input = batchOf(model, 32).pixelValues;
    await model.forward({ pixelValues: input });
    await startProfiler();
    await model.forward({ pixelValues: input });
    const profile = await stopProfiler();
    expect(profile.ops.length).toBeGreaterThan(0);
    expect(profile.ops.every((op) => op.phase === '')).toBe(true);
    await model.forward({ pixelValues: input });
    await startProfiler();
    const empty = await stopProfiler();
    expect(empty.ops).toEqual([]);
  });

  it('runs one profile at a time, and stop needs a start', async () => {
    await startProfiler();
    await expect(startProfiler()).rejects.toThrow(/already running/);
    await stopProfiler();
    await expect(stopProfiler()).rejects.toMatchObject({
      message: expect.stringMatching(/no operator profile is running/),
      code: 'ERR_VISIONTORCH_INVALID_ARGUMENT',
    });
  });
});
