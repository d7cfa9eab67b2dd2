import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, ErrorCode, HuggingFaceModelLoader, type ModelConfig, type Tensor, type TrainerEvent, type VisionModel } from '../src/index.js';
import { expectClose, expectError, FIXTURE_OPTIMIZER, fashionDataset, fixture, reference, repoRoot, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

// Seeded: models initialised at random start the same in every run, whatever ran before.
async function load(config: Partial<ModelConfig> & { modelName: string }): Promise<{ model: VisionModel; modelConfig: ModelConfig }> {
  const modelConfig = { modelType: 'classification', pretrained: true, ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 7 });
  models.push(model);
  return { model, modelConfig };
}

const FASHION = fashionDataset(0).images;
const smallVit = { modelName: join(repoRoot, 'config', 'models', 'vit-fashion-mnist'), pretrained: false, numClasses: 10 };

describe('BaseTrainer.trainingStep parity with transformers (vit-tiny-random)', () => {
  it('loss, every gradient, and the weights after one and two AdamW steps', async () => {
    const ref = await reference('vit-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };

    const step1 = await trainer.trainingStep(batch, { returnGradients: true });
    expect(step1.loss).toBeCloseTo(Number((ref.tensors.loss!.data as Float32Array)[0]), 5);
    const grads = Object.keys(ref.tensors).filter((k) => k.startsWith('grad.'));
    expect(Object.keys(step1.gradients!).sort()).toEqual(grads.map((k) => k.slice(5)).sort());
    for (const key of grads) expectClose(step1.gradients![key.slice(5)], ref.tensors[key], ref.tolerance('grad'), key);
    const after1 = await model.stateDict();
    for (const [key, value] of Object.entries(after1))
      expectClose(value, ref.tensors[`after_step1.${key}`], ref.tolerance('after_step1'), `after_step1.${key}`);

    const step2 = await trainer.trainingStep(batch);
    expect(step2.gradients).toBeUndefined();
    expect(Math.abs(step2.loss - Number((ref.tensors.loss_step2!.data as Float32Array)[0]))).toBeLessThan(1e-5 + 1e-4 * step2.loss);
    const after2 = await model.stateDict();
    for (const [key, value] of Object.entries(after2))
      expectClose(value, ref.tensors[`after_step2.${key}`], ref.tolerance('after_step2'), `after_step2.${key}`);
  });

  it('gradient checkpointing gives the same loss and gradients', async () => {
    const ref = await reference('vit-tiny-random');
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };
    const plain = await load({ modelName: fixture('vit-tiny-random') });
    const checkpointed = await load({ modelName: fixture('vit-tiny-random'), gradientCheckpointing: true });
    const a = await new BaseTrainer({ ...plain, ...FIXTURE_OPTIMIZER }).trainingStep(batch, { returnGradients: true });
    const b = await new BaseTrainer({ ...checkpointed, ...FIXTURE_OPTIMIZER }).trainingStep(batch, { returnGradients: true });
    expect(b.loss).toBe(a.loss);
    for (const [key, grad] of Object.entries(a.gradients!)) expectClose(b.gradients![key], grad, { atol: 1e-6, rtol: 1e-5 }, key);
  });

  it('bf16 autocast follows the float32 loss', async () => {
    const ref = await reference('vit-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const step = await new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, mixedPrecision: 'bf16' }).trainingStep({
      pixelValues: ref.tensors.pixel_values!,
      labels: ref.tensors.labels!,
    });
    expect(Math.abs(step.loss - Number((ref.tensors.loss!.data as Float32Array)[0]))).toBeLessThan(0.02);
  });

  it('clips gradients to maxGradNorm and reports the norm before clipping', async () => {
    const ref = await reference('vit-tiny-random');
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const step = await new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, maxGradNorm: 1e-3 }).trainingStep(batch, {
      returnGradients: true,
    });
    let sum = 0;
    for (const g of Object.values(step.gradients!)) for (const v of g.data as Float32Array) sum += v * v;
    expect(step.gradNorm).toBeCloseTo(Math.sqrt(sum), 4);
    expect(step.gradNorm).toBeGreaterThan(1e-3);
  });

  it('rejects bad batches and schedules that need a run length', async () => {
    const ref = await reference('vit-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 1e-3, lrScheduler: 'linear' });
    await expectError(
      trainer.trainingStep({ pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! }),
      ErrorCode.INVALID_ARGUMENT,
      'linear',
      'max_steps',
    );
    expectError(() => new BaseTrainer({ model, modelConfig, learningRate: -1 }), ErrorCode.CONFIG, 'learningRate');
    const constant = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const bad = { ...ref.tensors.labels!, data: new BigInt64Array([0n, 7n]) } as Tensor;
    await expectError(constant.trainingStep({ pixelValues: ref.tensors.pixel_values!, labels: bad }), ErrorCode.INVALID_ARGUMENT, 'class index 7');
  });
});

