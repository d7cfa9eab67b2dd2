import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BaseTrainer,
  decodeImage,
  ErrorCode,
  HuggingFaceModelLoader,
  type ModelConfig,
  type SegmentationPrediction,
  type SegmentPrediction,
  type Tensor,
  type VisionModel,
} from '../src/index.js';
import { encodePng } from '../src/render/canvas.js';
import { expectClose, expectError, FIXTURE_OPTIMIZER, fixture, reference, repoRoot, tempDir } from './helpers.js';

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

const NAME = 'mask2former-tiny-random';
const scalar = (t: Tensor | undefined) => Number((t!.data as Float32Array)[0]);
const labelsOf = (tensors: Record<string, Tensor>) =>
  [0, 1].map((i) => ({ classLabels: tensors[`class_labels_${i}`]!, maskLabels: tensors[`mask_labels_${i}`]! }));

describe('Mask2Former: parity with transformers', () => {
  const OUTPUTS = { atol: 1e-4, rtol: 1e-4 };

  it('class and mask logits, and the preprocessing of both photos (resized to a multiple of 32, pixel mask)', async () => {
    const ref = await reference(NAME);
    // The fixture's config.json names no architecture: model_type and the task choose the class.
    const { model } = await load({ modelName: fixture(NAME) });
    expect(model.architecture).toBe('Mask2FormerForUniversalSegmentation');
    expect(model.labels).toEqual(['background', 'cat', 'rocket']);
    const out = await model.forward({ pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask! });
    expectClose(out.classQueriesLogits, ref.tensors.class_queries_logits, OUTPUTS, 'classQueriesLogits');
    expectClose(out.masksQueriesLogits, ref.tensors.masks_queries_logits, OUTPUTS, 'masksQueriesLogits');
    for (const image of ['chelsea.png', 'rocket.jpg']) {
      const { pixelValues, pixelMask } = await model.preprocess([fixture('images', image)]);
      expectClose(pixelValues, ref.tensors[`processed.${image}`], ref.tolerance('processed'), `processed ${image}`);
      expect(Array.from(pixelMask!.data as BigInt64Array)).toEqual(Array.from(ref.tensors[`processed_pixel_mask.${image}`]!.data as BigInt64Array));
    }
  });

  it("a seeded training step: the loss of transformers' sampled points, every gradient, and the weights after two AdamW steps", async () => {
    const ref = await reference(NAME);
    const { model, modelConfig } = await load({ modelName: fixture(NAME) });
    const batch = { pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask!, labels: labelsOf(ref.tensors) };
    // reference.json: torch.manual_seed(7892) right before the forward pass; the trainer seeds as it is created.
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, seed: 7892 });
    const step1 = await trainer.trainingStep(batch, { returnGradients: true });
    expect(Math.abs(step1.loss - scalar(ref.tensors.loss))).toBeLessThan(1e-5 + 1e-4 * Math.abs(scalar(ref.tensors.loss)));
    expect(Object.keys(step1.lossDict!)).toEqual(expect.arrayContaining(['loss_cross_entropy', 'loss_mask', 'loss_dice', 'loss_dice_0']));
    const grads = Object.keys(ref.tensors).filter((k) => k.startsWith('grad.'));
    expect(Object.keys(step1.gradients!).sort()).toEqual(grads.map((k) => k.slice(5)).sort());
    for (const key of grads) expectClose(step1.gradients![key.slice(5)], ref.tensors[key], ref.tolerance('grad'), key);
    const after1 = await model.stateDict();
    expect(Object.keys(after1).sort()).toEqual(
      Object.keys(ref.tensors)
        .filter((k) => k.startsWith('after_step1.'))
        .map((k) => k.slice(12))
        .sort(),
    );
    for (const [key, value] of Object.entries(after1))
      expectClose(value, ref.tensors[`after_step1.${key}`], ref.tolerance('after_step1'), `after_step1.${key}`);
    const step2 = await trainer.trainingStep(batch);
    expect(Math.abs(step2.loss - scalar(ref.tensors.loss_step2))).toBeLessThan(1e-5 + 1e-4 * Math.abs(step2.loss));
    for (const [key, value] of Object.entries(await model.stateDict()))
      expectClose(value, ref.tensors[`after_step2.${key}`], ref.tolerance('after_step2'), `after_step2.${key}`);
  });
});

