// Bad inputs and misuse through the public API, as a careless user or an attacker would make them
// (beyond those of reliability.test.ts): each is refused with its stable code and a message that
// names the problem, and the process goes on. Where a native crash is plausible (corrupt files,
// huge sizes, teardown) the cases run in a child process, several to a child.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BaseTrainer,
  decodeImage,
  ErrorCode,
  HuggingFaceModelLoader,
  loadConfig,
  type ModelConfig,
  ProcessGroup,
  parseDistributedConfig,
  parseModelConfig,
  parseTrainingConfig,
  runtimeInfo,
  setNumThreads,
  type Tensor,
  tensor,
  type VisionModel,
} from '../src/index.js';
import { type CodedError, expectCode, expectError, fixture, repoRoot, tempDir } from './helpers.js';
import { FakeHub } from './hub-server.js';

const DIST = join(repoRoot, 'dist', 'index.js');
const CLI = join(repoRoot, 'dist', 'cli', 'main.js');
const PHOTO = fixture('images', 'rocket.jpg');
const opened: VisionModel[] = [];

async function load(modelName: string, extra: Partial<ModelConfig> = {}): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName, modelType: 'classification', ...extra });
  opened.push(model);
  return model;
}

/** A copy of a fixture's model files, which `edit` may change. */
function modelCopy(
  edit: (dir: string) => void = () => {},
  name = 'vit-tiny-random',
  files = ['config.json', 'preprocessor_config.json', 'model.safetensors'],
) {
  const dir = tempDir();
  for (const file of files) copyFileSync(fixture(name, file), join(dir, file));
  edit(dir);
  return dir;
}

/** An edit that merges `patch` into one of the directory's JSON files. */
const patchJson =
  (file: string, patch: Record<string, unknown>) =>
  (dir: string): void => {
    const json = JSON.parse(readFileSync(join(dir, file), 'utf8'));
    writeFileSync(join(dir, file), JSON.stringify({ ...json, ...patch }));
  };

const int64 = (values: number[], shape = [values.length]): Tensor => tensor('int64', shape, BigInt64Array.from(values, BigInt));

// Encoded images small enough to write inline: a PNG of any header, and the formats the decoder lacks.
function pngChunk(type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const frame = Buffer.alloc(4);
  frame.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([frame, body, crc]);
}
function crc32(bytes: Buffer): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
/** An RGB PNG whose header says `width` x `height`, with `rows` (default: one row of black) as its data. */
function png(width: number, height: number, rows = Buffer.alloc(1 + 3 * Math.min(width, 4096))): Buffer {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per channel
  header[9] = 2; // RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, pngChunk('IHDR', header), pngChunk('IDAT', deflateSync(rows)), pngChunk('IEND', Buffer.alloc(0))]);
}
const GIF = Buffer.from('R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==', 'base64');
const WEBP = Buffer.from('UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==', 'base64');
const BMP = (() => {
  const bmp = Buffer.alloc(58);
  bmp.write('BM');
  bmp.writeUInt32LE(58, 2);
  bmp.writeUInt32LE(54, 10);
  bmp.writeUInt32LE(40, 14);
  bmp.writeInt32LE(1, 18);
  bmp.writeInt32LE(1, 22);
  bmp.writeUInt16LE(1, 26);
  bmp.writeUInt16LE(24, 28);
  return bmp;
})();

// -------------------------------------------------------------------------------------------------
// Child processes: each case is the body of an async function over `vt` (the built package) and
// `load(modelName, extra)`; its outcome comes back as one JSON line, so a crash still tells which
// case it was and which ones went before.

interface CaseOutcome {
  resolved?: boolean;
  code?: string;
  message?: string;
}
interface ChildRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  outcomes: Map<string, CaseOutcome>;
}

// Address space for a child whose case may allocate without bound: a wrongly accepted size then
// fails or times out instead of taking the machine's memory.
const PRLIMIT = spawnSync('prlimit', ['--version']).status === 0;
const CHILD_ADDRESS_SPACE = 4 * 1024 ** 3;

function runChild(cases: Record<string, string>, options: { timeoutMs: number; env?: NodeJS.ProcessEnv; limitMemory?: boolean }): Promise<ChildRun> {
  const file = join(tempDir(), 'child.mjs');
  const body = Object.entries(cases)
    .map(([name, code]) => `  [${JSON.stringify(name)}, async () => {\n${code}\n  }],`)
    .join('\n');
  writeFileSync(
    file,
    `import * as vt from ${JSON.stringify(DIST)};
const load = (modelName, extra = {}) => vt.HuggingFaceModelLoader.loadModel({ modelName, modelType: 'classification', ...extra });
const cases = [
${body}
];
for (const [name, run] of cases) {
  let outcome;
  try {
    const value = await run();
    value?.dispose?.();
    outcome = { resolved: true };
  } catch (error) {
    outcome = { code: error?.code, message: String(error?.message ?? error) };
  }
  process.stdout.write(JSON.stringify({ name, ...outcome }) + '\\n');
}
`,
  );
  const [command, args] =
    options.limitMemory && PRLIMIT ? ['prlimit', [`--as=${CHILD_ADDRESS_SPACE}`, process.execPath, file]] : [process.execPath, [file]];
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      const outcomes = new Map<string, CaseOutcome>();
      for (const line of stdout.split('\n').filter((l) => l.startsWith('{'))) {
        const { name, ...outcome } = JSON.parse(line) as CaseOutcome & { name: string };
        outcomes.set(name, outcome);
      }
      resolve({ status, signal, stderr: stderr.slice(-2000), outcomes });
    });
  });
}

/** The case `name` of `run` failed with one of `codes` and a message naming each of `named`; the child lived to the end. */
function expectChildCase(run: ChildRun, name: string, codes: ErrorCode | ErrorCode[], ...named: RegExp[]): void {
  const outcome = run.outcomes.get(name);
  const ending = run.signal ? `was killed by ${run.signal}` : `exited with ${run.status}`;
  expect(outcome, `"${name}" never finished: the child ${ending}\n${run.stderr}`).toBeDefined();
  expect(outcome?.resolved, `"${name}" was accepted`).toBeUndefined();
  const allowed = [codes].flat();
  const error = Object.assign(new Error(outcome?.message), { code: outcome?.code });
  expectCode(error, allowed.includes(outcome?.code as ErrorCode) ? (outcome?.code as ErrorCode) : allowed[0]!, ...named);
  expect(run.signal, run.stderr).toBeNull();
  expect(run.status, run.stderr).toBe(0);
}

afterAll(() => {
  for (const model of opened) model.dispose();
});

// -------------------------------------------------------------------------------------------------

