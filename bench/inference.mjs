// Inference throughput of visiontorch against onnxruntime-node and PyTorch eager (Debian's
// python3-torch), the same architectures with random weights, run alternately in rounds within one
// run (visiontorch, onnxruntime, PyTorch, visiontorch, ..., 200 ms apart) so that a busy machine
// slows all three alike. Prepare the peers first with `bash bench/setup-peers.sh`.
//
//   node bench/inference.mjs [--model vit|vit-tiny|resnet50|swin|segformer|detr|all (or a comma list)]
//                            [--batch 1,8] [--dtype float32,bfloat16,int8] [--rounds 3] [--warmup 1]
//                            [--json results.json] [--png chart.png]
//
// Prints progress, then a table of images/s (batch / median seconds per batch) with the ratios
// visiontorch / onnxruntime and visiontorch / PyTorch (above 1: visiontorch is faster).
// onnxruntime has no bf16 kernels on CPU, so bfloat16 rows compare against its fp32 numbers.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HuggingFaceModelLoader, runtimeInfo, tensor } from '../dist/index.js';
import { writeFileAtomically } from '../dist/render/canvas.js';
import { RUNTIMES, renderInferenceChart } from './chart.mjs';
import { loadOnnxRuntime, median, startPeer } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const peersDir = join(here, '.peers');
const onnxDir = join(peersDir, 'onnx');
const modelsPath = join(here, 'inference-models.json');
const MODELS = JSON.parse(readFileSync(modelsPath, 'utf8'));
// int8: float32 models with dynamic int8 linear layers (visiontorch's quantization: 'int8',
// PyTorch's quantize_dynamic); onnxruntime runs its float32 export.
const DTYPE_ALIASES = { float32: 'float32', fp32: 'float32', bfloat16: 'bfloat16', bf16: 'bfloat16', int8: 'int8' };
// Pause before each timed pass, ms.
const SETTLE_MS = 200;
const SHORT_DTYPE = { float32: 'fp32', bfloat16: 'bf16', int8: 'int8' };
const RUNTIME_NAMES = Object.fromEntries(RUNTIMES.map((r) => [r.key, r.name]));

/** Setup and usage problems: the message alone, without a stack trace. */
function fail(message) {
  console.error(`bench/inference.mjs: ${message}`);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: node bench/inference.mjs [--model vit|vit-tiny|resnet50|swin|segformer|detr|all (or a comma list)]
         [--batch 1,8] [--dtype float32,bfloat16,int8] [--rounds 3] [--warmup 1] [--json file] [--png file]`;

function parseOptions(argv) {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    process.exit(0);
  }
  const known = new Set(['model', 'batch', 'dtype', 'rounds', 'warmup', 'json', 'png']);
  const values = {};
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].startsWith('--') ? argv[i].slice(2) : undefined;
    if (!name || !known.has(name)) fail(`unknown argument ${argv[i]}; expected --${[...known].join(', --')}`);
    if (i + 1 >= argv.length) fail(`--${name} needs a value`);
    values[name] = argv[i + 1];
  }
  const list = (value) =>
    value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const positiveInteger = (name, value, min = 1) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got ${value}`);
    return n;
  };
  const modelArg = values.model ?? 'all';
  const models = modelArg === 'all' ? Object.keys(MODELS) : list(modelArg);
  for (const model of models) {
    if (!MODELS[model]) fail(`unknown model ${model}; expected one of ${Object.keys(MODELS).join(', ')} or all`);
  }
  const dtypes = list(values.dtype ?? 'float32,bfloat16').map((d) => {
    if (!DTYPE_ALIASES[d]) fail(`unknown dtype ${d}; expected float32 (fp32), bfloat16 (bf16) or int8`);
    return DTYPE_ALIASES[d];
  });
  return {
    models,
    dtypes: [...new Set(dtypes)],
    batches: list(values.batch ?? '1,8').map((b) => positiveInteger('batch', b)),
    rounds: positiveInteger('rounds', values.rounds ?? '3'),
    warmup: positiveInteger('warmup', values.warmup ?? '1', 0),
    json: values.json,
    png: values.png,
  };
}

// ---------------------------------------------------------------------------------------------
// Runtimes

const seconds = async (run) => {
  const start = performance.now();
  await run();
  return (performance.now() - start) / 1000;
};

const formatSeconds = (s) => (s >= 10 ? s.toFixed(1) : s.toFixed(2));
const formatRate = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const errorMessage = (error) => (error instanceof Error ? error.message : String(error));

// ---------------------------------------------------------------------------------------------
// The run

