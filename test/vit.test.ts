import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type ClassificationPrediction, ErrorCode, HuggingFaceModelLoader, type Tensor, type VisionModel } from '../src/index.js';
import { expectClose, expectError, fixture, reference, tempDir } from './helpers.js';

const VIT_FIXTURES = ['vit-tiny-random', 'vit-tiny-random-pt', 'vit-tiny-random-sharded'];
const loaded: VisionModel[] = [];

async function load(modelName: string, extra: Record<string, unknown> = {}): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName, modelType: 'classification', ...extra });
  loaded.push(model);
  return model;
}

afterAll(() => {
  for (const model of loaded) model.dispose();
});

describe.each(VIT_FIXTURES)('ViT parity with transformers: %s', (name) => {
  it('logits match the reference', async () => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture(name));
    expect(model.architecture).toBe('ViTForImageClassification');
    const outputs = await model.forward({ pixelValues: ref.tensors.pixel_values! });
    expectClose(outputs.logits, ref.tensors.logits, ref.tolerance('logits'), `${name} logits`);
  });

  it('the loss with labels matches the reference', async () => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture(name));
    const outputs = await model.forward({ pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! });
    expect(outputs.loss?.dtype).toBe('float32');
    expect(outputs.loss?.shape).toEqual([]);
    expectClose(outputs.loss, ref.tensors.loss, ref.tolerance('loss'), `${name} loss`);
  });

  it('stateDict holds every checkpoint key with its exact values', async () => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture(name));
    const state = await model.stateDict();
    const weights = Object.keys(ref.tensors)
      .filter((key) => key.startsWith('after_step1.'))
      .map((key) => key.slice('after_step1.'.length));
    expect(Object.keys(state).sort()).toEqual(weights.sort());
    const { loadSafetensors } = await import('../src/index.js');
    const original = await loadSafetensors(fixture('vit-tiny-random', 'model.safetensors'));
    for (const [key, value] of Object.entries(original)) {
      expect(state[key]?.shape, key).toEqual(value.shape);
      expect(Buffer.from((state[key] as Tensor).data.buffer).equals(Buffer.from(value.data.buffer)), key).toBe(true);
    }
  });
});

describe('ViT preprocessing parity with ViTImageProcessor', () => {
  it.each(['chelsea.png', 'rocket.jpg'])('%s', async (image) => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture('vit-tiny-random'));
    const { pixelValues } = await model.preprocess([fixture('images', image)]);
    expectClose(pixelValues, ref.tensors[`processed.${image}`], ref.tolerance('processed'), `processed ${image}`);
  });

  it('takes encoded bytes and raw pixels as well as paths', async () => {
    const model = await load(fixture('vit-tiny-random'));
    const path = fixture('images', 'chelsea.png');
    const fromPath = await model.preprocess([path]);
    const fromBytes = await model.preprocess([readFileSync(path)]);
    expect(fromBytes.pixelValues.data).toEqual(fromPath.pixelValues.data);
    const { decodeImage } = await import('../src/index.js');
    const decoded = await decodeImage(path);
    const fromPixels = await model.preprocess([{ data: decoded.data, width: decoded.width, height: decoded.height, channels: 3 }]);
    expect(fromPixels.pixelValues.data).toEqual(fromPath.pixelValues.data);
  });
});

describe('ViT predict, save and reload', () => {
  it('predict ranks labels by softmax score', async () => {
    const model = await load(fixture('vit-tiny-random'));
    const [ranked] = (await model.predict(fixture('images', 'rocket.jpg'), { topK: 3 })) as ClassificationPrediction[][];
    expect(ranked).toHaveLength(3);
    const scores = ranked!.map((p) => p.score);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    for (const p of ranked!) expect(model.labels[p.index]).toBe(p.label);
    const all = (await model.predict([fixture('images', 'rocket.jpg')], { topK: 100 }))[0] as ClassificationPrediction[];
    expect(all).toHaveLength(5);
    expect(all.reduce((sum, p) => sum + p.score, 0)).toBeCloseTo(1, 5);
  });

  it('save() then loadModel() gives identical outputs', async () => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture('vit-tiny-random'));
    const dir = join(tempDir(), 'saved');
    await model.save(dir);
    for (const file of ['config.json', 'model.safetensors', 'preprocessor_config.json']) expect(existsSync(join(dir, file)), file).toBe(true);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(config.architectures).toEqual(['ViTForImageClassification']);
    expect(config.id2label).toEqual({ 0: 'cat', 1: 'dog', 2: 'rocket', 3: 'coffee', 4: 'car' });
    const reloaded = await load(dir);
    const before = await model.forward({ pixelValues: ref.tensors.pixel_values! });
    const after = await reloaded.forward({ pixelValues: ref.tensors.pixel_values! });
    expect(after.logits!.data).toEqual(before.logits!.data);
    const processed = await reloaded.preprocess([fixture('images', 'chelsea.png')]);
    expect(processed.pixelValues.data).toEqual((await model.preprocess([fixture('images', 'chelsea.png')])).pixelValues.data);
  });
});