describe('YAML job files (loadConfig)', () => {
  const MODEL = `model:\n  name: ${fixture('vit-tiny-random')}\n  type: classification\n`;
  const job = (text: string): string => {
    const file = join(tempDir(), 'job.yaml');
    writeFileSync(file, text);
    return file;
  };
  const aliasBomb = [
    'a: &a [x, x, x, x, x, x, x, x, x]',
    ...'bcdefgh'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefg'[i]}`).join(', ')}]`),
  ].join('\n');

  it.each([
    ['a flow sequence left open', `${MODEL}training: [epochs: 3\n`, /line \d+, column \d+/],
    ['a key given twice', `${MODEL}training:\n  epochs: 2\n  epochs: 3\n`, /line 6, column 3: .*unique/],
    ['a misspelt key', `${MODEL}training:\n  learning_rte: 0.1\n`, /training\.learning_rte: unknown key, did you mean "learning_rate"/],
    ['a word for a number', `${MODEL}training:\n  batch_size: eight\n`, /training\.batch_size: expected a positive integer, got "eight"/],
    ['zero epochs', `${MODEL}training:\n  epochs: 0\n`, /training\.epochs: expected a positive integer, got 0/],
    ['negative epochs', `${MODEL}training:\n  epochs: -3\n`, /training\.epochs: .* got -3/],
    ['infinite epochs', `${MODEL}training:\n  epochs: .inf\n`, /training\.epochs: .* got Infinity/],
    ['a fractional batch size', `${MODEL}training:\n  batch_size: 2.5\n`, /training\.batch_size: expected a positive integer, got 2\.5/],
    ['a negative learning rate', `${MODEL}training:\n  learning_rate: -1.0e-4\n`, /training\.learning_rate: expected a number > 0, got -0\.0001/],
    ['a learning rate of NaN', `${MODEL}training:\n  learning_rate: .nan\n`, /training\.learning_rate: .* got NaN/],
    ['a quoted learning rate', `${MODEL}training:\n  learning_rate: "1e-4"\n`, /training\.learning_rate: expected a number > 0, got "1e-4"/],
    [
      'an unknown optimizer',
      `${MODEL}training:\n  optimizer: adam\n`,
      /training\.optimizer: expected one of "adamw", "sgd", got "adam"; did you mean "adamw"/,
    ],
    ['an unknown scheduler', `${MODEL}training:\n  lr_scheduler: exponential\n`, /training\.lr_scheduler: .*"cosine".* got "exponential"/],
    ['an idx dataset without its labels file', `${MODEL}data:\n  format: idx\n  images: train.gz\n`, /data\.labels: missing/],
    ['zero classes', 'model:\n  name: org/vit\n  type: classification\n  num_classes: 0\n', /model\.num_classes: expected a positive integer, got 0/],
    ['a model type of another library', 'model:\n  name: org/vit\n  type: detection\n', /model\.type: .*"object_detection".* got "detection"/],
    ['an alias bomb', aliasBomb, /resource exhaustion/],
    ['lists nested 100,000 deep', `${'['.repeat(100_000)}${']'.repeat(100_000)}`, /nested too deeply/],
  ])('%s is refused naming it', async (_what, text, named) => {
    await expectError(loadConfig(job(text)), ErrorCode.CONFIG, named);
  });

  it('a directory given as the job file is named as one', async () => {
    const dir = tempDir();
    await expectError(loadConfig(dir), ErrorCode.CONFIG, dir, /is a directory/);
  });

  it('a dataset path that does not exist passes the schema and fails the run, naming the file where the YAML put it', async () => {
    const file = job(
      `${MODEL}training:\n  max_steps: 1\ndata:\n  format: idx\n  images: missing/train-images.gz\n  labels: missing/train-labels.gz\n`,
    );
    const config = await loadConfig(file);
    const model = await load(config.model.modelName);
    const trainer = new BaseTrainer({ model, modelConfig: config.model });
    const missing = join(file, '..', 'missing', 'train-images.gz');
    await expectError(trainer.train({ ...config.training, outputDir: tempDir() }), ErrorCode.DATASET, missing, /No such file/);
  });
});

describe('configuration objects', () => {
  it.each([
    [
      'a training config whose batch size came from an environment variable (a string)',
      () => parseTrainingConfig({ batchSize: '8' }),
      /batchSize: .* got "8"/,
    ],
    ['an unknown mixed precision', () => parseTrainingConfig({ mixedPrecision: 'fp8' }), /mixedPrecision: .*did you mean "fp16"/],
    [
      'a negative number of classes',
      () => parseModelConfig({ modelName: 'org/vit', modelType: 'classification', numClasses: -1 }),
      /numClasses: expected a positive integer, got -1/,
    ],
    [
      'a device that is not one',
      () => parseModelConfig({ modelName: 'org/vit', modelType: 'classification', device: 'gpu' }),
      /device: .*"cuda:N", got "gpu"/,
    ],
    ['zero data-parallel workers', () => parseDistributedConfig({ numWorkers: 0 }), /numWorkers: expected a positive integer, got 0/],
  ])('%s is refused naming the field', (_what, attempt, named) => {
    expectError(attempt, ErrorCode.CONFIG, named);
  });

  it('a misspelt trainer option is refused with the spelling it meant', async () => {
    const model = await load(fixture('vit-tiny-random'));
    expectError(
      () => new BaseTrainer({ model, modelConfig: {} as ModelConfig, learningrate: 1 } as never),
      ErrorCode.CONFIG,
      /learningrate: unknown key, did you mean "learningRate"/,
    );
  });

  it('loadModel given a model name instead of a configuration names what it expected', async () => {
    await expectError(
      // @ts-expect-error: a JavaScript caller's mistake (a name for a configuration), refused at run time too
      HuggingFaceModelLoader.loadModel('google/vit-base-patch16-224'),
      ErrorCode.CONFIG,
      /expected a mapping, got "google\/vit-base-patch16-224"/,
    );
  });
});