const options = parseOptions(process.argv.slice(2));
const threads = runtimeInfo().computeThreads;
let ort;
let ortVersion;
try {
  ({ ort, version: ortVersion } = loadOnnxRuntime());
} catch (error) {
  fail(errorMessage(error));
}
for (const model of options.models) {
  const onnxPath = join(onnxDir, `${model}.onnx`);
  if (!existsSync(onnxPath)) fail(`no ONNX export of ${model} at ${relative(process.cwd(), onnxPath)}: run bash bench/setup-peers.sh`);
}
const peer = startPeer(join(here, 'peers', 'torch_inference.py'));
const loadBefore = loadavg()[0];
console.log(
  `inference benchmark: ${options.models.join(', ')}; batch ${options.batches.join(', ')}; ${options.dtypes.join(', ')}; ` +
    `${options.rounds} rounds after ${options.warmup} warm-up; ${threads} threads; load average ${loadBefore.toFixed(2)}`,
);

const cases = [];
const total = options.models.length * options.dtypes.length * options.batches.length;
let torchVersion;

for (const modelKey of options.models) {
  const entry = MODELS[modelKey];
  const configDir = join(here, entry.config);
  const size = entry.imageSize;
  let session;
  let sessionError;
  try {
    session = await ort.InferenceSession.create(join(onnxDir, `${modelKey}.onnx`), {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
  } catch (error) {
    sessionError = `onnxruntime could not load ${modelKey}.onnx: ${errorMessage(error)}`;
    console.log(`  ${sessionError}`);
  }

  for (const dtype of options.dtypes) {
    let model;
    let modelError;
    try {
      const precision = dtype === 'int8' ? { dtype: 'float32', quantization: 'int8' } : { dtype };
      // The command line's dtypes, checked by loadModel at run time.
      const config = /** @type {import('visiontorch').LoadableConfig} */ ({
        modelName: configDir,
        modelType: entry.modelType,
        pretrained: false,
        ...precision,
      });
      model = await HuggingFaceModelLoader.loadModel(config);
    } catch (error) {
      modelError = `visiontorch could not load ${relative(process.cwd(), configDir)} as ${dtype}: ${errorMessage(error)}`;
      console.log(`  ${modelError}`);
    }

    for (const batch of options.batches) {
      const label = `${entry.title} ${size}px b${batch} ${SHORT_DTYPE[dtype]}`;
      console.log(`[${cases.length + 1}/${total}] ${entry.title}, ${size}x${size}, batch ${batch}, ${dtype}`);
      const pixels = tensor('float32', [batch, 3, size, size]);
      for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.13);
      const ortInput = new ort.Tensor('float32', pixels.data, [batch, 3, size, size]);

      const failures = {};
      if (modelError) failures.visiontorch = modelError;
      if (sessionError) failures.onnxruntime = sessionError;
      try {
        const reply = await peer.request({
          op: 'setup',
          model: entry.architecture ?? modelKey,
          config: join(configDir, 'config.json'),
          imageSize: size,
          batch,
          dtype,
          threads,
          channelsLast: entry.channelsLast,
        });
        torchVersion = reply.torch;
      } catch (error) {
        failures.pytorch = errorMessage(error);
      }

      // Each runner times one forward pass of the whole batch, in seconds.
      const runners = {
        visiontorch: () => seconds(() => model.forward({ pixelValues: pixels })),
        onnxruntime: () => seconds(() => session.run({ pixel_values: ortInput })),
        pytorch: async () => (await peer.request({ op: 'infer', steps: 1 })).seconds[0],
      };
      const samples = { visiontorch: [], onnxruntime: [], pytorch: [] };
      const timeRound = async (title, record) => {
        const parts = [];
        for (const key of Object.keys(runners)) {
          if (failures[key]) continue;
          // The previous runtime's threads spin for a while after its pass (onnxruntime's pool,
          // OpenMP in the PyTorch peer): let them go quiet before timing the next.
          await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
          try {
            const s = await runners[key]();
            if (record) samples[key].push(s);
            parts.push(`${RUNTIME_NAMES[key]} ${formatSeconds(s)} s`);
          } catch (error) {
            failures[key] = errorMessage(error);
            parts.push(`${RUNTIME_NAMES[key]} failed: ${failures[key]}`);
          }
        }
        console.log(`  ${title}: ${parts.join(', ') || 'nothing ran'}`);
      };
      for (let i = 0; i < options.warmup; i++) await timeRound(`warm-up ${i + 1}/${options.warmup}`, false);
      for (let round = 0; round < options.rounds; round++) await timeRound(`round ${round + 1}/${options.rounds}`, true);

      const summarize = (key, extra) => {
        if (failures[key]) return { ...extra, error: failures[key] };
        const perBatch = median(samples[key]);
        // The best round as well: on a shared machine, other work only ever adds time.
        const best = Math.min(...samples[key]);
        return { ...extra, secondsPerBatch: perBatch, imagesPerSecond: batch / perBatch, bestImagesPerSecond: batch / best, seconds: samples[key] };
      };
      const result = {
        model: modelKey,
        title: entry.title,
        label,
        config: relative(join(here, '..'), configDir),
        imageSize: size,
        batch,
        dtype,
        visiontorch: summarize('visiontorch', { dtype }),
        onnxruntime: summarize('onnxruntime', { dtype: 'float32' }),
        pytorch: summarize('pytorch', { dtype, layout: entry.channelsLast ? 'channels_last' : 'contiguous' }),
      };
      const ratio = (peerKey) => result.visiontorch.imagesPerSecond / result[peerKey].imagesPerSecond;
      result.ratios = { visiontorchOverOnnxruntime: ratio('onnxruntime') || null, visiontorchOverPytorch: ratio('pytorch') || null };
      cases.push(result);
      const rates = RUNTIMES.map(({ key, name }) =>
        result[key].error
          ? `${name} failed`
          : `${name} ${formatRate(result[key].imagesPerSecond)} img/s${key === 'onnxruntime' && dtype !== 'float32' ? ' (fp32)' : ''}`,
      );
      // The team the last pass ran on: fewer threads than configured means visiontorch judged
      // the pass small or the cores taken by other processes (native/core/runtime/inference_team.h).
      const { lastInferenceThreads, cpuContended } = runtimeInfo();
      console.log(`  => ${rates.join(', ')}; visiontorch's last pass on ${lastInferenceThreads} threads${cpuContended ? ', contended' : ''}`);
    }
    model?.dispose();
  }
  await session?.release();
}
peer.close();
const loadAfter = loadavg()[0];

// ---------------------------------------------------------------------------------------------
// Report

const cell = (r, note = '') => (r.error ? 'failed' : `${formatRate(r.imagesPerSecond)}${note}`);
const ratioCell = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : '-');
const lines = [
  `Inference, images/s (median of ${options.rounds} rounds, ${threads} threads, random weights; ratio above 1: visiontorch faster)`,
  '',
  '| model | input | batch | dtype | visiontorch | onnxruntime-node | PyTorch eager | vs ORT | vs PyTorch |',
  '|---|---|---|---|---|---|---|---|---|',
  ...cases.map(
    (c) =>
      `| ${c.title} | ${c.imageSize}x${c.imageSize} | ${c.batch} | ${c.dtype} | ${cell(c.visiontorch)} | ` +
      `${cell(c.onnxruntime, c.dtype === 'float32' ? '' : ' (fp32)')} | ${cell(c.pytorch)} | ` +
      `${ratioCell(c.ratios.visiontorchOverOnnxruntime)} | ${ratioCell(c.ratios.visiontorchOverPytorch)} |`,
  ),
  '',
  `load average (1 min) ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after, on ${cpus().length} CPUs`,
];
console.log(`\n${lines.join('\n')}`);
const failed = cases.flatMap((c) => RUNTIMES.filter((r) => c[r.key].error).map((r) => `${c.label}: ${r.name}: ${c[r.key].error}`));
if (failed.length) console.log(`\nfailures:\n  ${failed.join('\n  ')}`);