describe('ViT heads and options', () => {
  it('a different numClasses needs ignoreMismatchedSizes, then re-initialises the head only', async () => {
    await expectError(
      load(fixture('vit-tiny-random'), { numClasses: 3 }),
      ErrorCode.CHECKPOINT,
      'classifier.weight',
      '[5, 32]',
      '[3, 32]',
      'ignore_mismatched_sizes',
    );
    const model = await load(fixture('vit-tiny-random'), { numClasses: 3, ignoreMismatchedSizes: true });
    expect(model.labels).toEqual(['LABEL_0', 'LABEL_1', 'LABEL_2']);
    expect(model.loadReport.mismatched.join('\n')).toMatch(/classifier\.weight/);
    const original = await load(fixture('vit-tiny-random'));
    const [a, b] = [await model.stateDict(), await original.stateDict()];
    expect(a['classifier.weight']!.shape).toEqual([3, 32]);
    expect(a['vit.layernorm.weight']!.data).toEqual(b['vit.layernorm.weight']!.data);
    // HuggingFace's _init_weights: zero bias, trunc_normal(0, initializer_range) weights.
    expect(Array.from(a['classifier.bias']!.data as Float32Array)).toEqual([0, 0, 0]);
    const w = a['classifier.weight']!.data as Float32Array;
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    expect(std).toBeGreaterThan(0.005);
    expect(std).toBeLessThan(0.06);
  });

  it('id2label names the new labels', async () => {
    const model = await load(fixture('vit-tiny-random'), { id2label: { 0: 'yes', 1: 'no' }, ignoreMismatchedSizes: true });
    expect(model.labels).toEqual(['yes', 'no']);
  });

  it('loads a ViTModel checkpoint as a feature extractor, or with a new head when numClasses is given', async () => {
    const dir = tempDir();
    const config = JSON.parse(readFileSync(fixture('vit-tiny-random', 'config.json'), 'utf8'));
    const { loadSafetensors, saveSafetensors } = await import('../src/index.js');
    const weights = await loadSafetensors(fixture('vit-tiny-random', 'model.safetensors'));
    const base: Record<string, Tensor> = {};
    for (const [key, value] of Object.entries(weights)) if (key.startsWith('vit.')) base[key.slice(4)] = value;
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, architectures: ['ViTModel'] }));
    await saveSafetensors(join(dir, 'model.safetensors'), base);
    const ref = await reference('vit-tiny-random');

    const features = await load(dir);
    expect(features.architecture).toBe('ViTModel');
    const outputs = await features.forward({ pixelValues: ref.tensors.pixel_values! });
    expect(outputs.lastHiddenState!.shape).toEqual([2, 17, 32]);
    expect(outputs.poolerOutput!.shape).toEqual([2, 32]);
    expect(features.loadReport.initialized).toEqual(['pooler.dense.bias', 'pooler.dense.weight']);
    await expectError(features.predict(fixture('images', 'rocket.jpg')), ErrorCode.INVALID_ARGUMENT, 'ViTModel');

    const classifier = await load(dir, { numClasses: 5 });
    expect(classifier.architecture).toBe('ViTForImageClassification');
    expect(classifier.loadReport.initialized).toEqual(['classifier.bias', 'classifier.weight']);
    const reference_model = await load(fixture('vit-tiny-random'));
    const [a, b] = [await classifier.stateDict(), await reference_model.stateDict()];
    expect(a['vit.encoder.layer.1.output.dense.weight']!.data).toEqual(b['vit.encoder.layer.1.output.dense.weight']!.data);
  });

  it('imageSize other than the checkpoint resamples the position embeddings', async () => {
    const model = await load(fixture('vit-tiny-random'), { imageSize: 48 });
    expect(model.loadReport.adapted).toEqual(['vit.embeddings.position_embeddings: [1, 17, 32] -> [1, 37, 32]']);
    const { pixelValues } = await model.preprocess([fixture('images', 'rocket.jpg')]);
    expect(pixelValues.shape).toEqual([1, 3, 48, 48]);
    const outputs = await model.forward({ pixelValues });
    expect(outputs.logits!.shape).toEqual([1, 5]);
  });

  it('runs in bfloat16', async () => {
    const ref = await reference('vit-tiny-random');
    const model = await load(fixture('vit-tiny-random'), { dtype: 'bfloat16' });
    expect(model.dtype).toBe('bfloat16');
    const outputs = await model.forward({ pixelValues: ref.tensors.pixel_values! });
    expect(outputs.logits!.dtype).toBe('bfloat16');
    // bf16 keeps 8 bits of mantissa: logits of this tiny model agree to a few 1e-2.
    expectClose(outputs.logits, ref.tensors.logits, { atol: 0.05, rtol: 0.02 }, 'bf16 logits');
  });
});