describe('model directories', () => {
  it('a directory that does not exist is named with where it was looked for', async () => {
    const missing = join(tempDir(), 'no-such-model');
    await expectError(load(missing), ErrorCode.MODEL_NOT_FOUND, missing, /does not exist/);
  });

  it('config.json named instead of its directory points at the directory', async () => {
    const file = fixture('vit-tiny-random', 'config.json');
    await expectError(load(file), ErrorCode.MODEL_NOT_FOUND, file, fixture('vit-tiny-random'), /directory/);
  });

  it.each([
    ['an empty config.json', (dir: string) => writeFileSync(join(dir, 'config.json'), ''), /config\.json: invalid JSON/],
    ['a config.json that is a list', (dir: string) => writeFileSync(join(dir, 'config.json'), '[1, 2, 3]'), /config\.json: expected a JSON object/],
    [
      'an unknown model_type',
      (dir: string) => writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'foo', hidden_size: 32 })),
      /config\.json: .*model_type "foo"/,
    ],
    ['hidden_size "abc"', patchJson('config.json', { hidden_size: 'abc' }), /config\.json: hidden_size must be a positive integer, got "abc"/],
    ['hidden_size -1', patchJson('config.json', { hidden_size: -1 }), /config\.json: hidden_size must be a positive integer, got -1/],
    ['1.5 hidden layers', patchJson('config.json', { num_hidden_layers: 1.5 }), /num_hidden_layers must be an integer, got 1\.5/],
    ['a patch larger than the image', patchJson('config.json', { patch_size: 64 }), /patch_size \(64x64\) is larger than image_size \(32x32\)/],
    ['id2label keyed by names', patchJson('config.json', { id2label: { cat: 'cat' }, label2id: { cat: 'cat' } }), /id2label key "cat"/],
    [
      'a preprocessor size below zero',
      patchJson('preprocessor_config.json', { size: { height: -32, width: 32 } }),
      /preprocessor_config\.json: size\.height must be a positive integer, got -32/,
    ],
    [
      'an unknown resample filter',
      patchJson('preprocessor_config.json', { resample: 42 }),
      /preprocessor_config\.json: resample: unknown resample code 42/,
    ],
    ['an image_std of zeros', patchJson('preprocessor_config.json', { image_std: [0, 0, 0] }), /image_std must not contain 0/],
    // transformers' normalize cannot broadcast 2 different means over 3 channels (a uniform mean carries over).
    [
      'an image_mean of 2 values for 3 channels',
      patchJson('preprocessor_config.json', { image_mean: [0.485, 0.456] }),
      /image_mean has 2 entries but the model .* 3 channels/,
    ],
  ])('%s is refused naming the file and field', async (_what, edit, named) => {
    await expectError(load(modelCopy(edit)), ErrorCode.CONFIG, named);
  });

  it('a model type that contradicts the checkpoint is refused', async () => {
    await expectError(
      load(fixture('vit-tiny-random'), { modelType: 'segmentation' }),
      ErrorCode.CONFIG,
      /no segmentation model for model_type "vit"/,
    );
  });

  it('a channel count the checkpoint was not trained with names the weight that disagrees', async () => {
    await expectError(
      load(fixture('vit-tiny-random'), { channels: 4 }),
      ErrorCode.CHECKPOINT,
      /projection\.weight: checkpoint \[32, 3, 8, 8\] vs model \[32, 4, 8, 8\]/,
    );
  });

  it('a sharded index whose shard is missing names the shard', async () => {
    const files = ['config.json', 'model.safetensors.index.json', 'model-00001-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
    const dir = modelCopy(() => {}, 'vit-tiny-random-sharded', files);
    await expectError(load(dir), ErrorCode.CHECKPOINT, /shard "model-00002-of-00003\.safetensors" .* does not exist/);
  });

  it.skipIf(runtimeInfo().cudaAvailable)('device "cuda" on a build or machine without CUDA is refused as unsupported', async () => {
    await expectError(load(fixture('vit-tiny-random'), { device: 'cuda' }), ErrorCode.UNSUPPORTED, /"cuda" requested, but CUDA is not available/);
  });

  it('an unknown memory format is refused naming the option', async () => {
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' }, { memoryFormat: 'nchw' as never }),
      ErrorCode.INVALID_ARGUMENT,
      /memory_?format.*"nchw"/i,
    );
  });
});

describe('corrupt weight files (in a child process)', () => {
  let run: Promise<ChildRun>;
  beforeAll(() => {
    const safetensors = readFileSync(fixture('vit-tiny-random', 'model.safetensors'));
    const headerLength = Number(safetensors.readBigUInt64LE(0));
    const withWeights = (bytes: Buffer, file = 'model.safetensors') => modelCopy((dir) => writeFileSync(join(dir, file), bytes));
    const withBin = (bytes: Buffer) =>
      modelCopy((dir) => writeFileSync(join(dir, 'pytorch_model.bin'), bytes), 'vit-tiny-random', ['config.json', 'preprocessor_config.json']);
    const hugeHeader = Buffer.alloc(16);
    hugeHeader.writeBigUInt64LE(1n << 60n);
    const badDtype = Buffer.from(safetensors);
    const header = safetensors.subarray(8, 8 + headerLength).toString('latin1');
    badDtype.write(header.replace('"F32"', '"X9" '), 8, 'latin1'); // the same length: the data stays where it was
    const pt = readFileSync(fixture('vit-tiny-random-pt', 'pytorch_model.bin'));
    const notTorchScript = join(tempDir(), 'model.pt');
    writeFileSync(notTorchScript, 'a text file, not a TorchScript archive\n');
    const paths = {
      empty: withWeights(Buffer.alloc(0)),
      hugeHeader: withWeights(hugeHeader),
      cutShort: withWeights(safetensors.subarray(0, safetensors.length - 100)),
      badDtype: withWeights(badDtype),
      wrongShapes: modelCopy(patchJson('config.json', { hidden_size: 64, intermediate_size: 37 })),
      binNotZip: withBin(Buffer.from('this is not a zip archive\n')),
      binTruncated: withBin(pt.subarray(0, pt.length >> 1)),
    };
    const loadCase = (dir: string) => `return load(${JSON.stringify(dir)});`;
    run = runChild(
      {
        ...Object.fromEntries(Object.entries(paths).map(([name, dir]) => [name, loadCase(dir)])),
        notTorchScript: `return load(${JSON.stringify(notTorchScript)});`,
      },
      { timeoutMs: 60_000 },
    );
  });

  it('an empty model.safetensors', async () => expectChildCase(await run, 'empty', ErrorCode.CHECKPOINT, /model\.safetensors: file is 0 bytes/));
  it('a safetensors header length of 2^60', async () =>
    expectChildCase(await run, 'hugeHeader', ErrorCode.CHECKPOINT, /model\.safetensors: header length 1152921504606846976 exceeds/));
  it('a safetensors file cut 100 bytes short', async () =>
    expectChildCase(await run, 'cutShort', ErrorCode.CHECKPOINT, /model\.safetensors: tensor "[\w.]+": data_offsets .* beyond the data section/));
  it('a tensor of an unknown dtype', async () => expectChildCase(await run, 'badDtype', ErrorCode.CHECKPOINT, /tensor "[\w.]+": unknown dtype "X9"/));
  it('weights whose shapes disagree with config.json', async () =>
    expectChildCase(await run, 'wrongShapes', ErrorCode.CHECKPOINT, /classifier\.weight: checkpoint \[5, 32\] vs model \[5, 64\]/));
  it('a pytorch_model.bin that is not a zip archive', async () =>
    expectChildCase(await run, 'binNotZip', ErrorCode.CHECKPOINT, /pytorch_model\.bin: not a readable torch\.save zip archive/));
  it('a pytorch_model.bin cut in half', async () =>
    expectChildCase(await run, 'binTruncated', ErrorCode.CHECKPOINT, /pytorch_model\.bin: .*truncated or corrupt/));
  it('a text file given as a TorchScript model', async () =>
    expectChildCase(await run, 'notTorchScript', ErrorCode.CHECKPOINT, /model\.pt: not a TorchScript module/));
});

