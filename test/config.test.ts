import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  ConfigError,
  DatasetConfigSchema,
  DistributedConfigSchema,
  loadConfig,
  ModelConfigSchema,
  ModelType,
  parseModelConfig,
  parseProjectConfig,
  parseTrainingConfig,
  TrainingConfigSchema,
} from '../src/config/index.js';
import { ErrorCode } from '../src/errors.js';
import { expectCode } from './helpers.js';

const repoFile = (p: string) => fileURLToPath(new URL(`../${p}`, import.meta.url));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'visiontorch-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** Writes `text` to a fresh YAML file in the temp dir and returns its path. */
async function yamlFile(text: string): Promise<string> {
  const file = join(dir, `config-${++n}.yaml`);
  await writeFile(file, text);
  return file;
}

/** The ConfigError, with code ERR_VISIONTORCH_CONFIG, that `fn` throws (or the promise rejects with). */
async function configError(fn: () => unknown): Promise<ConfigError> {
  try {
    await fn();
  } catch (err) {
    expectCode(err, ErrorCode.CONFIG);
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

const MODEL = 'model:\n  name: org/model\n  type: classification\n';
const loadYaml = async (text: string) => loadConfig(await yamlFile(text));
const yamlError = async (text: string) => configError(() => loadYaml(text));
const messages = (e: ConfigError) => e.issues.map((i) => `${i.path}: ${i.message}`);

describe('parseModelConfig (camelCase, TypeScript side)', () => {
  it('accepts a minimal config and defaults pretrained to true', () => {
    expect(parseModelConfig({ modelName: 'google/vit-base-patch16-224', modelType: ModelType.CLASSIFICATION })).toEqual({
      modelName: 'google/vit-base-patch16-224',
      modelType: 'classification',
      pretrained: true,
    });
  });

  it('names the expected type and what was found', async () => {
    const e = await configError(() => parseModelConfig({ modelName: 42, modelType: 'classification', numClasses: 'ten' }));
    expect(e.name).toBe('ConfigError');
    expect(e.issues).toEqual([
      { path: 'modelName', message: 'expected a non-empty string, got 42' },
      { path: 'numClasses', message: 'expected a positive integer, got "ten"' },
    ]);
    expect(e.message).toBe(
      'Invalid model configuration:\n  modelName: expected a non-empty string, got 42\n  numClasses: expected a positive integer, got "ten"',
    );
  });

  it('lists the allowed model types', async () => {
    const e = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'clasification' }));
    expect(e.issues).toEqual([
      {
        path: 'modelType',
        message: 'expected one of "classification", "object_detection", "segmentation", got "clasification"; did you mean "classification"?',
      },
    ]);
  });

  it.each([0, -1, 2.5])('rejects numClasses %s', async (numClasses) => {
    const e = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'classification', numClasses }));
    expect(messages(e)).toEqual([`numClasses: expected a positive integer, got ${numClasses}`]);
  });

  it('rejects unknown keys and suggests the closest one', async () => {
    const e = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'classification', numClass: 3, colour: 'red' }));
    expect(messages(e)).toEqual(['numClass: unknown key, did you mean "numClasses"?', 'colour: unknown key']);
  });

  it('requires modelName; modelType may be left to config.json', async () => {
    const e = await configError(() => parseModelConfig({}));
    expect(e.issues.map((i) => i.path)).toEqual(['modelName']);
    expect(e.issues[0]?.message).toMatch(/^missing/);
    expect(parseModelConfig({ modelName: 'a/b' }).modelType).toBeUndefined();
  });

  it('rejects blank names and names with NUL bytes', async () => {
    for (const modelName of ['', '   ', 'a\0b']) {
      const e = await configError(() => parseModelConfig({ modelName, modelType: 'classification' }));
      expect(e.issues.map((i) => i.path)).toEqual(['modelName']);
    }
  });

  it('accepts id2label with string or number keys 0..n-1', () => {
    const cfg = parseModelConfig({ modelName: 'a/b', modelType: 'classification', numClasses: 2, id2label: { 0: 'cat', '1': 'dog' } });
    expect(cfg.id2label).toEqual({ 0: 'cat', 1: 'dog' });
  });

  it('rejects id2label whose size differs from numClasses', async () => {
    const e = await configError(() =>
      parseModelConfig({ modelName: 'a/b', modelType: 'classification', numClasses: 3, id2label: { 0: 'cat', 1: 'dog' } }),
    );
    expect(messages(e)).toEqual(['id2label: has 2 entries but numClasses is 3']);
  });

  it('rejects id2label with gaps or non-index keys', async () => {
    const gap = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'classification', id2label: { 0: 'a', 2: 'c' } }));
    expect(messages(gap)).toEqual(['id2label: keys must be 0..1 without gaps (missing 1)']);
    const key = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'classification', id2label: { zero: 'a' } }));
    expect(messages(key)).toEqual(['id2label.zero: invalid key: expected a class index 0, 1, 2, ...']);
  });

  it.each(['auto', 'cpu', 'cuda', 'cuda:0', 'cuda:12'])('accepts device %s', (device) => {
    expect(parseModelConfig({ modelName: 'a/b', modelType: 'segmentation', device }).device).toBe(device);
  });

  it.each(['gpu', 'CUDA', 'cuda:', 'cuda:-1', 'cuda:01', 'cuda:1x', 'mps'])('rejects device %s', async (device) => {
    const e = await configError(() => parseModelConfig({ modelName: 'a/b', modelType: 'segmentation', device }));
    expect(messages(e)).toEqual([`device: expected "auto", "cpu", "cuda" or "cuda:N", got ${JSON.stringify(device)}`]);
  });

  it('rejects a value that is not an object', async () => {
    const e = await configError(() => parseModelConfig(null));
    expect(e.issues).toEqual([{ path: '', message: 'expected a mapping, got null' }]);
  });
});

