import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, ErrorCode, HuggingFaceModelLoader, ModelNotFoundError, tensor } from '../src/index.js';
import { expectError, fixture, reference, repoRoot, tempDir } from './helpers.js';

const COMMIT = '0123456789abcdef0123456789abcdef01234567';

/** A cache tree as huggingface_hub writes it: blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/main. */
function buildHubCache(root: string, repoId: string): void {
  const repo = join(root, `models--${repoId.replace('/', '--')}`);
  mkdirSync(join(repo, 'blobs'), { recursive: true });
  mkdirSync(join(repo, 'refs'), { recursive: true });
  mkdirSync(join(repo, 'snapshots', COMMIT), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), COMMIT);
  for (const [i, file] of ['config.json', 'preprocessor_config.json', 'model.safetensors'].entries()) {
    const etag = `etag${i}`;
    copyFileSync(fixture('vit-tiny-random', file), join(repo, 'blobs', etag));
    symlinkSync(join('..', '..', 'blobs', etag), join(repo, 'snapshots', COMMIT, file));
  }
}

const savedEnv = { ...process.env };
// These tests read the cache alone; test/hub.test.ts covers the hub, with a server of its own.
beforeEach(() => {
  process.env.HF_HUB_OFFLINE = '1';
});
afterEach(() => {
  for (const key of ['HF_HUB_CACHE', 'HF_HOME', 'HUGGINGFACE_HUB_CACHE', 'HF_HUB_OFFLINE', 'HOME', 'XDG_CACHE_HOME']) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
});

describe('HuggingFaceModelLoader.loadModel resolution', () => {
  it('loads from a cache laid out like huggingface_hub, through cacheDir, HF_HUB_CACHE, HF_HOME and ~/.cache, in that order', async () => {
    const ref = await reference('vit-tiny-random');
    // Four caches, each holding the model: which one a load read shows in the weights file it names.
    const caches = { option: tempDir(), hubCache: tempDir(), hfHome: join(tempDir(), 'hub'), userHome: tempDir() };
    const userCache = join(caches.userHome, '.cache', 'huggingface', 'hub');
    for (const root of [caches.option, caches.hubCache, caches.hfHome, userCache]) buildHubCache(root, 'acme/vit-tiny');
    const weightsIn = (root: string) => join(root, 'models--acme--vit-tiny', 'snapshots', COMMIT, 'model.safetensors');
    const sourceOf = async (config: { cacheDir?: string; revision?: string } = {}) => {
      const model = await HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', ...config });
      const { source } = model.loadReport;
      model.dispose();
      return source;
    };
    process.env.HF_HUB_CACHE = caches.hubCache;
    process.env.HF_HOME = dirname(caches.hfHome);
    process.env.HOME = caches.userHome;
    delete process.env.HUGGINGFACE_HUB_CACHE;
    delete process.env.XDG_CACHE_HOME;

    const viaOption = await HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', cacheDir: caches.option });
    expect(viaOption.loadReport.source).toBe(weightsIn(caches.option));
    const logits = (await viaOption.forward({ pixelValues: ref.tensors.pixel_values! })).logits!;
    viaOption.dispose();
    const direct = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' });
    expect(logits.data).toEqual((await direct.forward({ pixelValues: ref.tensors.pixel_values! })).logits!.data);
    direct.dispose();

    expect(await sourceOf()).toBe(weightsIn(caches.hubCache));
    delete process.env.HF_HUB_CACHE;
    expect(await sourceOf({ revision: COMMIT })).toBe(weightsIn(caches.hfHome));
    delete process.env.HF_HOME;
    expect(await sourceOf()).toBe(weightsIn(userCache));
  });

  it('names every place it looked when the model is nowhere', async () => {
    const cache = tempDir();
    const error = await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: 'acme/missing-model', modelType: 'classification', cacheDir: cache }),
      ErrorCode.MODEL_NOT_FOUND,
      'acme/missing-model',
      join(cache, 'models--acme--missing-model'),
    );
    expect(error).toBeInstanceOf(ModelNotFoundError);
    buildHubCache(cache, 'acme/vit-tiny');
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', cacheDir: cache, revision: 'v2' }),
      ErrorCode.MODEL_NOT_FOUND,
      join('models--acme--vit-tiny', 'refs', 'v2'),
    );
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: './no/such/dir', modelType: 'classification' }),
      ErrorCode.MODEL_NOT_FOUND,
      'no/such/dir',
    );
  });

  it('a ref that is not a commit hash is refused, not followed', async () => {
    const cache = tempDir();
    buildHubCache(cache, 'acme/vit-tiny');
    writeFileSync(join(cache, 'models--acme--vit-tiny', 'refs', 'main'), '../../../etc');
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', cacheDir: cache }),
      ErrorCode.MODEL_NOT_FOUND,
      join(cache, 'models--acme--vit-tiny', 'refs', 'main'),
    );
  });

  it('validates the config before touching anything', async () => {
    // @ts-expect-error: a JavaScript caller's mistake (no such task), refused at run time too
    const blank = await expectError(HuggingFaceModelLoader.loadModel({ modelName: '', modelType: 'detection' }), ErrorCode.CONFIG, 'modelName');
    expect(blank).toBeInstanceOf(ConfigError);
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: 'x', modelType: 'classification', numClasses: 0 }),
      ErrorCode.CONFIG,
      'numClasses',
    );
  });
});