describe('sizes that would take all memory (each in a child process, its address space limited)', () => {
  let images: Promise<ChildRun>;
  let layers: Promise<ChildRun>;
  let imageSize: Promise<ChildRun>;
  beforeAll(() => {
    const jpeg = readFileSync(PHOTO);
    // The frame header (SOF0..SOF2) holds the height and width.
    const sof = jpeg.findIndex((byte, i) => byte === 0xff && (jpeg[i + 1] ?? 0) >= 0xc0 && (jpeg[i + 1] ?? 0) <= 0xc2);
    const hugeJpeg = Buffer.from(jpeg);
    hugeJpeg.writeUInt16BE(65000, sof + 5);
    hugeJpeg.writeUInt16BE(65000, sof + 7);
    const bomb = join(tempDir(), 'bomb.png');
    writeFileSync(bomb, png(100_000, 100_000, Buffer.alloc(64)));
    const vit = JSON.stringify(fixture('vit-tiny-random'));
    const hugeHidden = JSON.stringify(modelCopy(patchJson('config.json', { hidden_size: 2 ** 40, num_attention_heads: 1 })));
    const hugeSize = JSON.stringify(modelCopy(patchJson('preprocessor_config.json', { size: { height: 1e9, width: 1e9 } })));
    images = runChild(
      {
        pngBomb: `const model = await load(${vit}); try { await model.predict(${JSON.stringify(bomb)}); } finally { model.dispose(); }`,
        jpegBomb: `const model = await load(${vit}); try { await model.predict(Buffer.from(${JSON.stringify(hugeJpeg.toString('base64'))}, 'base64')); } finally { model.dispose(); }`,
        rawPixels: `return vt.decodeImage({ data: new Uint8Array(48), width: 2 ** 30, height: 2 ** 30, channels: 3 });`,
        hugeHidden: `return load(${hugeHidden}, { pretrained: false });`,
        hugeProcessorSize: `const model = await load(${hugeSize}); try { await model.preprocess([${JSON.stringify(PHOTO)}]); } finally { model.dispose(); }`,
        emptyHugeTensor: `const model = await load(${vit}); try { await model.forward({ pixelValues: { dtype: 'float32', shape: [2 ** 32, 2 ** 32, 0, 1], data: new Float32Array(0) } }); } finally { model.dispose(); }`,
      },
      { timeoutMs: 60_000, limitMemory: true },
    );
    // Each alone: until refused up front, these allocate without end and are killed at the timeout
    // (the layers' sizing counts tens of thousands of layers before it stops).
    const manyLayers = JSON.stringify(modelCopy(patchJson('config.json', { num_hidden_layers: 1e9 })));
    layers = runChild({ manyLayers: `return load(${manyLayers}, { pretrained: false });` }, { timeoutMs: 90_000, limitMemory: true });
    imageSize = runChild({ hugeImageSize: `return load(${vit}, { imageSize: 100000 });` }, { timeoutMs: 15_000, limitMemory: true });
  });

  it('a PNG whose header claims 100000x100000', async () =>
    expectChildCase(await images, 'pngBomb', ErrorCode.IMAGE, /bomb\.png: PNG image is 100000x100000/, /decompression bomb/));
  it('a JPEG whose frame header claims 65000x65000', async () =>
    expectChildCase(await images, 'jpegBomb', ErrorCode.IMAGE, /JPEG image is 65000x65000/));
  it('raw pixels of 2^30 x 2^30 with 48 bytes of data', async () =>
    expectChildCase(await images, 'rawPixels', ErrorCode.IMAGE, /got 48 bytes of pixels, expected \d+ \(1073741824x1073741824x3\)/));
  it('a config.json with hidden_size 2^40: refused naming the file or field, not only the allocator', async () =>
    expectChildCase(await images, 'hugeHidden', [ErrorCode.CONFIG, ErrorCode.OUT_OF_MEMORY], /config\.json|hidden_size/));
  it('a preprocessor size of 10^9 x 10^9: refused naming the file or field', async () =>
    expectChildCase(await images, 'hugeProcessorSize', [ErrorCode.CONFIG, ErrorCode.OUT_OF_MEMORY], /preprocessor_config\.json|size/));
  it('a tensor of no elements whose other sizes overflow: an argument error naming it', async () =>
    expectChildCase(await images, 'emptyHugeTensor', ErrorCode.INVALID_ARGUMENT, /pixelValues\.shape/));
  it('a config.json with 10^9 hidden layers is refused naming num_hidden_layers', async () =>
    expectChildCase(await layers, 'manyLayers', [ErrorCode.CONFIG, ErrorCode.OUT_OF_MEMORY], /num_hidden_layers/));
  it('an imageSize of 100000 (position embeddings of 20 GB) is refused at once', async () =>
    expectChildCase(await imageSize, 'hugeImageSize', [ErrorCode.CONFIG, ErrorCode.OUT_OF_MEMORY], /image_?size/i));
});

describe('images', () => {
  let vit: VisionModel;
  beforeAll(async () => {
    vit = await load(fixture('vit-tiny-random'));
  });
  const file = (name: string, bytes: string | Buffer): string => {
    const path = join(tempDir(), name);
    writeFileSync(path, bytes);
    return path;
  };
  const jpeg = readFileSync(PHOTO);
  const chelsea = readFileSync(fixture('images', 'chelsea.png'));

  it.each([
    ['an empty buffer', () => new Uint8Array(0), /image 0: empty input \(0 bytes\)/],
    ['the first 200 bytes of a JPEG', () => jpeg.subarray(0, 200), /image 0: JPEG image file is truncated/],
    ['half a PNG', () => chelsea.subarray(0, chelsea.length >> 1), /image 0: PNG image file is truncated/],
    ['a text file named photo.jpg', () => file('photo.jpg', 'hello, not an image\n'), /photo\.jpg: not a JPEG, PNG, WebP or GIF image/],
    ['a GIF cut short', () => GIF.subarray(0, GIF.length - 8), /image 0: GIF image file is truncated/],
    ['a BMP', () => BMP, /image 0: not a JPEG, PNG, WebP or GIF image/],
    ['a WebP cut short', () => WEBP.subarray(0, 20), /image 0: WebP image file is truncated/],
    ['a PNG of 0x0 pixels', () => png(0, 0), /image 0: corrupt PNG header/],
    [
      'a PNG whose header checksum is wrong',
      () => {
        const bytes = png(4, 4);
        bytes.writeUInt8(bytes.readUInt8(29) ^ 0xff, 29); // the first byte of IHDR's CRC
        return bytes;
      },
      /image 0: corrupt PNG header: IHDR: CRC error/,
    ],
    ['a directory', () => tempDir(), /cannot read image file '.*': Is a directory/],
    ['a relative path to nothing', () => 'no-such-photo.jpg', /cannot open image file 'no-such-photo\.jpg': No such file or directory/],
  ])('%s is refused as an image, named', async (_what, input, named) => {
    await expectError(vit.predict(input()), ErrorCode.IMAGE, named);
  });

  it.each([
    ['a number', 42, /image 0: expected a file path, encoded image bytes \(Uint8Array\) or \{data, width, height, channels\}/],
    ['an empty object', {}, /image 0: raw pixels need data as a Uint8Array/],
    ['null among paths', [PHOTO, null], /image 1: expected a file path/],
    ['a Float32Array', new Float32Array(12), /image 0: expected a file path, encoded image bytes \(Uint8Array\)/],
    ['an ArrayBuffer', new ArrayBuffer(12), /image 0: .*Uint8Array/],
    ['raw pixels of width 0', { data: new Uint8Array(0), width: 0, height: 4, channels: 3 }, /image 0\.width: expected a positive integer/],
    ['raw pixels of 2 channels', { data: new Uint8Array(32), width: 4, height: 4, channels: 2 }, /image 0\.channels: expected 1, 3 or 4/],
    [
      'raw pixels with the width as a string',
      { data: new Uint8Array(48), width: '4', height: 4, channels: 3 },
      /image 0\.width: expected a positive integer/,
    ],
    ['an empty list', [], /predict: expected one or more images/],
  ])('%s is refused as an argument, named', async (_what, input, named) => {
    await expectError(vit.predict(input as never), ErrorCode.INVALID_ARGUMENT, named);
  });

  it('preprocess given one path instead of a list says so', async () => {
    await expectError(vit.preprocess(PHOTO as never), ErrorCode.INVALID_ARGUMENT, /preprocess: expected one or more images/);
  });

  it('decodeImage reads a GIF and a WebP as Pillow does, and refuses a BMP', async () => {
    // Pillow: the GIF is mode P, its one pixel index 0 (white), the transparent index; the WebP a transparent black pixel.
    const gif = await decodeImage(GIF);
    expect([gif.width, gif.height, gif.channels, ...gif.data]).toEqual([1, 1, 4, 255, 255, 255, 0]);
    const webp = await decodeImage(WEBP);
    expect([webp.width, webp.height, webp.channels, ...webp.data]).toEqual([1, 1, 4, 0, 0, 0, 0]);
    await expectError(decodeImage(BMP), ErrorCode.IMAGE, /not a JPEG, PNG, WebP or GIF image/);
  });
});