describe('Mask2Former with gradient checkpointing', () => {
  it("recomputes the Swin backbone's blocks in backward: the seeded loss and every gradient stay transformers'", async () => {
    const ref = await reference(NAME);
    const { model, modelConfig } = await load({ modelName: fixture(NAME), gradientCheckpointing: true });
    const batch = { pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask!, labels: labelsOf(ref.tensors) };
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, seed: 7892 });
    const step = await trainer.trainingStep(batch, { returnGradients: true });
    expect(Math.abs(step.loss - scalar(ref.tensors.loss))).toBeLessThan(1e-5 + 1e-4 * Math.abs(scalar(ref.tensors.loss)));
    for (const key of Object.keys(ref.tensors).filter((k) => k.startsWith('grad.')))
      expectClose(step.gradients![key.slice(5)], ref.tensors[key], ref.tolerance('grad'), key);
  });
});

describe('Mask2Former predictions', () => {
  const PHOTOS = [fixture('images', 'chelsea.png'), fixture('images', 'rocket.jpg')];

  it('semantic: a label map at each original size; instance and panoptic: segment ids and their segments', async () => {
    const { model } = await load({ modelName: fixture(NAME) });
    const semantic = (await model.predict(PHOTOS)) as SegmentationPrediction[];
    expect([semantic[0]!.width, semantic[0]!.height]).toEqual([451, 300]);
    expect(semantic[0]!.labelMap.length).toBe(451 * 300);
    expect(semantic[0]!.segments.reduce((sum, s) => sum + s.pixels, 0)).toBe(451 * 300);

    for (const task of ['instance', 'panoptic'] as const) {
      const predictions = (await model.predict(PHOTOS, { task, threshold: 0.1, maskThreshold: 0.4, labelIdsToFuse: [0] })) as SegmentPrediction[];
      for (const [i, p] of predictions.entries()) {
        expect([p.width, p.height]).toEqual(i === 0 ? [451, 300] : [640, 427]);
        expect(p.segmentation.length).toBe(p.width * p.height);
        const counts = new Map<number, number>();
        for (const id of p.segmentation) counts.set(id, (counts.get(id) ?? 0) + 1);
        const ids = p.segments.map((s) => s.id);
        // As transformers' segments_info: one entry per query, so a fused (stuff) class may repeat its id.
        const things = p.segments.filter((s) => s.isThing).map((s) => s.id);
        expect(new Set(things).size, `${task}: segment ids of things are distinct`).toBe(things.length);
        for (const id of counts.keys()) if (id !== -1) expect(ids, `${task}: id ${id} in the map has a segment`).toContain(id);
        for (const s of p.segments) {
          expect(s.pixels).toBe(counts.get(s.id) ?? 0);
          expect(model.labels[s.index]).toBe(s.label);
          expect(s.score).toBeGreaterThanOrEqual(0);
          expect(s.score).toBeLessThanOrEqual(1);
          expect(s.isThing).toBe(task === 'instance' || s.index !== 0);
        }
      }
    }
  });

  it('bad options are named; instance and panoptic need a model that segments by mask queries', async () => {
    const { model } = await load({ modelName: fixture(NAME) });
    await expect(model.predict(PHOTOS[0]!, { task: 'boxes' as never })).rejects.toThrow(/task must be 'semantic', 'instance' or 'panoptic'/);
    await expect(model.predict(PHOTOS[0]!, { task: 'instance', maskThreshold: 2 })).rejects.toThrow(/maskThreshold must be between 0 and 1/);
    await expect(model.predict(PHOTOS[0]!, { task: 'panoptic', labelIdsToFuse: [-1] })).rejects.toThrow(/labelIdsToFuse/);
    const { model: segformer } = await load({ modelName: fixture('segformer-tiny-random') });
    await expectError(segformer.predict(PHOTOS[0]!, { task: 'instance' }), ErrorCode.INVALID_ARGUMENT, 'mask queries');
  });
});

