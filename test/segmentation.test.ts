import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, decodeImage, HuggingFaceModelLoader, type ModelConfig, type SegmentationPrediction, type VisionModel } from '../src/index.js';
import { encodePng } from '../src/render/canvas.js';
import { expectClose, FIXTURE_OPTIMIZER, fixture, reference, repoRoot, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

async function load(config: Partial<ModelConfig> & { modelName: string }): Promise<{ model: VisionModel; modelConfig: ModelConfig }> {
  const modelConfig = { modelType: 'segmentation', ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 0 });
  models.push(model);
  return { model, modelConfig };
}

const scalar = (t: { data: unknown } | undefined) => Number((t!.data as Float32Array)[0]);

describe('SegFormer parity with transformers (segformer-tiny-random)', () => {
  it('logits and the preprocessing of both photos', async () => {
    const ref = await reference('segformer-tiny-random');
    const { model } = await load({ modelName: fixture('segformer-tiny-random') });
    expect(model.architecture).toBe('SegformerForSemanticSegmentation');
    const out = await model.forward({ pixelValues: ref.tensors.pixel_values! });
    expectClose(out.logits, ref.tensors.logits, ref.tolerance('logits'), 'logits');
    for (const image of ['chelsea.png', 'rocket.jpg']) {
      const { pixelValues } = await model.preprocess([fixture('images', image)]);
      expectClose(pixelValues, ref.tensors[`processed.${image}`], ref.tolerance('processed'), `processed ${image}`);
    }
  });

  it('loss, every gradient and the weights after one and two AdamW steps', async () => {
    const ref = await reference('segformer-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('segformer-tiny-random') });
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const step1 = await trainer.trainingStep(batch, { returnGradients: true });
    expect(Math.abs(step1.loss - scalar(ref.tensors.loss))).toBeLessThan(1e-5 + 1e-4 * step1.loss);
    const grads = Object.keys(ref.tensors).filter((k) => k.startsWith('grad.'));
    expect(Object.keys(step1.gradients!).sort()).toEqual(grads.map((k) => k.slice(5)).sort());
    for (const key of grads) expectClose(step1.gradients![key.slice(5)], ref.tensors[key], ref.tolerance('grad'), key);
    for (const [key, value] of Object.entries(await model.stateDict()))
      expectClose(value, ref.tensors[`after_step1.${key}`], ref.tolerance('after_step1'), `after_step1.${key}`);
    const step2 = await trainer.trainingStep(batch);
    expect(Math.abs(step2.loss - scalar(ref.tensors.loss_step2))).toBeLessThan(1e-5 + 1e-4 * step2.loss);
    for (const [key, value] of Object.entries(await model.stateDict()))
      expectClose(value, ref.tensors[`after_step2.${key}`], ref.tolerance('after_step2'), `after_step2.${key}`);
  });

  it('predict gives a label map at the original size with per-label pixel counts', async () => {
    const { model } = await load({ modelName: fixture('segformer-tiny-random') });
    const [prediction] = (await model.predict(fixture('images', 'chelsea.png'))) as SegmentationPrediction[];
    expect([prediction!.width, prediction!.height]).toEqual([451, 300]);
    expect(prediction!.labelMap).toHaveLength(451 * 300);
    expect(prediction!.segments.reduce((n, s) => n + s.pixels, 0)).toBe(451 * 300);
    for (const segment of prediction!.segments) expect(model.labels[segment.index]).toBe(segment.label);
  });
});

// The COCO photo's semantic mask holds category ids (0 background, 17 cat, 63 couch, 65 bed, 75 remote);
// the dataset gets them as class indices 0..4.
const COCO = fixture('coco-sample');
const CLASSES = { 0: 'background', 17: 'cat', 63: 'couch', 65: 'bed', 75: 'remote' } as Record<number, string>;

async function cocoMaskDataset(): Promise<string> {
  const root = tempDir();
  mkdirSync(join(root, 'images'));
  mkdirSync(join(root, 'masks'));
  const ids = Object.keys(CLASSES).map(Number);
  const mask = await decodeImage(join(COCO, '000000039769_mask.png'));
  const rgb = new Uint8Array(mask.width * mask.height * 3);
  for (let i = 0; i < mask.width * mask.height; i++) rgb.fill(ids.indexOf(mask.data[i * mask.channels]!), i * 3, i * 3 + 3);
  writeFileSync(join(root, 'masks', '000000039769.png'), encodePng(mask.width, mask.height, rgb));
  const { readFileSync } = await import('node:fs');
  writeFileSync(join(root, 'images', '000000039769.jpg'), readFileSync(join(COCO, '000000039769.jpg')));
  return root;
}

describe('SegFormer fine-tuning on a real image and mask', () => {
  it('drives the loss down and the mean IoU up, and draws the overlay', async () => {
    const root = await cocoMaskDataset();
    const dataset = { format: 'masks' as const, images: join(root, 'images'), masks: join(root, 'masks'), validationSplit: 0 };
    const { model, modelConfig } = await load({
      modelName: fixture('segformer-tiny-random'),
      numClasses: 5,
      id2label: Object.fromEntries(Object.values(CLASSES).map((name, i) => [i, name])),
      ignoreMismatchedSizes: true,
    });
    const trainer = new BaseTrainer({ model, modelConfig });
    const before = await trainer.evaluate(dataset);
    const losses: number[] = [];
    await trainer.train(
      { maxSteps: 150, batchSize: 1, learningRate: 3e-3, lrScheduler: 'constant', outputDir: join(tempDir(), 'run'), dataset, seed: 0 },
      { onProgress: (e) => e.kind === 'step' && losses.push(e.loss) },
    );
    const after = await trainer.evaluate(dataset);
    expect(losses.slice(-10).reduce((a, b) => a + b) / 10).toBeLessThan(losses[0]! * 0.5);
    expect(after.eval_mean_iou).toBeGreaterThan(before.eval_mean_iou! + 0.2);
    expect(after.eval_iou_cat).toBeGreaterThan(0.5);

    const out = join(tempDir(), 'overlay.png');
    const saved = join(tempDir(), 'model');
    await model.save(saved);
    const { execFileSync } = await import('node:child_process');
    execFileSync(process.execPath, [
      join(repoRoot, 'dist', 'cli', 'main.js'),
      'predict',
      '--model',
      saved,
      '--type',
      'segmentation',
      '--draw',
      out,
      join(COCO, '000000039769.jpg'),
    ]);
    const drawn = await decodeImage(out);
    expect([drawn.width, drawn.height]).toEqual([640, 480]);
  });
});

describe('SegFormer configurations beyond the fixture', () => {
  it.each([
    [
      'three stages, one channel, relu, reshape_last_stage false',
      {
        num_encoder_blocks: 3,
        depths: [1, 2, 1],
        sr_ratios: [4, 2, 1],
        hidden_sizes: [8, 16, 24],
        patch_sizes: [7, 3, 3],
        strides: [4, 2, 2],
        num_attention_heads: [1, 2, 2],
        mlp_ratios: [4, 2, 2],
        num_channels: 1,
        hidden_act: 'relu',
        reshape_last_stage: false,
        decoder_hidden_size: 12,
        drop_path_rate: 0.1,
      },
    ],
    ['one label (binary masks)', { id2label: { 0: 'foreground' }, decoder_hidden_size: 8 }],
  ] as [string, Record<string, unknown>][])('%s: random init, forward, training steps, save and reload', async (_, overrides) => {
    const dir = tempDir();
    const { readFileSync } = await import('node:fs');
    const base = JSON.parse(readFileSync(fixture('segformer-tiny-random', 'config.json'), 'utf8'));
    const config = { ...base, ...overrides };
    if (overrides.id2label) delete config.label2id;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const processor = JSON.parse(readFileSync(fixture('segformer-tiny-random', 'preprocessor_config.json'), 'utf8'));
    // ImageNet's per-channel mean and std do not fit one channel: such a model states its own.
    if (config.num_channels === 1) Object.assign(processor, { image_mean: [0.5], image_std: [0.25] });
    writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify(processor));
    const { model, modelConfig } = await load({ modelName: dir, pretrained: false });
    const { pixelValues } = await model.preprocess([fixture('images', 'chelsea.png'), fixture('images', 'rocket.jpg')]);
    expect(pixelValues.shape).toEqual([2, config.num_channels, 64, 64]);
    const numLabels = Object.keys(config.id2label).length;
    const out = await model.forward({ pixelValues });
    expect(out.logits!.shape).toEqual([2, numLabels, 16, 16]);
    const labels = {
      dtype: 'int64' as const,
      shape: [2, 64, 64],
      data: BigInt64Array.from({ length: 2 * 64 * 64 }, (_, i) => BigInt(i % 64 < 32 ? 0 : numLabels - 1)),
    };
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 3e-3, lrScheduler: 'constant' });
    const losses = [];
    for (let i = 0; i < 6; i++) losses.push((await trainer.trainingStep({ pixelValues, labels })).loss);
    expect(losses[5]).toBeLessThan(losses[0]!);
    const saved = join(dir, 'saved');
    await model.save(saved);
    const { model: reloaded } = await load({ modelName: saved });
    expect((await reloaded.forward({ pixelValues })).logits!.data).toEqual((await model.forward({ pixelValues })).logits!.data);
  });
});