describe('tensors', () => {
  let vit: VisionModel;
  let detr: VisionModel;
  let segformer: VisionModel;
  let detrInputs: { pixelValues: Tensor; pixelMask?: Tensor };
  beforeAll(async () => {
    vit = await load(fixture('vit-tiny-random'));
    detr = await load(fixture('detr-tiny-random'), { modelType: 'object_detection' });
    segformer = await load(fixture('segformer-tiny-random'), { modelType: 'segmentation' });
    detrInputs = await detr.preprocess([PHOTO]);
  });
  const pixels = (shape = [2, 3, 32, 32]) => tensor('float32', shape);
  const box = () => tensor('float32', [1, 4], new Float32Array([0.5, 0.5, 0.2, 0.2]));

  it.each([
    [
      'a rank-5 tensor',
      () => ({ pixelValues: pixels([1, 1, 3, 32, 32]) }),
      /pixel_values: expected \[batch, channels, height, width\], got shape \[1, 1, 3, 32, 32\]/,
    ],
    ['4 channels for a 3-channel model', () => ({ pixelValues: pixels([1, 4, 32, 32]) }), /pixel_values: .*expected 3 but got 4/],
    ['int64 pixels', () => ({ pixelValues: tensor('int64', [1, 3, 32, 32]) }), /pixel_values: expected a floating-point tensor/],
    [
      'a plain array as data',
      () => ({ pixelValues: { dtype: 'float32', shape: [1, 3, 32, 32], data: new Array(3072).fill(0) } }),
      /pixelValues\.data: expected a Float32Array for dtype float32/,
    ],
    [
      'a Float64Array as float32 data',
      () => ({ pixelValues: { dtype: 'float32', shape: [1, 3, 32, 32], data: new Float64Array(3072) } }),
      /pixelValues\.data: expected a Float32Array/,
    ],
    [
      'a fractional size',
      () => ({ pixelValues: { dtype: 'float32', shape: [1, 3, 32, 32.5], data: new Float32Array(3072) } }),
      /pixelValues\.shape\[3\]: expected a non-negative integer/,
    ],
    [
      'a shape of 10^18 elements over 3 values',
      () => ({ pixelValues: { dtype: 'float32', shape: [1e6, 1e6, 1e6, 1], data: new Float32Array(3) } }),
      /pixelValues\.shape: too many elements/,
    ],
    [
      'data whose buffer was transferred away',
      () => {
        const data = new Float32Array(3072);
        structuredClone(data.buffer, { transfer: [data.buffer] });
        return { pixelValues: { dtype: 'float32', shape: [1, 3, 32, 32], data } };
      },
      /pixelValues\.data: holds 0 elements but shape needs 3072/,
    ],
    ['a negative class index', () => ({ pixelValues: pixels(), labels: int64([0, -5]) }), /labels: class index -5 is out of range for 5 labels/],
    [
      'float labels of the wrong shape',
      () => ({ pixelValues: pixels(), labels: tensor('float32', [2]) }),
      /labels: multi-label classification needs shape \[2, 5\], got \[2\]/,
    ],
    ['numbers as labels', () => ({ pixelValues: pixels(), labels: [0, 1] }), /labels\[0\]: expected \{classLabels, boxes\}/],
    // A classifier has no use for detection targets: ignoring them would return no loss without a word.
    [
      'detection targets for a classifier',
      () => ({ pixelValues: pixels([1, 3, 32, 32]), labels: [{ classLabels: int64([1]), boxes: box() }] }),
      /labels: .*classification.*tensor/,
    ],
  ])('ViT forward with %s is refused naming it', async (_what, inputs, named) => {
    await expectError(vit.forward(inputs() as never), ErrorCode.INVALID_ARGUMENT, named);
  });

  it.each([
    [
      'a pixel mask of the wrong size',
      () => ({ ...detrInputs, pixelMask: int64(Array(25).fill(1), [1, 5, 5]) }),
      /pixel_mask: expected shape \[1, 64, 95\], got \[1, 5, 5\]/,
    ],
    [
      'boxes of 3 numbers',
      () => ({ ...detrInputs, labels: [{ classLabels: int64([0]), boxes: tensor('float32', [1, 3]) }] }),
      /labels\[0\]\.boxes: expected a float32 tensor \[1, 4\]/,
    ],
    [
      'two targets for one image',
      () => ({ ...detrInputs, labels: [0, 1].map(() => ({ classLabels: int64([0]), boxes: box() })) }),
      /labels: 2 targets for a batch of 1 images/,
    ],
    [
      'class 999 of 3',
      () => ({ ...detrInputs, labels: [{ classLabels: int64([999]), boxes: box() }] }),
      /labels\[0\]\.class_labels: class 999 is out of range for 3 labels/,
    ],
    ['a label tensor', () => ({ ...detrInputs, labels: int64([0]) }), /labels: detection takes one \{class_labels, boxes\} per image, not a tensor/],
  ])('DETR forward with %s is refused naming it', async (_what, inputs, named) => {
    await expectError(detr.forward(inputs() as never), ErrorCode.INVALID_ARGUMENT, named);
  });

  it('SegFormer forward with a class index beyond its labels names the class', async () => {
    const labels = tensor('int64', [1, 64, 64], new BigInt64Array(64 * 64).fill(7n));
    await expectError(
      segformer.forward({ pixelValues: pixels([1, 3, 64, 64]), labels }),
      ErrorCode.INVALID_ARGUMENT,
      /labels: class 7 is out of range for 4 labels/,
    );
  });

  it('trainingStep with 3 labels for 2 images names both sizes', async () => {
    const trainer = new BaseTrainer({ model: vit, modelConfig: {} as ModelConfig, lrScheduler: 'constant' });
    await expectError(
      trainer.trainingStep({ pixelValues: pixels(), labels: int64([0, 1, 2]) }),
      ErrorCode.INVALID_ARGUMENT,
      /labels: batch size 3 does not match pixel_values' 2/,
    );
  });

  it('trainingStep without labels says what it takes', async () => {
    const trainer = new BaseTrainer({ model: vit, modelConfig: {} as ModelConfig, lrScheduler: 'constant' });
    await expectError(
      trainer.trainingStep({ pixelValues: pixels() } as never),
      ErrorCode.INVALID_ARGUMENT,
      /trainingStep: expected \{ pixelValues, pixelMask\?, labels \}/,
    );
  });
});