describe('the task of a model', () => {
  it("is inferred from config.json when modelType is not given: its architecture's head, or its family for a base model", async () => {
    const cases: [string, string][] = [
      ['vit-tiny-random', 'classification'],
      ['swin-tiny-random', 'classification'],
      ['detr-tiny-random', 'object_detection'],
      ['table-transformer-tiny-random', 'object_detection'],
      ['segformer-tiny-random', 'segmentation'],
      ['mask2former-tiny-random', 'segmentation'],
    ];
    for (const [name, task] of cases) {
      const model = await HuggingFaceModelLoader.loadModel({ modelName: fixture(name) });
      expect(model.modelType, name).toBe(task);
      model.dispose();
    }
    // A base model's config.json (DetrModel) serves its family's task; with no architectures,
    // model_type says the family.
    const dir = tempDir();
    for (const file of ['config.json', 'preprocessor_config.json', 'model.safetensors'])
      copyFileSync(fixture('detr-tiny-random', file), join(dir, file));
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, architectures: undefined }));
    const detr = await HuggingFaceModelLoader.loadModel({ modelName: dir });
    expect(detr.modelType).toBe('object_detection');
    detr.dispose();
  });

  it('an explicit modelType that contradicts config.json is refused naming both', async () => {
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: fixture('detr-tiny-random'), modelType: 'classification' }),
      ErrorCode.CONFIG,
      'no classification model',
      'DetrForObjectDetection',
    );
  });

  it('a config.json that names no known architecture needs modelType, and says so', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ hidden_size: 8 }));
    await expectError(HuggingFaceModelLoader.loadModel({ modelName: dir }), ErrorCode.CONFIG, 'modelType', 'names no architecture');
  });
});

describe('getAvailableModels', () => {
  it('lists the ViT classes with hub checkpoints, filtered by type', () => {
    const all = HuggingFaceModelLoader.getAvailableModels();
    const vit = all.find((m) => m.architecture === 'ViTForImageClassification');
    expect(vit?.modelType).toBe('classification');
    expect(vit?.checkpoints).toContain('google/vit-base-patch16-224');
    expect(all.map((m) => m.architecture)).toContain('ViTModel');
    expect(HuggingFaceModelLoader.getAvailableModels('object_detection').every((m) => m.modelType === 'object_detection')).toBe(true);
    expectError(() => HuggingFaceModelLoader.getAvailableModels('nope' as 'classification'), ErrorCode.INVALID_ARGUMENT, '"nope"');
  });
});

describe('the event loop', () => {
  it('keeps turning while a forward pass runs', async () => {
    // ViT-Base at 224x224 with random weights: a forward pass that runs on the native threads for a while.
    const model = await HuggingFaceModelLoader.loadModel({
      modelName: fixture('configs', 'vit-base-patch16-224'),
      modelType: 'classification',
      pretrained: false,
    });
    const input = tensor('float32', [2, 3, 224, 224]);
    // Each turn of the loop is counted while the forward pass is pending. The first comes from
    // setImmediate, which runs on the loop's next turn: a forward pass that blocked the loop (or ran
    // synchronously and returned a settled promise) would settle before it, leaving the count at 0.
    let settled = false;
    let turns = 0;
    let timer: NodeJS.Timeout | undefined;
    const turn = () => {
      if (settled) return;
      turns++;
      timer = setTimeout(turn, 1);
    };
    setImmediate(turn);
    let turnsWhilePending = 0;
    const outputs = await model.forward({ pixelValues: input }).finally(() => {
      settled = true;
      turnsWhilePending = turns;
      clearTimeout(timer);
    });
    model.dispose();
    expect(outputs.logits?.shape).toEqual([2, 1000]);
    expect(turnsWhilePending).toBeGreaterThanOrEqual(1);
  });
});

describe('the package', () => {
  it("resolves `import { HuggingFaceModelLoader } from 'visiontorch'` inside the checkout", () => {
    const out = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "import { HuggingFaceModelLoader } from 'visiontorch'; console.log(HuggingFaceModelLoader.getAvailableModels().length > 0)",
      ],
      { cwd: repoRoot, encoding: 'utf8' },
    );
    expect(out.trim()).toBe('true');
  });

  it('the CLI lists models and predicts', () => {
    const cli = join(repoRoot, 'dist', 'cli', 'main.js');
    expect(execFileSync(process.execPath, [cli, 'models'], { encoding: 'utf8' })).toMatch(/ViTForImageClassification\s+classification/);
    const out = execFileSync(
      process.execPath,
      [cli, 'predict', '--model', fixture('vit-tiny-random'), '--json', '--top-k', '2', fixture('images', 'rocket.jpg')],
      { encoding: 'utf8' },
    );
    const [result] = JSON.parse(out);
    expect(result.predictions).toHaveLength(2);
    // No --type: the detection model's config.json says what it does.
    const detections = JSON.parse(
      execFileSync(
        process.execPath,
        [cli, 'predict', '--model', fixture('detr-tiny-random'), '--json', '--threshold', '0', fixture('images', 'rocket.jpg')],
        {
          encoding: 'utf8',
        },
      ),
    );
    expect(detections[0].predictions.length).toBeGreaterThan(0);
    expect(detections[0].predictions[0]).toHaveProperty('box');
  });

  it('the CLI answers --help for each command and --version', () => {
    const cli = join(repoRoot, 'dist', 'cli', 'main.js');
    for (const command of ['train', 'predict', 'models', 'bench', 'init']) {
      const help = execFileSync(process.execPath, [cli, command, '--help'], { encoding: 'utf8' });
      expect(help, command).toMatch(new RegExp(`^usage:\\n  visiontorch ${command} `));
      expect(help, command).not.toMatch(new RegExp(`visiontorch (?!${command} )\\w+ `));
    }
    const version = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')).version;
    expect(execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8' }).trim()).toBe(version);
  });
});
