// Bad inputs and misuse through the public API: each is refused with an error that names it and
// its code, and the process goes on.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, ErrorCode, HuggingFaceModelLoader, type ModelConfig, type Tensor, type VisionModel } from '../src/index.js';
import { expectError, FIXTURE_OPTIMIZER, fixture, reference, repoRoot, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

async function load(config: Partial<ModelConfig> & { modelName: string }): Promise<{ model: VisionModel; modelConfig: ModelConfig }> {
  const modelConfig = { modelType: 'classification', ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig);
  models.push(model);
  return { model, modelConfig };
}

/** A copy of the ViT fixture whose files `edit` may change. */
function vitCopy(edit: (dir: string) => void = () => {}): string {
  const dir = tempDir();
  for (const file of ['config.json', 'preprocessor_config.json', 'model.safetensors'])
    copyFileSync(fixture('vit-tiny-random', file), join(dir, file));
  edit(dir);
  return dir;
}

const deeplyNested = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;

describe('files that would crash or mislead', () => {
  it('a config.json or preprocessor_config.json with a field nested 60,000 deep is refused, not a stack overflow', async () => {
    for (const file of ['config.json', 'preprocessor_config.json']) {
      const dir = vitCopy((d) => {
        const text = readFileSync(join(d, file), 'utf8').trimEnd();
        writeFileSync(join(d, file), `${text.slice(0, -1)}, "unused": ${deeplyNested(60000)}}`);
      });
      await expectError(load({ modelName: dir }), ErrorCode.CONFIG, file, 'nested deeper than');
    }
  });

  it('a safetensors header one byte short, trailing bytes, and a key given twice are refused', async () => {
    const original = readFileSync(fixture('vit-tiny-random', 'model.safetensors'));
    const length = Number(original.readBigUInt64LE(0));
    const header = original.subarray(8, 8 + length).toString('utf8');
    const data = original.subarray(8 + length);
    const assemble = (text: string, bytes: Buffer, declared = Buffer.byteLength(text)) => {
      const size = Buffer.alloc(8);
      size.writeBigUInt64LE(BigInt(declared));
      return Buffer.concat([size, Buffer.from(text), bytes]);
    };
    const cases: [string, Buffer, string][] = [
      // The padding makes the shorter header valid JSON: every tensor would read one byte early.
      ['one byte short', assemble(`${header}  `, data, Buffer.byteLength(header) + 1), 'after the last tensor'],
      ['trailing bytes', Buffer.concat([original, Buffer.alloc(5)]), '5 byte(s) after the last tensor'],
      ['a key twice', assemble(header.replace('{', '{"__metadata__":{"format":"pt"},'), data), 'appears twice'],
    ];
    for (const [what, bytes, named] of cases) {
      const dir = vitCopy((d) => writeFileSync(join(d, 'model.safetensors'), bytes));
      await expectError(load({ modelName: dir }), ErrorCode.CHECKPOINT, 'model.safetensors', named).catch((error) => {
        throw new Error(`${what}: ${error}`);
      });
    }
  });

  it('an image_size whose patch count would wrap around to 0 is refused when loading, not at the first predict', async () => {
    const dir = vitCopy((d) => {
      const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, image_size: 2 ** 40, patch_size: 16 }));
    });
    await expectError(load({ modelName: dir, pretrained: false }), ErrorCode.CONFIG, 'config.json', 'image_size', 'more than 2^31 patches');
  });

  it('a num_labels of 10^12 without id2label is refused before its class names are made', async () => {
    const dir = vitCopy((d) => {
      const { id2label, label2id, ...config } = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, num_labels: 1e12 }));
    });
    await expectError(load({ modelName: dir }), ErrorCode.OUT_OF_MEMORY, 'config.json: num_labels 1000000000000', 'class names alone');
  });

  it('architectures that contradict model_type are refused rather than building the other model', async () => {
    const dir = vitCopy((d) => {
      const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, architectures: ['ResNetForImageClassification'] }));
    });
    await expectError(load({ modelName: dir }), ErrorCode.CONFIG, 'ResNetForImageClassification', '"vit"', 'must agree');
  });

  it('a path with a NUL character is refused, not cut at the NUL', async () => {
    const { model } = await load({ modelName: fixture('vit-tiny-random') });
    const photo = fixture('images', 'rocket.jpg');
    await expectError(model.predict(`${photo}\0.txt`), ErrorCode.INVALID_ARGUMENT, 'NUL');
    await expectError(model.save(`${tempDir()}/saved\0/x`), ErrorCode.INVALID_ARGUMENT, 'NUL');
    await expect(load({ modelName: `${fixture('vit-tiny-random')}\0/other` })).rejects.toThrow(/NUL|null bytes|\\u0000/);
  });
});