if (options.json) {
  const report = {
    benchmark: 'inference (no_grad forward pass, random weights)',
    threads,
    rounds: options.rounds,
    warmup: options.warmup,
    machine: { cpu: cpus()[0]?.model, cpus: cpus().length, loadAverageBefore: loadBefore, loadAverageAfter: loadAfter },
    versions: { visiontorchTorch: runtimeInfo().torchVersion, onnxruntimeNode: ortVersion, pytorch: torchVersion ?? null, node: process.version },
    notes: [
      'onnxruntime-node runs fp32 in every case: it has no bf16 kernels on CPU.',
      'PyTorch eager runs bf16 as model.to(torch.bfloat16) with a bf16 input, under torch.no_grad().',
      'Seconds are per forward pass of the whole batch; imagesPerSecond = batch / median(seconds).',
    ],
    cases,
  };
  mkdirSync(dirname(options.json), { recursive: true });
  writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`wrote ${options.json}`);
}
if (options.png) {
  const chartCases = cases.map((c) => ({
    label: c.label,
    results: {
      visiontorch: c.visiontorch,
      onnxruntime: { ...c.onnxruntime, note: c.dtype === 'float32' ? undefined : 'fp32' },
      pytorch: c.pytorch,
    },
  }));
  const subtitle = `images/s, median of ${options.rounds} rounds, ${threads} threads; bars scaled within each case`;
  await writeFileAtomically(
    options.png,
    renderInferenceChart(chartCases, { title: 'visiontorch inference against onnxruntime-node and PyTorch eager', subtitle }),
  );
  console.log(`wrote ${options.png}`);
}
if (failed.length) process.exitCode = 1;
