import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, type ClassificationPrediction, ErrorCode, HuggingFaceModelLoader, type ModelConfig, type VisionModel } from '../src/index.js';
import { expectClose, expectError, FIXTURE_OPTIMIZER, fixture, reference, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

async function load(config: Partial<ModelConfig> & { modelName: string }, seed?: number): Promise<{ model: VisionModel; modelConfig: ModelConfig }> {
  const modelConfig = { modelType: 'classification', ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed });
  models.push(model);
  return { model, modelConfig };
}

describe.each([
  ['resnet-tiny-random', 'ResNetForImageClassification'],
  ['convnext-tiny-random', 'ConvNextForImageClassification'],
  ['swin-tiny-random', 'SwinForImageClassification'],
])('%s: parity with transformers', (name, architecture) => {
  it('logits and the preprocessing of both photos', async () => {
    const ref = await reference(name);
    const { model } = await load({ modelName: fixture(name) });
    expect(model.architecture).toBe(architecture);
    const outputs = await model.forward({ pixelValues: ref.tensors.pixel_values! });
    expectClose(outputs.logits, ref.tensors.logits, ref.tolerance('logits'), 'logits');
    for (const image of ['chelsea.png', 'rocket.jpg']) {
      const { pixelValues } = await model.preprocess([fixture('images', image)]);
      expectClose(pixelValues, ref.tensors[`processed.${image}`], ref.tolerance('processed'), `processed ${image}`);
    }
  });

  it('loss, gradients, and every parameter and buffer after one and two AdamW steps', async () => {
    const ref = await reference(name);
    const { model, modelConfig } = await load({ modelName: fixture(name) });
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };
    const step1 = await trainer.trainingStep(batch, { returnGradients: true });
    expect(Math.abs(step1.loss - Number((ref.tensors.loss!.data as Float32Array)[0]))).toBeLessThan(1e-5);
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
    expect(Math.abs(step2.loss - Number((ref.tensors.loss_step2!.data as Float32Array)[0]))).toBeLessThan(1e-5);
    for (const [key, value] of Object.entries(await model.stateDict()))
      expectClose(value, ref.tensors[`after_step2.${key}`], ref.tolerance('after_step2'), `after_step2.${key}`);
  });
});

describe('configurations beyond the fixtures', () => {
  const variants: [string, string, Record<string, unknown>][] = [
    [
      'resnet-tiny-random',
      'bottleneck, downsampling first stage, 3 stages, one channel, 4 labels',
      {
        layer_type: 'bottleneck',
        downsample_in_first_stage: true,
        hidden_sizes: [16, 32, 64],
        depths: [2, 1, 1],
        num_channels: 1,
        embedding_size: 8,
        hidden_act: 'gelu',
        id2label: { 0: 'a', 1: 'b', 2: 'c', 3: 'd' },
        stage_names: ['stem', 'stage1', 'stage2', 'stage3'],
        out_features: ['stage3'],
      },
    ],
    [
      'convnext-tiny-random',
      'three stages, no layer scale, drop path, patch 2',
      {
        hidden_sizes: [8, 16, 24],
        depths: [1, 2, 1],
        num_stages: 3,
        layer_scale_init_value: 0,
        drop_path_rate: 0.2,
        patch_size: 2,
        hidden_act: 'gelu_new',
        layer_norm_eps: 1e-6,
      },
    ],
    [
      'swin-tiny-random',
      'patch [3, 2] (32 rows padded to 33), window 5 (11 x 16 tokens padded to 15 x 20), 3 stages of odd sizes, maps smaller than the window, no qkv bias',
      {
        patch_size: [3, 2],
        image_size: [32, 32],
        window_size: 5,
        embed_dim: 8,
        depths: [1, 2, 2],
        num_heads: [1, 2, 2],
        mlp_ratio: 3,
        qkv_bias: false,
        drop_path_rate: 0.2,
        hidden_act: 'gelu_new',
        layer_norm_eps: 1e-6,
        stage_names: ['stem', 'stage1', 'stage2', 'stage3'],
        out_features: ['stage3'],
        out_indices: [3],
      },
    ],
  ];
  it.each(variants)('%s: %s — random init, forward, a training step, save and reload', async (name, _, overrides) => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture(name, 'config.json'), 'utf8'));
    const config = { ...base, ...overrides };
    if (overrides.id2label) delete config.label2id;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    writeFileSync(join(dir, 'preprocessor_config.json'), readFileSync(fixture(name, 'preprocessor_config.json')));
    const { model, modelConfig } = await load({ modelName: dir, pretrained: false }, 1);
    const { pixelValues } = await model.preprocess([fixture('images', 'chelsea.png'), fixture('images', 'rocket.jpg')]);
    expect(pixelValues.shape[1]).toBe(config.num_channels);
    const numLabels = Object.keys(config.id2label).length;
    const before = await model.forward({ pixelValues });
    expect(before.logits!.shape).toEqual([2, numLabels]);
    const labels = { dtype: 'int64' as const, shape: [2], data: new BigInt64Array([0n, 1n]) };
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const losses = [];
    for (let i = 0; i < 6; i++) losses.push((await trainer.trainingStep({ pixelValues, labels })).loss);
    expect(losses[5]).toBeLessThan(losses[0]!);
    const saved = join(dir, 'saved');
    await model.save(saved);
    const { model: reloaded } = await load({ modelName: saved });
    expect((await reloaded.forward({ pixelValues })).logits!.data).toEqual((await model.forward({ pixelValues })).logits!.data);
  });

  it('a shape that does not fit names the fields', async () => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture('resnet-tiny-random', 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, depths: [1, 1, 1] }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'hidden_sizes', 'depths');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, layer_type: 'wide' }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'layer_type', '"wide"');
  });
});