describe('Mask2Former save and reload', () => {
  it("writes transformers' keys and config fields, and reloads with identical outputs", async () => {
    const ref = await reference(NAME);
    const { model } = await load({ modelName: fixture(NAME) });
    const dir = join(tempDir(), 'saved');
    await model.save(dir);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    const original = JSON.parse(readFileSync(fixture(NAME, 'config.json'), 'utf8'));
    expect(config.architectures).toEqual(['Mask2FormerForUniversalSegmentation']);
    for (const field of ['hidden_dim', 'num_queries', 'decoder_layers', 'feature_strides', 'train_num_points', 'no_object_weight'])
      expect(config[field], field).toEqual(original[field]);
    expect(config.backbone_config.model_type).toBe('swin');
    expect(config.backbone_config.out_features).toEqual(original.backbone_config.out_features);
    expect(existsSync(join(dir, 'preprocessor_config.json'))).toBe(true);
    const saved = Object.keys(await model.stateDict()).sort();
    expect(saved).toContain('criterion.empty_weight');
    const { model: reloaded } = await load({ modelName: dir });
    const inputs = { pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask! };
    const [a, b] = [await model.forward(inputs), await reloaded.forward(inputs)];
    expect(b.masksQueriesLogits!.data).toEqual(a.masksQueriesLogits!.data);
    expect(b.classQueriesLogits!.data).toEqual(a.classQueriesLogits!.data);
  });
});