describe('misuse', () => {
  it('after dispose(), trainingStep, evaluate and train reject as forward does', async () => {
    const ref = await reference('vit-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    model.dispose();
    const batch = { pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! };
    await expectError(model.forward(batch), ErrorCode.DISPOSED, 'disposed');
    await expectError(trainer.trainingStep(batch), ErrorCode.DISPOSED, 'disposed');
    await expectError(trainer.evaluate({ format: 'imagefolder', root: tempDir() }), ErrorCode.DISPOSED, 'disposed');
    await expectError(trainer.train({ maxSteps: 1, dataset: { format: 'imagefolder', root: tempDir() } }), ErrorCode.DISPOSED, 'disposed');
  });
});

describe('inputs without images', () => {
  it('an empty batch is named, and a device that never ends (/dev/zero) is not read until memory runs out', async () => {
    const { model } = await load({ modelName: fixture('vit-tiny-random') });
    const empty = { dtype: 'float32' as const, shape: [0, 3, 32, 32], data: new Float32Array(0) };
    await expectError(model.forward({ pixelValues: empty }), ErrorCode.INVALID_ARGUMENT, 'pixelValues', 'batch is empty');
    await expectError(model.predict('/dev/zero'), ErrorCode.IMAGE, '/dev/zero', 'not a regular file');
  });
});

describe('non-finite numbers', () => {
  const withNaN = (t: Tensor): Tensor => {
    const data = Float32Array.from(t.data as Float32Array);
    data[7] = Number.NaN;
    data[11] = Number.POSITIVE_INFINITY;
    return { ...t, data };
  };

  it('NaN or infinite pixel values are refused by forward unless allowed', async () => {
    const ref = await reference('vit-tiny-random');
    const { model } = await load({ modelName: fixture('vit-tiny-random') });
    const pixelValues = withNaN(ref.tensors.pixel_values!);
    await expectError(model.forward({ pixelValues }), ErrorCode.INVALID_ARGUMENT, 'pixelValues', '2 value(s)', 'allowNonFinite');
    const { logits } = await model.forward({ pixelValues, allowNonFinite: true });
    expect(Number.isNaN((logits!.data as Float32Array)[0])).toBe(true);
  });

  it('a training step whose loss is not finite is skipped and reported: the weights stay as they were', async () => {
    const ref = await reference('vit-tiny-random');
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const trainer = new BaseTrainer({ model, modelConfig, ...FIXTURE_OPTIMIZER });
    const before = await model.stateDict();
    const step = await trainer.trainingStep({ pixelValues: withNaN(ref.tensors.pixel_values!), labels: ref.tensors.labels! });
    expect(step.skipped).toBe(true);
    expect(Number.isFinite(step.loss)).toBe(false);
    const after = await model.stateDict();
    for (const [key, value] of Object.entries(before)) expect(after[key]!.data, key).toEqual(value.data);
    const next = await trainer.trainingStep({ pixelValues: ref.tensors.pixel_values!, labels: ref.tensors.labels! });
    expect(next.skipped).toBe(false);
    expect(Math.abs(next.loss - Number((ref.tensors.loss!.data as Float32Array)[0]))).toBeLessThan(1e-5);
  });
});

describe('models larger than the memory (in a child under an address-space limit)', () => {
  it('100,000 layers and ten million classes are refused with the estimate and the size behind it, before their memory is taken', () => {
    const deep = vitCopy((d) => {
      const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, num_hidden_layers: 100000 }));
    });
    const wide = vitCopy((d) => {
      const config = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...config, hidden_size: 4096, num_attention_heads: 4 }));
    });
    const child = join(tempDir(), 'child.mjs');
    writeFileSync(
      child,
      `import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { HuggingFaceModelLoader } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
// 2 GiB more address space than this process has once libtorch is loaded (ulimit -v).
const size = Number(/VmSize:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (size + 2 ** 31)]);
const attempts = {
  deep: { modelName: ${JSON.stringify(deep)}, pretrained: false },
  classes: { modelName: ${JSON.stringify(fixture('vit-tiny-random'))}, numClasses: 1e7, ignoreMismatchedSizes: true },
  head: { modelName: ${JSON.stringify(wide)}, pretrained: false, numClasses: 400000 },
};
for (const [name, options] of Object.entries(attempts)) {
  try {
    await HuggingFaceModelLoader.loadModel({ modelType: 'classification', ...options });
    console.log(name, 'loaded');
  } catch (error) {
    console.log(name, error.code, error.message);
  }
}
const model = await HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(fixture('vit-tiny-random'))}, modelType: 'classification' });
console.log('still predicts', (await model.predict(${JSON.stringify(fixture('images', 'rocket.jpg'))})).length === 1);
`,
    );
    // A limit of its own too, so that the deep model's sizing stops after a few thousand layers.
    const env = { ...process.env, VISIONTORCH_MEMORY_LIMIT: '256M' };
    const run = spawnSync(process.execPath, [child], { encoding: 'utf8', timeout: 120_000, env });
    expect(run.signal, run.stderr).toBeNull();
    expect(run.status, run.stderr).toBe(0);
    const lines = Object.fromEntries(
      run.stdout
        .trim()
        .split('\n')
        .map((line) => [line.split(' ')[0], line]),
    );
    expect(lines.deep).toMatch(
      /^deep ERR_VISIONTORCH_OUT_OF_MEMORY ViTForImageClassification as configured in .*config\.json would need (more than|an estimated) [\d.]+ [MG]iB .* memory available \(its largest sizes: num_hidden_layers = 100000/,
    );
    expect(lines.classes).toMatch(
      /^classes ERR_VISIONTORCH_OUT_OF_MEMORY num_classes 10000000: the class names alone .* need about 4\.8 GiB, more than the 256\.0 MiB/,
    );
    expect(lines.head).toMatch(
      /^head ERR_VISIONTORCH_OUT_OF_MEMORY .* would need (more than|an estimated) [\d.]+ GiB .* \(its largest sizes: num_labels = 400000/,
    );
    expect(lines.still).toBe('still predicts true');
  }, 150_000);
});