describe('Swin', () => {
  it('SwinModel takes images of any size (padded to the patch and the window) and gives the last stage tokens', async () => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture('swin-tiny-random', 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, architectures: ['SwinModel'] }));
    const { model } = await load({ modelName: dir, pretrained: false }, 3);
    expect(model.architecture).toBe('SwinModel');
    const data = new Float32Array(3 * 37 * 45).map((_, i) => Math.sin(i));
    const outputs = await model.forward({ pixelValues: { dtype: 'float32', shape: [1, 3, 37, 45], data } });
    // 37 x 45 pixels -> 10 x 12 patches of 4 -> 5 x 6 tokens after one patch merging, 32 channels
    expect(outputs.lastHiddenState!.shape).toEqual([1, 30, 32]);
    expect(outputs.poolerOutput!.shape).toEqual([1, 32]);
    expect(Array.from(outputs.lastHiddenState!.data as Float32Array).every(Number.isFinite)).toBe(true);
  });

  it('a configuration it cannot run names the fields', async () => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture('swin-tiny-random', 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, num_heads: [2] }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'num_heads', 'depths');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, num_heads: [3, 4] }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'num_heads[0]', '16 channels');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, use_absolute_embeddings: true }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'use_absolute_embeddings');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, out_features: ['stage9'] }));
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'out_features', 'stage9');
  });
});

describe('getAvailableModels', () => {
  it('lists ResNet, ConvNeXt and Swin with their hub checkpoints', () => {
    const names = HuggingFaceModelLoader.getAvailableModels('classification').map((m) => m.architecture);
    expect(names).toEqual(
      expect.arrayContaining([
        'ResNetForImageClassification',
        'ConvNextForImageClassification',
        'SwinForImageClassification',
        'ResNetModel',
        'ConvNextModel',
        'SwinModel',
      ]),
    );
    const swin = HuggingFaceModelLoader.getAvailableModels().find((m) => m.architecture === 'SwinForImageClassification');
    expect(swin?.checkpoints).toContain('microsoft/swin-tiny-patch4-window7-224');
    const resnet = HuggingFaceModelLoader.getAvailableModels().find((m) => m.architecture === 'ResNetForImageClassification');
    expect(resnet?.checkpoints).toContain('microsoft/resnet-50');
  });
});

describe('custom TorchScript models', () => {
  const scripted = fixture('torchscript-tiny-cnn');

  it('loads, predicts, trains with falling loss, and saves a model.pt that reloads', async () => {
    const { model, modelConfig } = await load({ modelName: scripted });
    expect(model.architecture).toBe('TorchScriptModule');
    expect(model.labels).toEqual(['cat', 'rocket', 'remote']);
    const state = await model.stateDict();
    expect(Object.keys(state)).toEqual(
      expect.arrayContaining(['classifier.weight', 'features.0.weight', 'features.1.running_mean', 'features.1.num_batches_tracked']),
    );
    const [ranked] = (await model.predict(fixture('images', 'rocket.jpg'), { topK: 3 })) as ClassificationPrediction[][];
    expect(ranked!.map((p) => p.label).sort()).toEqual(['cat', 'remote', 'rocket']);

    const { pixelValues } = await model.preprocess([fixture('images', 'rocket.jpg'), fixture('images', 'chelsea.png')]);
    const labels = { dtype: 'int64' as const, shape: [2], data: new BigInt64Array([1n, 0n]) };
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 1e-2, lrScheduler: 'constant' });
    const losses = [];
    for (let i = 0; i < 5; i++) losses.push((await trainer.trainingStep({ pixelValues, labels })).loss);
    expect(losses[4]).toBeLessThan(losses[0]! * 0.8);
    const trained = await model.stateDict();
    // Training mode reached the scripted BatchNorm: its running statistics moved.
    expect(trained['features.1.num_batches_tracked']!.data).toEqual(new BigInt64Array([5n]));

    const saved = join(tempDir(), 'saved');
    await model.save(saved);
    const { model: reloaded } = await load({ modelName: saved });
    expect(reloaded.architecture).toBe('TorchScriptModule');
    expect((await reloaded.forward({ pixelValues })).logits!.data).toEqual((await model.forward({ pixelValues })).logits!.data);
  });

  it('a .pt file alone loads with as many labels as it has outputs', async () => {
    const { model } = await load({ modelName: join(scripted, 'model.pt') });
    expect(model.labels).toEqual(['LABEL_0', 'LABEL_1', 'LABEL_2']);
  });

  it('a file that is not TorchScript is named', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'broken.pt'), 'not a zip archive');
    await expectError(load({ modelName: join(dir, 'broken.pt') }), ErrorCode.CHECKPOINT, 'broken.pt');
  });
});

describe('freezeBatchNorm', () => {
  it('keeps BatchNorm statistics and weights while the convolutions train', async () => {
    const ref = await reference('resnet-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('resnet-tiny-random') });
    const before = await model.stateDict();
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER, freezeBatchNorm: true });
    const step = await trainer.trainingStep({ pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! }, { returnGradients: true });
    expect(Object.keys(step.gradients!).some((k) => k.includes('normalization'))).toBe(false);
    const after = await model.stateDict();
    for (const key of Object.keys(before).filter((k) => k.includes('normalization'))) expect(after[key]!.data, key).toEqual(before[key]!.data);
    expect(after['resnet.embedder.embedder.convolution.weight']!.data).not.toEqual(before['resnet.embedder.embedder.convolution.weight']!.data);
  });
});