describe('Mask2Former fine-tuning on a real COCO photo (instance masks from its polygons)', () => {
  it('drives the loss down and the predicted masks onto the annotated ones', async () => {
    const COCO = fixture('coco-sample');
    const dataset = { format: 'coco' as const, annotations: join(COCO, 'instances.json'), images: COCO, validationSplit: 0 };
    const { model, modelConfig } = await load({ modelName: fixture(NAME), numClasses: 4, ignoreMismatchedSizes: true });
    const trainer = new BaseTrainer({ model, modelConfig });
    const before = await trainer.evaluate(dataset);
    const losses: number[] = [];
    await trainer.train(
      {
        maxSteps: 120,
        batchSize: 1,
        learningRate: 1e-3,
        lrScheduler: 'constant',
        outputDir: join(tempDir(), 'run'),
        dataset,
        seed: 0,
      },
      { onProgress: (e) => e.kind === 'step' && losses.push(e.loss) },
    );
    expect(model.labels).toEqual(['cat', 'couch', 'bed', 'remote']);
    const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
    expect(mean(losses.slice(-10))).toBeLessThan(mean(losses.slice(0, 10)) * 0.6);
    const after = await trainer.evaluate(dataset);
    // Each annotated instance against the best mask of a query predicting its class: about 0.1
    // before, near 0.5 after 120 steps.
    expect(after.eval_mask_iou).toBeGreaterThan(before.eval_mask_iou! + 0.2);
    expect(after.eval_mask_iou).toBeGreaterThan(0.3);
    expect(after.eval_map).toBeGreaterThan(before.eval_map!);

    // The CLI: instance segments as JSON, and drawn on the photo.
    const saved = join(tempDir(), 'model');
    await model.save(saved);
    const drawnPath = join(tempDir(), 'segments.png');
    const photo = join(COCO, '000000039769.jpg');
    const cli = [join(repoRoot, 'dist', 'cli', 'main.js'), 'predict', '--model', saved, '--type', 'segmentation', '--task', 'instance'];
    const out = execFileSync(process.execPath, [...cli, '--threshold', '0.3', '--draw', drawnPath, '--json', photo], { encoding: 'utf8' });
    const [result] = JSON.parse(out);
    expect(result.predictions.segmentation).toHaveLength(640 * 480);
    expect(result.predictions.segments.length).toBeGreaterThan(0);
    for (const segment of result.predictions.segments) expect(['cat', 'couch', 'bed', 'remote']).toContain(segment.label);
    const [drawn, original] = [await decodeImage(drawnPath), await decodeImage(photo)];
    expect([drawn.width, drawn.height]).toEqual([640, 480]);
    expect(Buffer.compare(Buffer.from(drawn.data), Buffer.from(original.data))).not.toBe(0);
    expect(execFileSync(process.execPath, [...cli, photo], { encoding: 'utf8' })).toMatch(/#\d+ {2}\d\.\d{4} .*% {2}(cat|couch|bed|remote)/);
  });
});

describe('Mask2Former on COCO panoptic segments and on label maps', () => {
  const COCO = fixture('coco-sample');
  // The photo's semantic mask (COCO category ids per pixel) read as panoptic segments, one per category.
  const CATEGORIES = [
    { id: 17, name: 'cat', isthing: 1 },
    { id: 63, name: 'couch', isthing: 0 },
    { id: 65, name: 'bed', isthing: 0 },
    { id: 75, name: 'remote', isthing: 1 },
  ];

  async function train(dataset: Record<string, unknown>) {
    const { model, modelConfig } = await load({ modelName: fixture(NAME), numClasses: 4, ignoreMismatchedSizes: true });
    const trainer = new BaseTrainer({ model, modelConfig });
    const before = await trainer.evaluate(dataset as never);
    const options = { maxSteps: 120, batchSize: 1, learningRate: 1e-3, lrScheduler: 'constant' as const, seed: 0 };
    await trainer.train({ ...options, outputDir: join(tempDir(), 'run'), dataset: dataset as never });
    return { before, after: await trainer.evaluate(dataset as never), model };
  }

  it('panoptic: PQ, SQ and RQ for things and stuff rise from 0', async () => {
    const dir = tempDir();
    const mask = await decodeImage(join(COCO, '000000039769_mask.png'));
    const rgb = new Uint8Array(mask.width * mask.height * 3);
    const present = new Set<number>();
    for (let i = 0; i < mask.width * mask.height; i++) {
      const id = mask.data[i * mask.channels]!;
      rgb[i * 3] = id; // segment id = R + 256 G + 256^2 B
      if (id !== 0) present.add(id);
    }
    mkdirSync(join(dir, 'panoptic'));
    writeFileSync(join(dir, 'panoptic', '000000039769.png'), encodePng(mask.width, mask.height, rgb));
    const segments = [...present].map((id) => ({ id, category_id: id, iscrowd: 0 }));
    writeFileSync(
      join(dir, 'panoptic.json'),
      JSON.stringify({
        images: [{ id: 1, file_name: '000000039769.jpg', width: 640, height: 480 }],
        annotations: [{ image_id: 1, file_name: '000000039769.png', segments_info: segments }],
        categories: CATEGORIES,
      }),
    );
    const dataset = {
      format: 'coco_panoptic',
      annotations: join(dir, 'panoptic.json'),
      images: COCO,
      masks: join(dir, 'panoptic'),
      validationSplit: 0,
    };
    const { before, after, model } = await train(dataset);
    expect(model.labels).toEqual(['cat', 'couch', 'bed', 'remote']);
    expect(before.eval_pq).toBe(0);
    for (const key of ['eval_pq', 'eval_sq', 'eval_rq', 'eval_pq_th', 'eval_pq_st']) expect(after[key], key).toBeGreaterThan(0.2);
    expect(after.eval_loss).toBeLessThan(before.eval_loss! * 0.6);
  });

  it('label maps (format masks): one mask per class present, mean IoU rises', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'images'));
    mkdirSync(join(dir, 'masks'));
    copyFileSync(join(COCO, '000000039769.jpg'), join(dir, 'images', 'photo.jpg'));
    const mask = await decodeImage(join(COCO, '000000039769_mask.png'));
    const classOf = new Map(CATEGORIES.map((c, index) => [c.id, index]));
    const labels = new Uint8Array(mask.width * mask.height).map((_, i) => classOf.get(mask.data[i * mask.channels]!) ?? 255);
    writeFileSync(join(dir, 'masks', 'photo.png'), encodePng(mask.width, mask.height, labels, 1));
    const { before, after } = await train({ format: 'masks', images: join(dir, 'images'), masks: join(dir, 'masks'), validationSplit: 0 });
    expect(after.eval_mean_iou).toBeGreaterThan(before.eval_mean_iou! + 0.2);
  });
});