describe('parseTrainingConfig', () => {
  it('applies every default', () => {
    expect(parseTrainingConfig({})).toEqual({
      epochs: 3,
      batchSize: 8,
      learningRate: 5e-5,
      weightDecay: 0,
      optimizer: 'adamw',
      momentum: 0.9,
      adamBeta1: 0.9,
      adamBeta2: 0.999,
      adamEpsilon: 1e-8,
      lrScheduler: 'linear',
      warmupSteps: 0,
      warmupRatio: 0,
      gradientAccumulationSteps: 1,
      maxGradNorm: 1,
      mixedPrecision: 'no',
      labelSmoothing: 0,
      seed: 42,
      evalEvery: 0,
      saveEvery: 0,
      logEvery: 10,
      outputDir: 'runs/latest',
      earlyStoppingMetric: 'eval_loss',
      decayBiasAndNorm: false,
      freezeBatchNorm: false,
      numWorkers: 2,
      dropLast: false,
    });
  });

  it('rejects warmupSteps and warmupRatio both non-zero', async () => {
    const e = await configError(() => parseTrainingConfig({ warmupSteps: 100, warmupRatio: 0.1 }));
    expect(messages(e)).toEqual(['warmupRatio: cannot be non-zero together with warmupSteps: give one or the other']);
    expect(parseTrainingConfig({ warmupSteps: 100, warmupRatio: 0 }).warmupSteps).toBe(100);
  });

  it('checks ranges', async () => {
    const e = await configError(() =>
      parseTrainingConfig({ learningRate: 0, weightDecay: -1, warmupRatio: 1, adamBeta2: 1, maxGradNorm: -0.5, optimizer: 'adam' }),
    );
    expect(messages(e)).toEqual([
      'learningRate: expected a number > 0, got 0',
      'weightDecay: expected a number >= 0, got -1',
      'optimizer: expected one of "adamw", "sgd", got "adam"; did you mean "adamw"?',
      'adamBeta2: expected a number in [0, 1), got 1',
      'warmupRatio: expected a number in [0, 1), got 1',
      'maxGradNorm: expected a number >= 0, got -0.5',
    ]);
  });

  describe('dataset', () => {
    it('defaults validationSplit to 0.1 without a validation set, 0 with one', () => {
      const plain = DatasetConfigSchema.parse({ format: 'imagefolder', root: 'train' });
      expect(plain.validationSplit).toBe(0.1);
      const withVal = DatasetConfigSchema.parse({ format: 'imagefolder', root: 'train', validationRoot: 'val' });
      expect(withVal.validationSplit).toBe(0);
    });

    it('rejects a split together with a validation set', async () => {
      const e = await configError(() =>
        parseTrainingConfig({ dataset: { format: 'csv', path: 'train.csv', validationPath: 'val.csv', validationSplit: 0.2 } }),
      );
      expect(messages(e)).toEqual(['dataset.validationSplit: cannot be combined with validationPath: give one or the other']);
    });

    it('needs idx validation images and labels together', async () => {
      const e = await configError(() => parseTrainingConfig({ dataset: { format: 'idx', images: 'i', labels: 'l', validationLabels: 'vl' } }));
      expect(messages(e)).toEqual(['dataset.validationImages: required when validationLabels is given']);
    });

    it('lists the formats and rejects keys of another format', async () => {
      const bad = await configError(() => parseTrainingConfig({ dataset: { format: 'tfrecord' } }));
      expect(messages(bad)).toEqual([
        'dataset.format: expected one of "imagefolder", "csv", "jsonl", "idx", "coco", "coco_panoptic", "masks", got "tfrecord"',
      ]);
      const other = await configError(() => parseTrainingConfig({ dataset: { format: 'imagefolder', root: 'r', images: 'i' } }));
      expect(messages(other)).toEqual(['dataset.images: unknown key for format "imagefolder"']);
    });

    it('fills in random-resized-crop ranges and checks them', async () => {
      const d = DatasetConfigSchema.parse({ format: 'idx', images: 'i', labels: 'l', augment: { randomResizedCrop: { scale: [0.5, 1] } } });
      expect(d.augment).toEqual({ randomResizedCrop: { scale: [0.5, 1], ratio: [3 / 4, 4 / 3] } });
      const e = await configError(() =>
        parseTrainingConfig({ dataset: { format: 'idx', images: 'i', labels: 'l', augment: { randomResizedCrop: { scale: [1, 0.5] } } } }),
      );
      expect(messages(e)).toEqual(['dataset.augment.randomResizedCrop.scale: expected [min, max] with min <= max']);
      const kind = await configError(() =>
        parseTrainingConfig({ dataset: { format: 'idx', images: 'i', labels: 'l', augment: { randomResizedCrop: 'yes' } } }),
      );
      expect(messages(kind)).toEqual(['dataset.augment.randomResizedCrop: expected true or false, or a mapping, got "yes"']);
    });
  });
});