describe('arguments', () => {
  let vit: VisionModel;
  let detr: VisionModel;
  let segformer: VisionModel;
  beforeAll(async () => {
    vit = await load(fixture('vit-tiny-random'));
    detr = await load(fixture('detr-tiny-random'), { modelType: 'object_detection' });
    segformer = await load(fixture('segformer-tiny-random'), { modelType: 'segmentation' });
  });

  it.each([
    ['topK 0', { topK: 0 }, /predict: topK must be a positive integer, got 0/],
    ['topK -1', { topK: -1 }, /predict: topK must be a positive integer, got -1/],
    ['topK NaN', { topK: Number.NaN }, /predict: topK must be a positive integer, got NaN/],
    ['topK as a string', { topK: '3' }, /predict: topK must be a positive integer, got "3"/],
    ['threshold 1.5', { threshold: 1.5 }, /predict: threshold must be between 0 and 1, got 1\.5/],
    ['an unknown task', { task: 'depth' }, /predict: task must be 'semantic', 'instance' or 'panoptic', got "depth"/],
    ['options of null', null, /predict: options must be an object, got null/],
    ['options as a list', [3], /predict: options must be an object, got a list/],
    ['a misspelt option', { topk: 1 }, /predict: unknown option "topk", did you mean "topK"\?/],
    ['class ids to fuse below 0', { labelIdsToFuse: [-1] }, /predict: labelIdsToFuse must be an array of class indices/],
  ])('ViT predict with %s is refused naming it', async (_what, options, named) => {
    await expectError(vit.predict(PHOTO, options as never), ErrorCode.INVALID_ARGUMENT, named);
  });

  it('DETR predict with a threshold of NaN is refused naming it', async () => {
    await expectError(detr.predict(PHOTO, { threshold: Number.NaN }), ErrorCode.INVALID_ARGUMENT, /threshold must be between 0 and 1, got NaN/);
  });

  it('SegFormer predict with task "instance" says which models segment by instance', async () => {
    await expectError(segformer.predict(PHOTO, { task: 'instance' }), ErrorCode.INVALID_ARGUMENT, /task "instance" needs .*Mask2Former/);
  });

  it.each([
    [
      'getAvailableModels of an unknown type',
      () => HuggingFaceModelLoader.getAvailableModels('detection' as never),
      /unknown model type "detection"/,
    ],
    ['setNumThreads(-1)', () => setNumThreads(-1), /setNumThreads: expected an integer from 0/],
    ['setNumThreads("four")', () => setNumThreads('four' as never), /setNumThreads: expected a number/],
    [
      'setBatching("yes")',
      () => vit.setBatching('yes' as never),
      /^setBatching: expected true, false or \{ maxBatchSize\?, maxWaitMs\? \}, got "yes"/,
    ],
    [
      'a trainer of something that is not a model',
      () => new BaseTrainer({ model: {} as VisionModel, modelConfig: {} as ModelConfig }),
      /options\.model must be a VisionModel/,
    ],
  ])('%s throws naming the argument', (_what, attempt, named) => {
    expectError(attempt, ErrorCode.INVALID_ARGUMENT, named);
  });

  it.each([
    ['a negative seed', { seed: -1 }, /loadModel: seed must be a non-negative integer, got -1/],
    ['batches of 0 images', { batching: { maxBatchSize: 0 } }, /loadModel: batching\.maxBatchSize must be a positive integer, got 0/],
  ])('loadModel with %s is refused before loading', async (_what, options, named) => {
    await expectError(
      HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' }, options),
      ErrorCode.INVALID_ARGUMENT,
      named,
    );
  });

  it.each([
    ['save to ""', () => vit.save(''), /save: expected a directory path/],
    ['save to a number', () => vit.save(42 as never), /save: expected a directory path/],
    ['forward of a file name', () => vit.forward('image.jpg' as never), /forward: expected \{ pixelValues, pixelMask\?, labels\? \}/],
  ])('%s is refused naming the method', async (_what, attempt, named) => {
    await expectError(attempt(), ErrorCode.INVALID_ARGUMENT, named);
  });
});