describe('ViT configurations beyond the fixture', () => {
  const variants: Record<string, Record<string, unknown>> = {
    'non-square image, one channel, gelu_new': { image_size: [48, 32], patch_size: 8, num_channels: 1, hidden_act: 'gelu_new' },
    'qkv_bias false, relu, eps 1e-6, 7 labels': {
      qkv_bias: false,
      hidden_act: 'relu',
      layer_norm_eps: 1e-6,
      id2label: Object.fromEntries([...Array(7).keys()].map((i) => [i, `c${i}`])),
    },
    'four channels, non-square patches, 3 layers': { num_channels: 4, image_size: 32, patch_size: [8, 4], num_hidden_layers: 3, hidden_act: 'silu' },
  };

  it.each(Object.entries(variants))('%s: random init, forward, save and reload', async (_, overrides) => {
    const dir = tempDir();
    const base = JSON.parse(readFileSync(fixture('vit-tiny-random', 'config.json'), 'utf8'));
    const config = { ...base, ...overrides };
    if (overrides.id2label) delete config.label2id;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const model = await load(dir, { pretrained: false });
    const [height, width] = Array.isArray(config.image_size) ? config.image_size : [config.image_size, config.image_size];
    const [ph, pw] = Array.isArray(config.patch_size) ? config.patch_size : [config.patch_size, config.patch_size];
    const state = await model.stateDict();
    expect(state['vit.embeddings.position_embeddings']!.shape).toEqual([1, (height / ph) * (width / pw) + 1, 32]);
    expect(state['vit.embeddings.patch_embeddings.projection.weight']!.shape).toEqual([32, config.num_channels, ph, pw]);
    expect('vit.encoder.layer.0.attention.attention.query.bias' in state).toBe(config.qkv_bias);
    expect(Object.keys(state).filter((k) => k.endsWith('layernorm_before.weight'))).toHaveLength(config.num_hidden_layers);

    const channels = config.num_channels as number;
    const { pixelValues } = await model.preprocess([fixture('images', 'chelsea.png')]);
    expect(pixelValues.shape).toEqual([1, channels, height, width]);
    const outputs = await model.forward({ pixelValues });
    const numLabels = Object.keys(config.id2label).length;
    expect(outputs.logits!.shape).toEqual([1, numLabels]);

    const saved = join(dir, 'saved');
    await model.save(saved);
    const reloaded = await load(saved);
    expect((await reloaded.forward({ pixelValues })).logits!.data).toEqual(outputs.logits!.data);
  });
});