describe('files left by killed writers', () => {
  it('the next save or load of a directory removes the temporaries of killed writers, not those of live ones', async () => {
    const { model } = await load({ modelName: fixture('vit-tiny-random') });
    const dir = join(tempDir(), 'saved');
    await model.save(dir);
    // A process id no process has (above Linux's largest), and this process's own.
    const dead = 99999999;
    const stale = [`.model.safetensors.tmp-${dead}-12345`, `.config.json.tmp-${dead}-7`];
    for (const name of stale) writeFileSync(join(dir, name), 'partial');
    mkdirSync(join(dir, `.checkpoint-3.tmp-${dead}`));
    writeFileSync(join(dir, `.checkpoint-3.tmp-${dead}`, 'model.safetensors'), 'partial');
    const live = `.model.safetensors.tmp-${process.pid}-1`;
    writeFileSync(join(dir, live), 'being written');
    await load({ modelName: dir });
    expect(
      readdirSync(dir)
        .filter((name) => name.startsWith('.'))
        .sort(),
    ).toEqual([live]);
    writeFileSync(join(dir, stale[0]!), 'partial');
    await model.save(dir);
    expect(
      readdirSync(dir)
        .filter((name) => name.startsWith('.'))
        .sort(),
    ).toEqual([live]);
  });
});