describe('environment', () => {
  const saved = { ...process.env };
  const restore = (): void => {
    for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
    Object.assign(process.env, saved);
  };
  afterAll(restore);

  it.each([
    ['HF_HUB_ETAG_TIMEOUT', 'abc', /\$HF_HUB_ETAG_TIMEOUT must be a positive number of seconds, got "abc"/],
    ['HF_HUB_DOWNLOAD_TIMEOUT', '-5', /\$HF_HUB_DOWNLOAD_TIMEOUT must be a positive number of seconds, got "-5"/],
  ])('%s=%s is refused before any request', async (name, value, named) => {
    try {
      process.env[name] = value;
      delete process.env.HF_HUB_OFFLINE;
      process.env.HF_ENDPOINT = 'http://127.0.0.1:9'; // nothing listens: the check must come first
      const attempt = HuggingFaceModelLoader.loadModel({ modelName: 'acme/never-cached', modelType: 'classification', cacheDir: tempDir() });
      await expectError(attempt, ErrorCode.INVALID_ARGUMENT, named);
    } finally {
      restore();
    }
  });

  it('HF_HOME set to a file: an offline load names the cache it looked in', async () => {
    const file = join(tempDir(), 'not-a-directory');
    writeFileSync(file, '');
    try {
      Object.assign(process.env, { HF_HOME: file, HF_HUB_OFFLINE: '1' });
      delete process.env.HF_HUB_CACHE;
      delete process.env.HUGGINGFACE_HUB_CACHE;
      await expectError(
        HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit', modelType: 'classification' }),
        ErrorCode.MODEL_NOT_FOUND,
        join(file, 'hub', 'models--acme--vit'),
        /HF_HUB_OFFLINE is set/,
      );
    } finally {
      restore();
    }
  });

  it('HF_HUB_CACHE set to a file: a download fails as an I/O error naming the cache, not a raw ENOTDIR', async () => {
    const hub = await FakeHub.start();
    const file = join(tempDir(), 'not-a-directory');
    writeFileSync(file, '');
    try {
      hub.addRepo('acme/vit', fixture('vit-tiny-random'), '1234567890abcdef1234567890abcdef12345678');
      Object.assign(process.env, { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: file, HF_HOME: tempDir() });
      delete process.env.HF_HUB_OFFLINE;
      await expectError(
        HuggingFaceModelLoader.loadModel({ modelName: 'acme/vit', modelType: 'classification' }),
        ErrorCode.IO,
        /config\.json of "acme\/vit": cannot write to the cache/,
        file,
      );
    } finally {
      restore();
      await hub.close();
    }
  });

  it.each([
    ['RANK=abc', { RANK: 'abc', WORLD_SIZE: '2', MASTER_PORT: '29500' }, /RANK="abc" is not an integer/],
    ['RANK=5 of WORLD_SIZE=2', { RANK: '5', WORLD_SIZE: '2', MASTER_PORT: '29500' }, /RANK=5 is not below WORLD_SIZE=2/],
    ['MASTER_PORT=http', { RANK: '0', WORLD_SIZE: '1', MASTER_PORT: 'http' }, /MASTER_PORT="http" is not an integer/],
  ])('a torchrun environment with %s is refused naming the variable', async (_what, env, named) => {
    try {
      Object.assign(process.env, { MASTER_ADDR: '127.0.0.1', ...env });
      await expectError(ProcessGroup.init({ timeoutSeconds: 1 }), ErrorCode.CONFIG, named);
    } finally {
      restore();
    }
  });

  it('VISIONTORCH_MEMORY_LIMIT=8GB (not a size it reads) is refused naming the variable, not ignored (child process)', async () => {
    const child = await runChild(
      { load: `return load(${JSON.stringify(fixture('vit-tiny-random'))});` },
      { timeoutMs: 60_000, env: { VISIONTORCH_MEMORY_LIMIT: '8GB' } },
    );
    expectChildCase(child, 'load', ErrorCode.CONFIG, /VISIONTORCH_MEMORY_LIMIT: .*got "8GB"/);
  });

  it('OMP_NUM_THREADS and VISIONTORCH_CACHE_CPU_MEMORY that are not numbers: the process predicts with its defaults', async () => {
    const child = await runChild(
      {
        predict: `const model = await load(${JSON.stringify(fixture('vit-tiny-random'))});
const [ranked] = await model.predict(${JSON.stringify(PHOTO)});
if (ranked.length !== 5 || !(vt.runtimeInfo().computeThreads >= 1)) throw new Error('predicted ' + JSON.stringify(ranked));
return model;`,
      },
      { timeoutMs: 60_000, env: { OMP_NUM_THREADS: 'abc', VISIONTORCH_CACHE_CPU_MEMORY: 'lots' } },
    );
    expect(child.outcomes.get('predict'), child.stderr).toEqual({ resolved: true });
    expect(child.signal, child.stderr).toBeNull();
    expect(child.status, child.stderr).toBe(0);
  });
});