describe('loadConfig (YAML, snake_case)', () => {
  it('accepts the default config/model_config.yaml', async () => {
    const cfg = await loadConfig(repoFile('config/model_config.yaml'));
    expect(cfg.path).toBe(repoFile('config/model_config.yaml'));
    expect(cfg.model).toMatchObject({
      modelName: repoFile('config/models/resnet-fashion-mnist'),
      modelType: 'classification',
      pretrained: false,
      numClasses: 10,
      imageSize: 28,
      channels: 1,
    });
    // The value the file gives (read here with the YAML parser alone), not a default.
    expect(cfg.training.epochs).toBe(parse(readFileSync(repoFile('config/model_config.yaml'), 'utf8')).training.epochs);
    expect(cfg.data?.format).toBe('idx');
    expect(cfg.training.dataset).toEqual(cfg.data);
  });

  it('accepts config/examples/vit-base-patch16-224.yaml, on the same data as the default', async () => {
    const example = await loadConfig(repoFile('config/examples/vit-base-patch16-224.yaml'));
    const main = await loadConfig(repoFile('config/model_config.yaml'));
    expect(example.model).toMatchObject({ modelName: 'google/vit-base-patch16-224', numClasses: 10, ignoreMismatchedSizes: true });
    const files = ({ images, labels, validationImages, validationLabels }: Record<string, unknown>) => ({
      images,
      labels,
      validationImages,
      validationLabels,
    });
    expect(files(example.data as Record<string, unknown>)).toEqual(files(main.data as Record<string, unknown>));
  });

  it('accepts config/examples/vit-fashion-mnist.yaml: the small ViT of config/models, on the data of the default job', async () => {
    const example = await loadConfig(repoFile('config/examples/vit-fashion-mnist.yaml'));
    const main = await loadConfig(repoFile('config/model_config.yaml'));
    expect(example.model).toMatchObject({ modelName: repoFile('config/models/vit-fashion-mnist'), pretrained: false, numClasses: 10, channels: 1 });
    expect(example.data).toEqual(main.data);
  });

  it('accepts config/examples/mask2former-coco-instances.yaml, whose data paths exist', async () => {
    const example = await loadConfig(repoFile('config/examples/mask2former-coco-instances.yaml'));
    expect(example.model).toMatchObject({ modelType: 'segmentation', numClasses: 4, ignoreMismatchedSizes: true });
    const data = example.data as { format: string; annotations: string; images: string };
    expect(data.format).toBe('coco');
    expect(existsSync(data.annotations) && existsSync(data.images)).toBe(true);
  });

  it('reads a coco_panoptic dataset and names a missing validation part', async () => {
    const cfg = await loadYaml(`
model: {name: ./m, type: segmentation}
data: {format: coco_panoptic, annotations: p.json, images: img, masks: png, validation_annotations: v.json, validation_images: vimg, validation_masks: vpng}
`);
    expect(cfg.data).toMatchObject({ format: 'coco_panoptic', validationMasks: expect.stringMatching(/vpng$/), validationSplit: 0 });
    await expect(
      loadYaml(`
model: {name: ./m, type: segmentation}
data: {format: coco_panoptic, annotations: p.json, images: img, masks: png, validation_annotations: v.json}
`),
    ).rejects.toThrow(/validation_masks/);
  });

  it('maps every snake_case field to camelCase', async () => {
    const cfg = await loadYaml(`
model:
  name: ./checkpoints/my-vit
  type: object_detection
  pretrained: false
  num_classes: 2
  id2label: {0: cat, 1: dog}
  image_size: 384
  channels: 1
  revision: v1.0
  cache_dir: /cache/hf
  local_files_only: true
  ignore_mismatched_sizes: true
  dtype: bfloat16
  quantization: int8
  device: cuda:1
  gradient_checkpointing: true
training:
  epochs: 5
  max_steps: 1000
  batch_size: 16
  learning_rate: 1.0e-4
  weight_decay: 0.01
  optimizer: sgd
  momentum: 0.8
  adam_beta1: 0.8
  adam_beta2: 0.99
  adam_epsilon: 1.0e-6
  lr_scheduler: cosine
  warmup_steps: 0
  warmup_ratio: 0.05
  gradient_accumulation_steps: 4
  max_grad_norm: 0
  mixed_precision: bf16
  label_smoothing: 0.1
  seed: 7
  eval_every: 100
  save_every: 500
  log_every: 20
  output_dir: runs/exp
  resume_from: runs/exp/checkpoint-500
  early_stopping_patience: 3
  early_stopping_metric: eval_accuracy
  decay_bias_and_norm: true
  freeze_batch_norm: true
  gradient_checkpointing: false
  num_workers: 0
  drop_last: true
data:
  format: csv
  path: train.csv
  root: images
  validation_path: val.csv
  image_column: file
  label_column: class
  validation_split: 0
  limit: 100
  class_names: [cat, dog]
  augment:
    random_resized_crop: {scale: [0.5, 1.0], ratio: [0.5, 2.0]}
    horizontal_flip: true
distributed:
  num_workers: 4
  use_gpu: false
  backend: gloo
  master_addr: 10.0.0.1
  master_port: 29501
  node_rank: 1
  num_nodes: 2
  threads_per_worker: 2
  sync_batch_norm: true
  max_restarts: 0
  timeout_seconds: 30
`);
    const model = {
      // ./ and ../ names are directories relative to the YAML file.
      modelName: join(dirname(cfg.path), 'checkpoints', 'my-vit'),
      modelType: 'object_detection',
      pretrained: false,
      numClasses: 2,
      id2label: { 0: 'cat', 1: 'dog' },
      imageSize: 384,
      channels: 1,
      revision: 'v1.0',
      cacheDir: '/cache/hf',
      localFilesOnly: true,
      ignoreMismatchedSizes: true,
      dtype: 'bfloat16',
      quantization: 'int8',
      device: 'cuda:1',
      gradientCheckpointing: true,
    };
    const data = {
      format: 'csv',
      path: join(dir, 'train.csv'),
      root: join(dir, 'images'),
      validationPath: join(dir, 'val.csv'),
      imageColumn: 'file',
      labelColumn: 'class',
      maskColumn: 'mask',
      validationSplit: 0,
      limit: 100,
      classNames: ['cat', 'dog'],
      augment: { randomResizedCrop: { scale: [0.5, 1], ratio: [0.5, 2] }, horizontalFlip: true },
    };
    const training = {
      epochs: 5,
      maxSteps: 1000,
      batchSize: 16,
      learningRate: 1e-4,
      weightDecay: 0.01,
      optimizer: 'sgd',
      momentum: 0.8,
      adamBeta1: 0.8,
      adamBeta2: 0.99,
      adamEpsilon: 1e-6,
      lrScheduler: 'cosine',
      warmupSteps: 0,
      warmupRatio: 0.05,
      gradientAccumulationSteps: 4,
      maxGradNorm: 0,
      mixedPrecision: 'bf16',
      labelSmoothing: 0.1,
      seed: 7,
      evalEvery: 100,
      saveEvery: 500,
      logEvery: 20,
      outputDir: 'runs/exp',
      resumeFrom: 'runs/exp/checkpoint-500',
      earlyStoppingPatience: 3,
      earlyStoppingMetric: 'eval_accuracy',
      decayBiasAndNorm: true,
      freezeBatchNorm: true,
      gradientCheckpointing: false,
      numWorkers: 0,
      dropLast: true,
      dataset: data,
    };
    const distributed = {
      numWorkers: 4,
      useGpu: false,
      backend: 'gloo',
      masterAddr: '10.0.0.1',
      masterPort: 29501,
      nodeRank: 1,
      numNodes: 2,
      threadsPerWorker: 2,
      syncBatchNorm: true,
      maxRestarts: 0,
      timeoutSeconds: 30,
    };
    expect(cfg).toEqual({ model, training, data, distributed, path: cfg.path });
    // Guard: a field added to a schema must be added to this test too.
    expect(Object.keys(model).sort()).toEqual(Object.keys(ModelConfigSchema.shape).sort());
    expect(Object.keys(training).sort()).toEqual(Object.keys(TrainingConfigSchema.shape).sort());
    expect(Object.keys(distributed).sort()).toEqual(Object.keys(DistributedConfigSchema.shape).sort());
  });

  it('applies defaults for omitted blocks and fields', async () => {
    const cfg = await loadYaml(MODEL);
    expect(cfg.model.pretrained).toBe(true);
    expect(cfg.training).toEqual(parseTrainingConfig({}));
    expect(cfg.data).toBeUndefined();
  });

  it('resolves relative data paths against the file, keeps absolute ones', async () => {
    const cfg = await loadYaml(`${MODEL}data:\n  format: idx\n  images: mnist/train-images.gz\n  labels: /abs/train-labels.gz\n`);
    expect(cfg.data).toMatchObject({ images: join(dir, 'mnist/train-images.gz'), labels: '/abs/train-labels.gz', validationSplit: 0.1 });
    expect(cfg.training.dataset).toEqual(cfg.data);
  });

  it('accepts the dataset under training: too, resolved the same way', async () => {
    const cfg = await loadYaml(`${MODEL}training:\n  dataset:\n    format: imagefolder\n    root: ./train\n`);
    expect(cfg.data).toMatchObject({ format: 'imagefolder', root: join(dir, 'train') });
    expect(cfg.training.dataset).toEqual(cfg.data);
  });

  it('rejects a dataset given both under data: and training.dataset', async () => {
    const e = await yamlError(`${MODEL}training:\n  dataset: {format: imagefolder, root: a}\ndata: {format: imagefolder, root: b}\n`);
    expect(messages(e)).toEqual(['training.dataset: the dataset is already given under data: give it in one place']);
  });

  it('rejects wrong types with snake_case paths', async () => {
    const e = await yamlError('model:\n  name: 42\n  type: classification\n  num_classes: "10"\n  pretrained: yes\n');
    expect(messages(e)).toEqual([
      'model.name: expected a non-empty string, got 42',
      'model.num_classes: expected a positive integer, got "10"',
      'model.pretrained: expected true or false, got "yes"',
    ]);
  });

  it('lists the allowed model types', async () => {
    const e = await yamlError('model:\n  name: a/b\n  type: detection\n');
    expect(messages(e)).toEqual(['model.type: expected one of "classification", "object_detection", "segmentation", got "detection"']);
  });

  it.each(['0', '-1', '2.5'])('rejects num_classes: %s', async (value) => {
    const e = await yamlError(`${MODEL}  num_classes: ${value}\n`);
    expect(messages(e)).toEqual([`model.num_classes: expected a positive integer, got ${value}`]);
  });

  it('rejects unknown keys at the top level, in model and in training, with suggestions', async () => {
    const file = await yamlFile(
      `${MODEL}  colour: red\n  num_clases: 3\n  numClasses: 3\n  model_name: x\ntraining:\n  learning_rat: 0.1\nextra: 1\n`,
    );
    const e = await configError(() => loadConfig(file));
    expect(e.message).toContain(file);
    expect(messages(e)).toEqual([
      'model.colour: unknown key',
      'model.num_clases: unknown key, did you mean "num_classes"?',
      'model.numClasses: unknown key, did you mean "num_classes"?',
      'model.model_name: unknown key, did you mean "name"?',
      'training.learning_rat: unknown key, did you mean "learning_rate"?',
      'extra: unknown key',
    ]);
  });

  it('rejects keys of another dataset format', async () => {
    const e = await yamlError(`${MODEL}data:\n  format: imagefolder\n  root: r\n  validation_path: v.csv\n`);
    expect(messages(e)).toEqual(['data.validation_path: unknown key for format "imagefolder"']);
  });

  it('reports several problems at once, in file order', async () => {
    const e = await yamlError(`
model:
  type: classification
  num_classes: 0
  device: gpu
training:
  epochs: -1
  warmup_steps: 10
  warmup_ratio: 0.1
  optimiser: sgd
data:
  format: idx
  images: a
`);
    expect(messages(e)).toEqual([
      'model.name: missing; expected a non-empty string',
      'model.num_classes: expected a positive integer, got 0',
      'model.device: expected "auto", "cpu", "cuda" or "cuda:N", got "gpu"',
      'training.epochs: expected a positive integer, got -1',
      'training.warmup_ratio: cannot be non-zero together with warmup_steps: give one or the other',
      'training.optimiser: unknown key, did you mean "optimizer"?',
      'data.labels: missing; expected a non-empty string',
    ]);
    expect(e.message.split('\n')).toHaveLength(8);
  });

  it('rejects id2label that does not match num_classes', async () => {
    const e = await yamlError(`${MODEL}  num_classes: 3\n  id2label:\n    0: cat\n    1: dog\n`);
    expect(messages(e)).toEqual(['model.id2label: has 2 entries but num_classes is 3']);
  });

  it('checks device against auto | cpu | cuda | cuda:N', async () => {
    expect((await loadYaml(`${MODEL}  device: cuda:3\n`)).model.device).toBe('cuda:3');
    const e = await yamlError(`${MODEL}  device: cuda:one\n`);
    expect(messages(e)).toEqual(['model.device: expected "auto", "cpu", "cuda" or "cuda:N", got "cuda:one"']);
  });

  it('reports malformed YAML with file, line and column', async () => {
    const file = await yamlFile('model:\n  name: a/b\n  name: c/d\n');
    expectCode(await configError(() => loadConfig(file)), ErrorCode.CONFIG, file, 'line 3, column 3');
    expectCode(await yamlError('model: [a, b\n'), ErrorCode.CONFIG, /config-\d+\.yaml/, 'line 2, column 1');
  });

  it('reports a missing file without a raw ENOENT', async () => {
    const file = join(dir, 'does-not-exist.yaml');
    const e = expectCode(await configError(() => loadConfig(file)), ErrorCode.CONFIG, file);
    expect(e.message).not.toMatch(/ENOENT/);
  });

  it('rejects an empty file and a top level that is not a mapping', async () => {
    for (const text of ['', '# just a comment\n']) {
      const file = await yamlFile(text);
      expectCode(await configError(() => loadConfig(file)), ErrorCode.CONFIG, file, 'no content');
    }
    expectCode(await yamlError('- model\n- training\n'), ErrorCode.CONFIG, /config-\d+\.yaml/, 'got a list');
  });
});

describe('parseProjectConfig', () => {
  it('takes an already-parsed object; without a source, paths resolve against the working directory', () => {
    const cfg = parseProjectConfig({ model: { name: 'a/b', type: 'segmentation' }, data: { format: 'jsonl', path: 'm.jsonl' } });
    expect(cfg.path).toBe('');
    expect(cfg.data).toMatchObject({ path: resolve('m.jsonl'), imageColumn: 'image', labelColumn: 'label', validationSplit: 0.1 });
  });

  it('names the source in its message', async () => {
    const e = await configError(() => parseProjectConfig({ model: { name: 'a/b', type: 'detection' } }, 'jobs/x.yaml'));
    expect(e.source).toBe('jobs/x.yaml');
    expect(e.message).toBe(
      'Invalid configuration in jobs/x.yaml:\n  model.type: expected one of "classification", "object_detection", "segmentation", got "detection"',
    );
  });
});