describe('ViT errors', () => {
  it('a wrong input size or channel count rejects with the expected shape', async () => {
    const model = await load(fixture('vit-tiny-random'));
    const { tensor } = await import('../src/index.js');
    await expectError(model.forward({ pixelValues: tensor('float32', [1, 3, 64, 64]) }), ErrorCode.INVALID_ARGUMENT, '64*64', '32*32');
    await expectError(
      model.forward({ pixelValues: tensor('float32', [1, 1, 32, 32]) }),
      ErrorCode.INVALID_ARGUMENT,
      'pixel_values',
      'expected 3 but got 1',
    );
    await expectError(
      model.forward({ pixelValues: tensor('float32', [3, 32, 32]) }),
      ErrorCode.INVALID_ARGUMENT,
      'pixel_values',
      '[batch, channels, height, width]',
      '[3, 32, 32]',
    );
  });

  it('bad labels reject naming the problem', async () => {
    const model = await load(fixture('vit-tiny-random'));
    const { tensor } = await import('../src/index.js');
    const pixelValues = tensor('float32', [2, 3, 32, 32]);
    await expectError(
      model.forward({ pixelValues, labels: tensor('int64', [2], new BigInt64Array([0n, 9n])) }),
      ErrorCode.INVALID_ARGUMENT,
      'class index 9',
      '5 labels',
    );
    await expectError(model.forward({ pixelValues, labels: tensor('int64', [3]) }), ErrorCode.INVALID_ARGUMENT, 'batch size 3');
  });

  it('malformed tensors reject before any work', async () => {
    const model = await load(fixture('vit-tiny-random'));
    await expectError(
      model.forward({ pixelValues: { dtype: 'float32', shape: [1, 3, 32, 32], data: new Float32Array(5) } }),
      ErrorCode.INVALID_ARGUMENT,
      'pixelValues.data',
      '5 elements',
      '3072',
    );
    await expectError(
      model.forward({ pixelValues: { dtype: 'float64' as 'float32', shape: [1], data: new Float32Array(1) } }),
      ErrorCode.INVALID_ARGUMENT,
      'pixelValues.dtype',
      'float64',
    );
    await expectError(
      model.forward({ pixelValues: { dtype: 'float32', shape: [1, -3], data: new Float32Array(1) } }),
      ErrorCode.INVALID_ARGUMENT,
      'pixelValues.shape[1]',
    );
  });

  it('corrupt config.json, missing weights and corrupt weights reject naming the file', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'config.json'), '{"architectures": ["ViTForImageClassification"], "hidden_size": ');
    await expectError(load(dir), ErrorCode.CONFIG, join(dir, 'config.json'));
    writeFileSync(join(dir, 'config.json'), readFileSync(fixture('vit-tiny-random', 'config.json')));
    await expectError(load(dir), ErrorCode.CHECKPOINT, dir, 'model.safetensors');
    writeFileSync(join(dir, 'model.safetensors'), readFileSync(fixture('vit-tiny-random', 'model.safetensors')).subarray(0, 5000));
    await expectError(load(dir), ErrorCode.CHECKPOINT, join(dir, 'model.safetensors'));
    const config = JSON.parse(readFileSync(fixture('vit-tiny-random', 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, hidden_size: 30 }));
    await expectError(load(dir, { pretrained: false }), ErrorCode.CONFIG, 'hidden_size (30)', 'num_attention_heads (4)');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, hidden_act: 'wiggle' }));
    await expectError(load(dir, { pretrained: false }), ErrorCode.CONFIG, '"wiggle"');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, architectures: ['BeitForImageClassification'], model_type: 'beit' }));
    await expectError(load(dir, { pretrained: false }), ErrorCode.CONFIG, 'model_type', '"beit"');
  });

  it('bad images reject naming the image', async () => {
    const model = await load(fixture('vit-tiny-random'));
    await expectError(model.predict(new Uint8Array([1, 2, 3, 4])), ErrorCode.IMAGE, 'image 0');
    const jpeg = readFileSync(fixture('images', 'rocket.jpg'));
    await expectError(model.predict(jpeg.subarray(0, jpeg.length / 2)), ErrorCode.IMAGE, 'image 0');
    await expectError(model.predict('/nonexistent/cat.png'), ErrorCode.IMAGE, '/nonexistent/cat.png');
    await expectError(model.predict({ data: new Uint8Array(10), width: 4, height: 4, channels: 3 }), ErrorCode.IMAGE, 'image 0', '10 bytes', '48');
  });

  it('a disposed model refuses work', async () => {
    const model = await load(fixture('vit-tiny-random'));
    model.dispose();
    await expectError(model.predict(fixture('images', 'rocket.jpg')), ErrorCode.DISPOSED, 'ViTForImageClassification');
  });

  it('a checkpoint missing encoder weights names them', async () => {
    const dir = tempDir();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), readFileSync(fixture('vit-tiny-random', 'config.json')));
    const { loadSafetensors, saveSafetensors } = await import('../src/index.js');
    const weights = await loadSafetensors(fixture('vit-tiny-random', 'model.safetensors'));
    delete weights['vit.encoder.layer.1.output.dense.weight'];
    await saveSafetensors(join(dir, 'model.safetensors'), weights);
    await expectError(load(dir), ErrorCode.CHECKPOINT, 'vit.encoder.layer.1.output.dense.weight');
  });
});