describe.skipIf(!existsSync(FASHION))('BaseTrainer.train on Fashion-MNIST (real images)', () => {
  it('drives the loss down and the accuracy up, and writes its record', async () => {
    const { model, modelConfig } = await load(smallVit);
    const outputDir = join(tempDir(), 'run');
    const trainer = new BaseTrainer({ model, modelConfig });
    const events: TrainerEvent[] = [];
    const before = await trainer.evaluate({ ...fashionDataset(2000) });
    const result = await trainer.train(
      {
        epochs: 2,
        batchSize: 32,
        learningRate: 2e-3,
        lrScheduler: 'cosine',
        warmupRatio: 0.05,
        weightDecay: 0.05,
        outputDir,
        dataset: fashionDataset(2000),
        seed: 1,
      },
      { onProgress: (e) => events.push(e) },
    );
    const steps = events.filter((e) => e.kind === 'step');
    expect(steps.length).toBe(result.globalStep);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const losses = steps.map((e) => (e.kind === 'step' ? e.loss : 0));
    expect(mean(losses.slice(-20))).toBeLessThan(mean(losses.slice(0, 20)) * 0.8);
    expect(result.metrics.eval_accuracy).toBeGreaterThan(before.eval_accuracy! + 0.15);
    expect(result.metrics.eval_accuracy).toBeGreaterThan(0.3);
    expect(events.filter((e) => e.kind === 'eval')).toHaveLength(2);
    for (const file of ['config.json', 'model.safetensors', 'preprocessor_config.json', 'metrics.jsonl', 'training_chart.png']) {
      expect(existsSync(join(outputDir, file)), file).toBe(true);
    }
    const saved = JSON.parse(readFileSync(join(outputDir, 'config.json'), 'utf8'));
    expect(saved.id2label['9']).toBe('Ankle boot');
    const lines = readFileSync(join(outputDir, 'metrics.jsonl'), 'utf8').trim().split('\n');
    expect(lines.length).toBe(events.length);
  });

  it('resumes exactly: the losses after resuming equal those of an uninterrupted run', async () => {
    const config = {
      epochs: 2,
      batchSize: 16,
      learningRate: 1e-3,
      saveEvery: 5,
      dataset: { ...fashionDataset(96), augment: { randomResizedCrop: { scale: [0.6, 1] as [number, number] }, horizontalFlip: true } },
      seed: 3,
    };
    const full = await load(smallVit);
    const outputDir = join(tempDir(), 'run');
    const fullLosses: number[] = [];
    await new BaseTrainer({ ...full }).train({ ...config, outputDir }, { onProgress: (e) => e.kind === 'step' && fullLosses.push(e.loss) });
    expect(fullLosses).toHaveLength(12);

    const resumed = await load(smallVit);
    const resumedLosses: number[] = [];
    const result = await new BaseTrainer({ ...resumed }).train(
      { ...config, outputDir: join(tempDir(), 'resumed'), resumeFrom: join(outputDir, 'checkpoint-5') },
      { onProgress: (e) => e.kind === 'step' && resumedLosses.push(e.loss) },
    );
    expect(result.globalStep).toBe(12);
    expect(resumedLosses).toEqual(fullLosses.slice(5));
    const [a, b] = [await full.model.stateDict(), await resumed.model.stateDict()];
    for (const key of Object.keys(a)) expect(b[key]!.data, key).toEqual(a[key]!.data);
  });

  it('an AbortSignal stops at the next step and leaves a valid checkpoint', async () => {
    const { model, modelConfig } = await load(smallVit);
    const outputDir = join(tempDir(), 'run');
    const controller = new AbortController();
    const result = await new BaseTrainer({ model, modelConfig }).train(
      { epochs: 1, batchSize: 16, learningRate: 1e-3, outputDir, dataset: fashionDataset(320) },
      { signal: controller.signal, onProgress: (e) => e.kind === 'step' && e.step === 3 && controller.abort() },
    );
    expect(result.aborted).toBe(true);
    expect(result.globalStep).toBeGreaterThanOrEqual(3);
    expect(result.globalStep).toBeLessThan(20);
    const resumed = await load(smallVit);
    const after = await new BaseTrainer({ ...resumed }).train({
      epochs: 1,
      batchSize: 16,
      learningRate: 1e-3,
      outputDir,
      resumeFrom: outputDir,
      dataset: fashionDataset(320),
    });
    expect(after.globalStep).toBe(20);
  });
});