describe('Mask2Former configurations beyond the fixture', () => {
  it('pre-norm decoder, GELU, 4 queries, 3 decoder layers, no auxiliary loss, other point sampling and backbone: random init, training, save and reload', async () => {
    const ref = await reference(NAME);
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture(NAME, 'config.json'), 'utf8'));
    const config = {
      ...base,
      num_queries: 4,
      decoder_layers: 3,
      num_attention_heads: 4,
      mask_feature_size: 16,
      dim_feedforward: 24,
      encoder_layers: 2,
      encoder_feedforward_dim: 16,
      pre_norm: true,
      activation_function: 'gelu',
      use_auxiliary_loss: false,
      train_num_points: 32,
      oversample_ratio: 2,
      importance_sample_ratio: 0.5,
      class_weight: 1,
      mask_weight: 3,
      dice_weight: 2,
      no_object_weight: 0.2,
      id2label: { 0: 'a', 1: 'b', 2: 'c', 3: 'd', 4: 'e' },
      backbone_config: { ...base.backbone_config, embed_dim: 16, window_size: 3, depths: [1, 2, 1, 1], num_heads: [1, 2, 2, 4] },
    };
    delete config.label2id;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    writeFileSync(join(dir, 'preprocessor_config.json'), readFileSync(fixture(NAME, 'preprocessor_config.json')));
    const { model, modelConfig } = await load({ modelName: dir, pretrained: false });
    const inputs = { pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask! };
    const out = await model.forward(inputs);
    expect(out.classQueriesLogits!.shape).toEqual([2, 4, 6]);
    expect(out.masksQueriesLogits!.shape).toEqual([2, 4, 16, 16]);
    const labels = [0, 1].map((i) => ({
      classLabels: { ...ref.tensors[`class_labels_${i}`]!, data: (ref.tensors[`class_labels_${i}`]!.data as BigInt64Array).map((c) => c + 2n) },
      maskLabels: ref.tensors[`mask_labels_${i}`]!,
    }));
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, seed: 1 });
    const losses: number[] = [];
    let parts: Record<string, number> = {};
    for (let i = 0; i < 8; i++) {
      const step = await trainer.trainingStep({ ...inputs, labels });
      losses.push(step.loss);
      parts = step.lossDict!;
    }
    // No auxiliary terms without use_auxiliary_loss.
    expect(Object.keys(parts).sort()).toEqual(['loss_cross_entropy', 'loss_dice', 'loss_mask']);
    expect(losses[7]).toBeLessThan(losses[0]!);
    const saved = join(dir, 'saved');
    await model.save(saved);
    const { model: reloaded } = await load({ modelName: saved });
    const again = await reloaded.forward(inputs);
    expect(again.masksQueriesLogits!.data).toEqual((await model.forward(inputs)).masksQueriesLogits!.data);
  });

  it('a configuration it cannot run names the field', async () => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture(NAME, 'config.json'), 'utf8'));
    for (const [field, value, named] of [
      ['num_attention_heads', 3, 'num_attention_heads'],
      ['feature_strides', [4, 8, 16], 'feature_strides'],
      ['backbone_config', { ...base.backbone_config, model_type: 'resnet' }, 'resnet'],
      ['train_num_points', 0, 'train_num_points'],
    ] as const) {
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, [field]: value }));
      await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, named);
    }
  });
});

describe('Mask2Former labels', () => {
  it('mask labels that do not match the image are named', async () => {
    const ref = await reference(NAME);
    const { model } = await load({ modelName: fixture(NAME) });
    const labels = labelsOf(ref.tensors);
    labels[1] = { classLabels: labels[1]!.classLabels, maskLabels: { dtype: 'float32', shape: [1, 8, 8], data: new Float32Array(64) } };
    await expectError(
      model.forward({ pixelValues: ref.tensors.pixel_values!, pixelMask: ref.tensors.pixel_mask!, labels }),
      ErrorCode.INVALID_ARGUMENT,
      'labels[1]',
    );
    writeFileSync(join(tempDir(), 'unused'), '');
  });
});
