import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, HuggingFaceModelLoader, ModelNotFoundError, tensor } from '../src/index.js';
import { fixture, reference, repoRoot, tempDir } from './helpers.js';

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
  for (const key of ['HF_HUB_CACHE', 'HF_HOME', 'HUGGINGFACE_HUB_CACHE', 'HF_HUB_OFFLINE']) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
});

describe('HuggingFaceModelLoader.loadModel resolution', () => {
  it('loads from a cache laid out like huggingface_hub, through cacheDir, HF_HUB_CACHE and HF_HOME', async () => {
    const ref = await reference('vit-tiny-random');
    const home = tempDir();
    buildHubCache(join(home, 'hub'), 'acme/vit-tiny');
    const viaOption = await HuggingFaceModelLoader.loadModel({
      modelName: 'acme/vit-tiny',
      modelType: 'classification',
      cacheDir: join(home, 'hub'),
    });
    const logits = (await viaOption.forward({ pixelValues: ref.tensors.pixel_values! })).logits!;
    expect(logits.data).toEqual(
      (
        await (
          await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' })
        ).forward({ pixelValues: ref.tensors.pixel_values! })
      ).logits!.data,
    );
    viaOption.dispose();

    process.env.HF_HUB_CACHE = join(home, 'hub');
    (await HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification' })).dispose();
    delete process.env.HF_HUB_CACHE;
    process.env.HF_HOME = home;
    (await HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', revision: COMMIT })).dispose();
  });

  it('names every place it looked when the model is nowhere', async () => {
    const cache = tempDir();
    const attempt = HuggingFaceModelLoader.loadModel({ modelName: 'acme/missing-model', modelType: 'classification', cacheDir: cache });
    await expect(attempt).rejects.toBeInstanceOf(ModelNotFoundError);
    await expect(attempt).rejects.toThrow(/local directory .*acme\/missing-model[\s\S]*HuggingFace cache: .*models--acme--missing-model/);
    buildHubCache(cache, 'acme/vit-tiny');
    await expect(
      HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', cacheDir: cache, revision: 'v2' }),
    ).rejects.toThrow(/refs\/v2 \(no such revision/);
    await expect(HuggingFaceModelLoader.loadModel({ modelName: './no/such/dir', modelType: 'classification' })).rejects.toThrow(/local directory/);
  });

  it('a ref that is not a commit hash is refused, not followed', async () => {
    const cache = tempDir();
    buildHubCache(cache, 'acme/vit-tiny');
    writeFileSync(join(cache, 'models--acme--vit-tiny', 'refs', 'main'), '../../../etc');
    await expect(HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit-tiny', modelType: 'classification', cacheDir: cache })).rejects.toThrow(
      /does not hold a commit hash/,
    );
  });

  it('validates the config before touching anything', async () => {
    await expect(HuggingFaceModelLoader.loadModel({ modelName: '', modelType: 'detection' })).rejects.toBeInstanceOf(ConfigError);
    await expect(HuggingFaceModelLoader.loadModel({ modelName: 'x', modelType: 'classification', numClasses: 0 })).rejects.toThrow(/numClasses/);
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
    expect(() => HuggingFaceModelLoader.getAvailableModels('nope' as 'classification')).toThrow(/unknown model type/);
  });
});

describe('the event loop', () => {
  it('keeps turning while a forward pass runs', async () => {
    // ViT-Base at 224x224 with random weights: a forward pass long enough to measure.
    const model = await HuggingFaceModelLoader.loadModel({
      modelName: fixture('configs', 'vit-base-patch16-224'),
      modelType: 'classification',
      pretrained: false,
    });
    const input = tensor('float32', [2, 3, 224, 224]);
    let ticks = 0;
    let longestGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
      ticks++;
    }, 5);
    const started = performance.now();
    await model.forward({ pixelValues: input });
    const elapsed = performance.now() - started;
    clearInterval(timer);
    model.dispose();
    expect(elapsed).toBeGreaterThan(100);
    expect(ticks).toBeGreaterThan(elapsed / 50);
    expect(longestGap).toBeLessThan(100);
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
  });
});