describe.skipIf(!existsSync(FASHION))('BaseTrainer.train options', () => {
  it('gradient accumulation of 2 x 8 equals batches of 16', async () => {
    // Both runs start from the same weights and see the same samples in the same order.
    const init = join(tempDir(), 'init');
    await (await load(smallVit)).model.save(init);
    const dataset = { ...fashionDataset(64), validationImages: undefined, validationLabels: undefined, validationSplit: 0 };
    const run = async (batchSize: number, gradientAccumulationSteps: number) => {
      const { model, modelConfig } = await load({ modelName: init });
      const losses: number[] = [];
      const config = {
        maxSteps: 3,
        batchSize,
        gradientAccumulationSteps,
        learningRate: 1e-3,
        lrScheduler: 'constant' as const,
        outputDir: join(tempDir(), 'run'),
        dataset,
      };
      await new BaseTrainer({ model, modelConfig }).train(config, { onProgress: (e) => e.kind === 'step' && losses.push(e.loss) });
      return { losses, state: await model.stateDict() };
    };
    const whole = await run(16, 1);
    const accumulated = await run(8, 2);
    expect(whole.losses).toHaveLength(3);
    for (const [i, loss] of accumulated.losses.entries()) expect(loss).toBeCloseTo(whole.losses[i]!, 5);
    // AdamW divides each gradient by its own running magnitude: an element whose gradient is near
    // zero moves by a good part of lr either way, so the two summation orders may part by a few 1e-5.
    for (const [key, value] of Object.entries(whole.state)) expectClose(accumulated.state[key], value, { atol: 1e-4, rtol: 1e-4 }, key);
  });

  it('stops early when the metric stops improving, and trains with SGD', async () => {
    const { model, modelConfig } = await load(smallVit);
    const evals: number[] = [];
    const result = await new BaseTrainer({ model, modelConfig }).train(
      {
        epochs: 3,
        batchSize: 32,
        optimizer: 'sgd',
        learningRate: 1e-9,
        lrScheduler: 'constant',
        evalEvery: 2,
        earlyStoppingPatience: 2,
        earlyStoppingMetric: 'eval_accuracy',
        outputDir: join(tempDir(), 'run'),
        dataset: fashionDataset(320),
      },
      { onProgress: (e) => e.kind === 'eval' && evals.push(e.step) },
    );
    // A rate of 1e-9 changes nothing: the first evaluation sets the best, two more without gain stop the run.
    expect(result.stoppedEarly).toBe(true);
    expect(evals).toEqual([2, 4, 6]);
    expect(result.globalStep).toBe(6);
  });

  it('visiontorch train --json runs a YAML job and prints one JSON document', async () => {
    const dir = tempDir();
    const yaml = `model:\n  name: ${smallVit.modelName}\n  type: classification\n  pretrained: false\n  num_classes: 10\ntraining:\n  max_steps: 4\n  batch_size: 16\n  output_dir: ${join(dir, 'run')}\ndata:\n  format: idx\n  images: ${fashionDataset(64).images}\n  labels: ${fashionDataset(64).labels}\n  limit: 64\n`;
    writeFileSync(join(dir, 'job.yaml'), yaml);
    const { execFileSync } = await import('node:child_process');
    const out = execFileSync(process.execPath, [join(repoRoot, 'dist', 'cli', 'main.js'), 'train', join(dir, 'job.yaml'), '--json'], {
      encoding: 'utf8',
    });
    const result = JSON.parse(out);
    expect(result.globalStep).toBe(4);
    // 4 steps from random initialisation: any accuracy, but a fraction of the validation images.
    expect(result.metrics.eval_accuracy).toBeGreaterThanOrEqual(0);
    expect(result.metrics.eval_accuracy).toBeLessThanOrEqual(1);
    expect(existsSync(join(dir, 'run', 'checkpoint-4', 'trainer_state.json'))).toBe(true);
  });
});