describe('save() killed at random points (each in a child process)', () => {
  it("30 kills leave the old model or the new one, whole and loadable, with the folder's other entries kept and nothing left after the next save", async () => {
    const DIST = join(repoRoot, 'dist', 'index.js');
    const root = tempDir();
    const [first, second, target] = ['first', 'second', 'saved'].map((name) => join(root, name)) as [string, string, string];
    // Two models whose every file differs (weights, labels, head size): a mix of them is caught.
    const child = join(root, 'child.mjs');
    writeFileSync(
      child,
      `import { HuggingFaceModelLoader } from ${JSON.stringify(DIST)};
const [target, ...references] = process.argv.slice(2);
const vit = ${JSON.stringify(fixture('vit-tiny-random'))};
if (references.length) {
  // The two versions, once: the second's new head is random, so later runs load it from here.
  await (await HuggingFaceModelLoader.loadModel({ modelName: vit, modelType: 'classification' })).save(references[0]);
  const other = await HuggingFaceModelLoader.loadModel({ modelName: vit, modelType: 'classification', numClasses: 7, ignoreMismatchedSizes: true });
  await other.save(references[1]);
  process.exit(0);
}
const models = await Promise.all([${JSON.stringify(first)}, ${JSON.stringify(second)}].map((modelName) => HuggingFaceModelLoader.loadModel({ modelName, modelType: 'classification' })));
process.stdout.write('saving\\n');
for (let i = 0; ; i++) await models[i % 2].save(target);
`,
    );
    expect(spawnSync(process.execPath, [child, target, first, second], { encoding: 'utf8' }).status).toBe(0);
    const files = ['config.json', 'model.safetensors', 'preprocessor_config.json'];
    const contents = (dir: string) => files.map((file) => readFileSync(join(dir, file)).toString('base64'));
    const versions = [contents(first), contents(second)];
    // The folder is also a trainer's output: a checkpoint and a note that every save must keep.
    await (await load({ modelName: first })).model.save(target);
    mkdirSync(join(target, 'checkpoint-1'));
    writeFileSync(join(target, 'checkpoint-1', 'trainer_state.json'), '{"global_step": 1}');
    writeFileSync(join(target, 'NOTES.md'), 'kept');
    const hidden = () => [...readdirSync(root), ...readdirSync(target)].filter((name) => name.startsWith('.'));

    const { model: survivor } = await load({ modelName: second });
    for (let kill = 0; kill < 30; kill++) {
      const running = spawn(process.execPath, [child, target], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => running.stdout!.once('data', () => resolve()));
      await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 250));
      running.kill('SIGKILL');
      await new Promise((resolve) => running.once('exit', resolve));
      const found = contents(target);
      expect(
        versions.some((version) => version.every((bytes, i) => bytes === found[i])),
        `kill ${kill}: the folder holds neither model whole`,
      ).toBe(true);
      const { model } = await load({ modelName: target });
      expect((await model.predict(fixture('images', 'rocket.jpg')))[0]).toBeDefined();
      expect(readFileSync(join(target, 'checkpoint-1', 'trainer_state.json'), 'utf8')).toBe('{"global_step": 1}');
      expect(readFileSync(join(target, 'NOTES.md'), 'utf8')).toBe('kept');
      await survivor.save(target);
      expect(hidden(), `kill ${kill}: left behind`).toEqual([]);
      model.dispose();
    }
  }, 400_000);
});

describe('teardown with calls in flight (each in a child process)', () => {
  const DIST = join(repoRoot, 'dist', 'index.js');
  const MODEL = `{ modelName: ${JSON.stringify(fixture('segformer-tiny-random'))}, modelType: 'segmentation' }`;
  const PHOTO = JSON.stringify(fixture('images', 'rocket.jpg'));
  const runChild = (source: string) => {
    const file = join(tempDir(), 'child.mjs');
    writeFileSync(file, source);
    return spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 120_000 });
  };

  it('worker.terminate() while its predicts run, 6 times: the process lives and the main thread still predicts', () => {
    const dir = tempDir();
    const worker = join(dir, 'worker.mjs');
    writeFileSync(
      worker,
      `import { HuggingFaceModelLoader } from ${JSON.stringify(DIST)};
import { parentPort } from 'node:worker_threads';
const model = await HuggingFaceModelLoader.loadModel(${MODEL});
parentPort.postMessage('loaded');
for (;;) await Promise.all(Array.from({ length: 8 }, () => model.predict(${PHOTO})));
`,
    );
    const child = runChild(`import { Worker } from 'node:worker_threads';
import { HuggingFaceModelLoader } from ${JSON.stringify(DIST)};
for (let i = 0; i < 6; i++) {
  const w = new Worker(${JSON.stringify(worker)});
  await new Promise((resolve) => w.once('message', resolve));
  await new Promise((resolve) => setTimeout(resolve, 30 + 40 * i));
  await w.terminate();
}
const model = await HuggingFaceModelLoader.loadModel(${MODEL});
const [prediction] = await model.predict(${PHOTO});
console.log('predicted', prediction.width, prediction.height);
`);
    expect(child.signal, child.stderr).toBeNull();
    expect(child.status, child.stderr).toBe(0);
    expect(child.stdout).toContain('predicted 640 427');
  });

  it('process.exit() with predicts in flight exits with its code, 6 times out of 6', () => {
    for (let i = 0; i < 6; i++) {
      const child = runChild(`import { HuggingFaceModelLoader } from ${JSON.stringify(DIST)};
const model = await HuggingFaceModelLoader.loadModel(${MODEL});
for (let i = 0; i < 16; i++) model.predict(${PHOTO}).catch(() => {});
setTimeout(() => process.exit(3), ${10 + 25 * i});
`);
      expect(child.signal, `run ${i}: ${child.stderr}`).toBeNull();
      expect(child.status, `run ${i}: ${child.stderr}`).toBe(3);
    }
  });
});