describe('misuse', () => {
  const modelConfig = {
    modelName: fixture('vit-tiny-random'),
    modelType: 'classification',
    numClasses: 2,
    ignoreMismatchedSizes: true,
  } as ModelConfig;
  let dataset: { format: 'imagefolder'; root: string; validationSplit: number };
  beforeAll(() => {
    const root = tempDir();
    for (const [label, image] of [
      ['cat', 'chelsea.png'],
      ['rocket', 'rocket.jpg'],
    ] as const) {
      mkdirSync(join(root, label));
      for (const copy of ['a', 'b']) copyFileSync(fixture('images', image), join(root, label, `${copy}-${image}`));
    }
    dataset = { format: 'imagefolder', root, validationSplit: 0 };
  });
  const newTrainer = async (options: Partial<ConstructorParameters<typeof BaseTrainer>[0]> = {}) => {
    const model = await load(modelConfig.modelName, modelConfig);
    return new BaseTrainer({ model, modelConfig, ...options });
  };
  const run = (extra: Record<string, unknown> = {}) => ({
    maxSteps: 2,
    batchSize: 2,
    logEvery: 1,
    dataset,
    outputDir: join(tempDir(), 'run'),
    ...extra,
  });

  it('after dispose(), stateDict, save, preprocess and setBatching refuse as disposed', async () => {
    const model = await load(fixture('vit-tiny-random'));
    model.dispose();
    await expectError(model.stateDict(), ErrorCode.DISPOSED, /ViTForImageClassification model was disposed/);
    await expectError(model.save(tempDir()), ErrorCode.DISPOSED, /was disposed/);
    await expectError(model.preprocess([PHOTO]), ErrorCode.DISPOSED, /was disposed/);
    expectError(() => model.setBatching(true), ErrorCode.DISPOSED, /was disposed/);
  });

  it('dispose() twice is harmless, and the getters still describe the model', async () => {
    const model = await load(fixture('vit-tiny-random'));
    model.dispose();
    expect(() => model.dispose()).not.toThrow();
    expect([model.architecture, model.modelType, model.labels.length, model.dtype]).toEqual([
      'ViTForImageClassification',
      'classification',
      5,
      'float32',
    ]);
    await expectError(model.predict(PHOTO), ErrorCode.DISPOSED, /was disposed/);
  });

  it('a trainer of a disposed model refuses at construction', async () => {
    const model = await load(fixture('vit-tiny-random'));
    model.dispose();
    expectError(() => new BaseTrainer({ model, modelConfig }), ErrorCode.DISPOSED, /was disposed/);
  });

  it.each([
    ['an existing file', 'model', 'model'],
    ['a path below a file', 'file/model', 'file'],
  ])('save() into %s fails as an I/O error naming the file in the way', async (_what, target, file) => {
    const model = await load(fixture('vit-tiny-random'));
    const dir = tempDir();
    writeFileSync(join(dir, file), 'x');
    await expectError(model.save(join(dir, target)), ErrorCode.IO, join(dir, file), /not a directory|exists/i);
  });

  it('save() into a directory it may not write fails as an I/O error naming it', async () => {
    const model = await load(fixture('vit-tiny-random'));
    // Permissions do not bind root: there, a directory of a file system that refuses new entries.
    const rootUser = process.getuid?.() === 0;
    const dir = rootUser ? '/sys' : tempDir();
    if (!rootUser) chmodSync(dir, 0o555);
    await expectError(model.save(join(dir, 'model')), ErrorCode.IO, join(dir, 'model'));
  });

  it('loading a directory while save() overwrites it gives the whole old or the whole new model, never a mix', async () => {
    const dir = join(tempDir(), 'model');
    const five = await load(fixture('vit-tiny-random'));
    const two = await load(modelConfig.modelName, modelConfig);
    await five.save(dir);
    const [, loaded] = await Promise.all([two.save(dir), load(dir)]);
    const outputs = await loaded.forward({ pixelValues: tensor('float32', [1, 3, 32, 32]) });
    expect([2, 5]).toContain(loaded.labels.length);
    expect(outputs.logits!.shape).toEqual([1, loaded.labels.length]);
  });

  it('train() twice at once on one trainer: the second is refused while the first runs, which completes', async () => {
    const trainer = await newTrainer();
    const first = trainer.train(run());
    await expectError(trainer.train(run()), ErrorCode.INVALID_ARGUMENT, /train: this trainer is running train\(\)/);
    expect((await first).globalStep).toBe(2);
  });

  it('trainingStep() while train() runs is refused', async () => {
    const trainer = await newTrainer({ lrScheduler: 'constant' });
    const running = trainer.train(run());
    const batch = { pixelValues: tensor('float32', [2, 3, 32, 32]), labels: int64([0, 1]) };
    await expectError(trainer.trainingStep(batch), ErrorCode.INVALID_ARGUMENT, /trainingStep: this trainer is running train\(\)/);
    await running;
    expect((await trainer.trainingStep(batch)).skipped).toBe(false);
  });

  it('an AbortSignal aborted before train() refuses the run, with its reason as the cause', async () => {
    const trainer = await newTrainer();
    const reason = new Error('the user cancelled');
    const error = await expectError(trainer.train(run(), { signal: AbortSignal.abort(reason) }), ErrorCode.ABORTED, /aborted before the run started/);
    expect(error.cause).toBe(reason);
  });

  it.each([
    ['a signal that is not an AbortSignal', { signal: 'stop' }, /train: options\.signal must be an AbortSignal/],
    ['an onProgress that is not a function', { onProgress: 'log' }, /train: options\.onProgress must be a function, got string/],
    ['a misspelt option', { onprogress: () => {} }, /train: unknown option "onprogress"/],
  ])('train() with %s is refused before the run', async (_what, options, named) => {
    const trainer = await newTrainer();
    await expectError(trainer.train(run(), options as never), ErrorCode.INVALID_ARGUMENT, named);
  });

  it('an onProgress that throws stops the run at that step and train() rejects with its error as the cause', async () => {
    const trainer = await newTrainer();
    const bug = new Error('a bug in the progress bar');
    let calls = 0;
    const error: CodedError = await expectError(
      trainer.train(run({ maxSteps: 20 }), {
        onProgress: () => {
          calls++;
          throw bug;
        },
      }),
      ErrorCode.ABORTED,
      /onProgress callback threw at step 1 \(a bug in the progress bar\)/,
      /checkpoint-\d+/,
    );
    expect(error.cause).toBe(bug);
    expect(calls).toBe(1);
  });

  it('an outputDir that is an existing file fails as an I/O error naming it, before the run', async () => {
    const trainer = await newTrainer();
    const file = join(tempDir(), 'output');
    writeFileSync(file, 'x');
    await expectError(trainer.train(run({ outputDir: file })), ErrorCode.IO, file);
  });

  it('resuming from a directory without a checkpoint names it', async () => {
    const trainer = await newTrainer();
    const missing = join(tempDir(), 'no-checkpoint');
    await expectError(trainer.train(run({ resumeFrom: missing })), ErrorCode.INVALID_ARGUMENT, /resume_from: no checkpoint in/, missing);
  });

  it('dispose() during train(): the run finishes as documented and resolves; later calls are refused', async () => {
    const trainer = await newTrainer();
    const { model } = trainer;
    const result = await trainer.train(run({ maxSteps: 3 }), { onProgress: (event) => event.step === 1 && model.dispose() });
    expect(result.globalStep).toBe(3);
    await expectError(trainer.train(run()), ErrorCode.DISPOSED, /was disposed/);
  });

  it('evaluate() of a manifest that does not exist names the file', async () => {
    const trainer = await newTrainer();
    const manifest = join(tempDir(), 'validation.csv');
    await expectError(trainer.evaluate({ format: 'csv', path: manifest }), ErrorCode.DATASET, manifest);
  });

  it('DistributedTrainer: an onProgress that throws stops the workers and rejects, instead of ending the launcher (child process)', async () => {
    const child = await runChild(
      {
        throwingCallback: `const modelConfig = ${JSON.stringify(modelConfig)};
const model = await vt.HuggingFaceModelLoader.loadModel(modelConfig);
const trainer = new vt.DistributedTrainer(new vt.BaseTrainer({ model, modelConfig }), { numWorkers: 1, threadsPerWorker: 1 });
try {
  await trainer.train(${JSON.stringify(run({ maxSteps: 20 }))}, { onProgress: () => { throw new Error('a bug in the progress bar'); } });
} finally {
  model.dispose();
}`,
      },
      { timeoutMs: 120_000 },
    );
    expectChildCase(child, 'throwingCallback', ErrorCode.ABORTED, /onProgress callback threw at step 1 \(a bug in the progress bar\)/);
  });

  it('dispose() with forwards, a save and a stateDict in flight, then exit: those calls settle and the process exits cleanly (child process)', async () => {
    const child = await runChild(
      {
        inFlight: `const model = await load(${JSON.stringify(fixture('vit-tiny-random'))});
const pixelValues = { dtype: 'float32', shape: [4, 3, 32, 32], data: new Float32Array(4 * 3 * 32 * 32) };
const calls = [...Array.from({ length: 6 }, () => model.forward({ pixelValues })), model.save(${JSON.stringify(join(tempDir(), 'saved'))}), model.stateDict()];
model.dispose();
const settled = await Promise.allSettled(calls);
const wrong = settled.filter((s) => s.status === 'rejected' && s.reason?.code !== 'ERR_VISIONTORCH_DISPOSED');
if (wrong.length > 0) throw wrong[0].reason;
await model.forward({ pixelValues });`,
      },
      { timeoutMs: 60_000 },
    );
    expectChildCase(child, 'inFlight', ErrorCode.DISPOSED, /was disposed/);
  });
});

describe('the command line', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });

  it.each([
    ['predict --top-k 0', ['predict', '--model', fixture('vit-tiny-random'), '--top-k', '0', PHOTO], /--top-k must be a positive integer, got "0"/],
    ['predict with an unknown flag', ['predict', '--model', fixture('vit-tiny-random'), '--bogus', PHOTO], /Unknown option '--bogus'/],
    ['train with a job file that does not exist', ['train', 'no-such-job.yaml'], /visiontorch train: config file not found: no-such-job\.yaml/],
  ])('%s exits with 2 (a usage or configuration error) and says why', (_what, args, named) => {
    const child = cli(...args);
    expect(child.signal, child.stderr).toBeNull();
    expect(child.status, child.stderr).toBe(2);
    expect(child.stderr).toMatch(named);
  });
});