describe('BaseTrainer.train errors', () => {
  function imageFolder(root: string, classes: Record<string, string[]>): void {
    for (const [name, files] of Object.entries(classes)) {
      mkdirSync(join(root, name), { recursive: true });
      for (const file of files)
        writeFileSync(join(root, name, file), file.startsWith('bad') ? Buffer.from('not an image at all') : readFileSync(fixture('images', file)));
    }
  }

  it('names bad dataset paths and empty datasets', async () => {
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const trainer = new BaseTrainer({ model, modelConfig });
    await expectError(
      trainer.train({ outputDir: tempDir(), dataset: { format: 'imagefolder', root: '/no/such/dir' } }),
      ErrorCode.DATASET,
      '/no/such/dir',
    );
    const empty = tempDir();
    await expectError(trainer.train({ outputDir: tempDir(), dataset: { format: 'imagefolder', root: empty } }), ErrorCode.DATASET, empty);
  });

  it('a class count that differs from the head says how to fix it', async () => {
    const root = tempDir();
    imageFolder(root, { cat: ['chelsea.png'], rocket: ['rocket.jpg'] });
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    await expectError(
      new BaseTrainer({ model, modelConfig }).train({ outputDir: tempDir(), dataset: { format: 'imagefolder', root, validationSplit: 0 } }),
      ErrorCode.DATASET,
      '5 labels',
      '2 classes',
      'num_classes: 2',
    );
  });

  it('a corrupt image fails the run naming the file, and earlier checkpoints survive', async () => {
    const root = tempDir();
    imageFolder(root, { cat: ['chelsea.png', 'bad.png'], rocket: ['rocket.jpg'] });
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random'), numClasses: 2, ignoreMismatchedSizes: true });
    const outputDir = tempDir();
    const previous = join(outputDir, 'checkpoint-1');
    mkdirSync(previous);
    writeFileSync(join(previous, 'trainer_state.json'), '{"kept": true}');
    await expectError(
      new BaseTrainer({ model, modelConfig }).train({ outputDir, batchSize: 1, dataset: { format: 'imagefolder', root, validationSplit: 0 } }),
      ErrorCode.DATASET,
      join(root, 'cat', 'bad.png'),
    );
    expect(readFileSync(join(previous, 'trainer_state.json'), 'utf8')).toBe('{"kept": true}');
    expect(readdirSync(outputDir).filter((f) => f.includes('.tmp'))).toEqual([]);
  });
});

describe.skipIf(!existsSync(FASHION))('checkpoints under a crash', () => {
  it('a process killed in the middle of a checkpoint save leaves the previous checkpoint valid', async () => {
    const outputDir = join(tempDir(), 'run');
    // A model big enough that saving it takes a while: the kill lands inside a save.
    const modelDir = tempDir();
    const config = JSON.parse(readFileSync(join(smallVit.modelName, 'config.json'), 'utf8'));
    writeFileSync(
      join(modelDir, 'config.json'),
      JSON.stringify({ ...config, hidden_size: 384, intermediate_size: 1536, num_hidden_layers: 6, num_attention_heads: 6 }),
    );
    writeFileSync(join(modelDir, 'preprocessor_config.json'), readFileSync(join(smallVit.modelName, 'preprocessor_config.json')));
    const script = `
      import { BaseTrainer, HuggingFaceModelLoader } from 'visiontorch';
      const modelConfig = { modelName: ${JSON.stringify(modelDir)}, modelType: 'classification', pretrained: false, numClasses: 10 };
      const model = await HuggingFaceModelLoader.loadModel(modelConfig);
      await new BaseTrainer({ model, modelConfig }).train({ epochs: 1, batchSize: 4, saveEvery: 1, learningRate: 1e-4, outputDir: ${JSON.stringify(outputDir)},
        dataset: ${JSON.stringify(fashionDataset(200))} });`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: repoRoot, stdio: 'ignore' });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    // Wait until a checkpoint exists and the next one is being written, then kill.
    const deadline = Date.now() + 60_000;
    let killedDuringSave = false;
    while (Date.now() < deadline) {
      const entries = existsSync(outputDir) ? readdirSync(outputDir) : [];
      if (entries.some((e) => /^checkpoint-\d+$/.test(e)) && entries.some((e) => e.includes('.saving-'))) {
        child.kill('SIGKILL');
        killedDuringSave = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 1));
    }
    await exited;
    expect(killedDuringSave).toBe(true);
    const checkpoints = readdirSync(outputDir).filter((e) => /^checkpoint-\d+$/.test(e));
    // saveEvery: 1, so every step up to the one killed in its save left its checkpoint, without a gap.
    const saved = checkpoints.map((name) => Number(name.split('-')[1])).sort((a, b) => a - b);
    expect(saved.length).toBeGreaterThanOrEqual(1);
    expect(saved).toEqual(Array.from({ length: saved.length }, (_, i) => i + 1));
    for (const name of checkpoints) {
      const dir = join(outputDir, name);
      const { model: reloaded } = await load({ modelName: dir });
      expect((await reloaded.stateDict())['classifier.weight']!.shape).toEqual([10, 384]);
      expect(JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).global_step).toBe(Number(name.split('-')[1]));
    }
  });
});
