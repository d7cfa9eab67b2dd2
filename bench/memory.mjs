// Peak resident memory (RSS) of ViT-B/16 at 224, visiontorch against PyTorch eager (Debian's
// python3-torch, the same ViT in plain torch.nn: bench/peers/torch_memory.py), random weights:
//   node bench/memory.mjs [--model <dir with config.json>] [--batch 8] [--steps 3]
//                         [--case infer,train-fp32,train-bf16] [--json results.json]
// Each case runs in a fresh process per runtime, so that no peak carries over: float32 inference
// (a warm-up and `steps` forward passes, no gradients), and `steps` training steps (cross-entropy,
// backward, clipping at 1.0, AdamW) in float32 and under bf16 autocast. visiontorch runs each
// case twice, with its caching allocator and with VISIONTORCH_CACHE_CPU_MEMORY=0.
// Prints a table: RSS after the load, peak RSS (the kernel's VmHWM), the ratio of the peaks
// visiontorch / PyTorch (goal: at most 1.0), and the bytes the caching allocator holds at the end.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { option, PYTHON } from './lib.mjs';

const GOAL_RATIO = 1.0;
const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

/**
 * @typedef {object} Sample One process's memory, in MiB.
 * @property {number} importRssMiB resident after importing the runtime (node + the addon, python + torch)
 * @property {number} loadRssMiB resident after the model (and trainer, optimizer, inputs) is made
 * @property {number} loadPeakRssMiB the peak so far, after the load
 * @property {number[]} stepRssMiB resident after each forward pass or step
 * @property {number} endRssMiB resident at the end
 * @property {number} peakRssMiB the process's peak (VmHWM)
 * @property {number} [anonRssMiB] anonymous (heap) pages at the end
 * @property {number} [fileRssMiB] file-backed pages (libraries, mapped files) at the end
 * @property {number} [cachedMiB] visiontorch: what the caching allocator holds (free blocks) at the end
 * @property {number} [cachedAfterLoadMiB] visiontorch: the same after the load
 * @property {number} threads
 */

/** @type {Record<string, { title: string, mode: 'infer' | 'train', precision: 'fp32' | 'bf16' }>} */
const CASES = {
  infer: { title: 'inference, float32', mode: 'infer', precision: 'fp32' },
  'train-fp32': { title: 'training step, float32', mode: 'train', precision: 'fp32' },
  'train-bf16': { title: 'training step, bf16 autocast', mode: 'train', precision: 'bf16' },
};

if (args[0] === '--child') {
  await childRun(args[1], args[2], Number(args[3]), Number(args[4]));
} else {
  await main();
}

/** The kernel's resident-memory counters of this process (/proc/self/status), in MiB. */
function memoryStatus() {
  /** @type {Record<string, number>} */
  const values = {};
  for (const line of readFileSync('/proc/self/status', 'utf8').split('\n')) {
    const match = /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+) kB/.exec(line);
    if (match) values[match[1]] = Number(match[2]) / 1024;
  }
  return values;
}

/** One case in this process (visiontorch); prints one JSON line (a Sample). */
async function childRun(caseName, modelDir, batch, steps) {
  const { mode, precision } = CASES[caseName];
  const { BaseTrainer, HuggingFaceModelLoader, runtimeInfo, tensor } = await import('../dist/index.js');
  const { computeThreads } = runtimeInfo();
  const importRssMiB = memoryStatus().VmRSS;
  const cachedMiB = () => runtimeInfo().cachedMemoryBytes / 2 ** 20;

  const modelConfig = { modelName: modelDir, modelType: /** @type {const} */ ('classification'), pretrained: false };
  const model = await HuggingFaceModelLoader.loadModel(modelConfig);
  const channels = Number(model.config.num_channels ?? 3);
  const size = Number(model.config.image_size ?? 224);
  const pixels = tensor('float32', [batch, channels, size, size]);
  for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.37);
  const labels = tensor(
    'int64',
    [batch],
    BigInt64Array.from({ length: batch }, (_, i) => BigInt(i % model.labels.length)),
  );
  // As bench/training.mjs: AdamW (the trainer's default), clipping at 1.0.
  const trainer =
    mode === 'train'
      ? new BaseTrainer({
          model,
          modelConfig,
          learningRate: 1e-4,
          lrScheduler: 'constant',
          maxGradNorm: 1,
          mixedPrecision: precision === 'bf16' ? 'bf16' : 'no',
        })
      : undefined;
  const loaded = memoryStatus();
  const cachedAfterLoadMiB = cachedMiB();

  const stepRssMiB = [];
  // Inference: a warm-up pass first (the one that packs the linear layers' weights), as the
  // inference benchmark does; the PyTorch peer makes as many passes.
  const passes = mode === 'infer' ? steps + 1 : steps;
  for (let i = 0; i < passes; i++) {
    if (trainer) await trainer.trainingStep({ pixelValues: pixels, labels });
    else await model.forward({ pixelValues: pixels });
    stepRssMiB.push(memoryStatus().VmRSS);
  }
  const end = memoryStatus();
  /** @type {Sample} */
  const sample = {
    threads: computeThreads,
    importRssMiB,
    loadRssMiB: loaded.VmRSS,
    loadPeakRssMiB: loaded.VmHWM,
    stepRssMiB,
    endRssMiB: end.VmRSS,
    peakRssMiB: end.VmHWM,
    anonRssMiB: end.RssAnon,
    fileRssMiB: end.RssFile,
    cachedMiB: cachedMiB(),
    cachedAfterLoadMiB,
  };
  process.stdout.write(`${JSON.stringify(sample)}\n`);
  model.dispose();
}

async function main() {
  const modelDir = option(args, 'model', join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224'));
  const batch = Number(option(args, 'batch', '8'));
  const steps = Number(option(args, 'steps', '3'));
  const caseNames = option(args, 'case', Object.keys(CASES).join(',')).split(',');
  const jsonPath = option(args, 'json', undefined);
  for (const name of caseNames) if (!CASES[name]) throw new Error(`--case ${name}: expected one of ${Object.keys(CASES).join(', ')}`);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer, got ${option(args, 'steps')}`);

  const self = fileURLToPath(import.meta.url);
  const rows = [];
  let threads;
  let torchVersion;
  for (const name of caseNames) {
    const { title, mode, precision } = CASES[name];
    console.log(`${title}, batch ${batch}, ${steps} ${mode === 'infer' ? 'forward passes' : 'steps'}`);
    /** @type {(cache: boolean) => Sample} */
    const ours = (cache) =>
      runJsonProcess(process.execPath, [self, '--child', name, modelDir, String(batch), String(steps)], {
        VISIONTORCH_CACHE_CPU_MEMORY: cache ? '1' : '0',
      });
    const cached = ours(true);
    threads = cached.threads;
    const uncached = ours(false);
    const peer = runJsonProcess(PYTHON, [
      join(here, 'peers', 'torch_memory.py'),
      mode,
      join(modelDir, 'config.json'),
      String(batch),
      String(threads),
      String(mode === 'infer' ? steps + 1 : steps),
      precision,
    ]);
    torchVersion = peer.torch;
    const ratio = (/** @type {Sample} */ s) => s.peakRssMiB / peer.peakRssMiB;
    rows.push({
      case: name,
      title,
      visiontorch: { ...cached, ratio: ratio(cached), cachedShareOfPeak: cached.cachedMiB / cached.peakRssMiB },
      visiontorchCacheOff: { ...uncached, ratio: ratio(uncached) },
      pytorch: peer,
    });
  }

  const mib = (/** @type {number} */ value) => `${value.toFixed(0)} MiB`;
  const lines = [
    `| case (${modelDir.split('/').slice(-1)[0]}, batch ${batch}) | runtime | RSS after import | RSS after load | peak RSS | vs PyTorch | allocator cache at end |`,
    '|---|---|---|---|---|---|---|',
  ];
  for (const row of rows) {
    const { visiontorch: vt, visiontorchCacheOff: off, pytorch: pt } = row;
    lines.push(
      `| ${row.title} | visiontorch | ${mib(vt.importRssMiB)} | ${mib(vt.loadRssMiB)} | ${mib(vt.peakRssMiB)} | **${vt.ratio.toFixed(2)}x** | ${mib(vt.cachedMiB)} (${(vt.cachedShareOfPeak * 100).toFixed(0)}% of peak) |`,
      `| | visiontorch, cache off | ${mib(off.importRssMiB)} | ${mib(off.loadRssMiB)} | ${mib(off.peakRssMiB)} | ${off.ratio.toFixed(2)}x | |`,
      `| | PyTorch eager | ${mib(pt.importRssMiB)} | ${mib(pt.loadRssMiB)} | ${mib(pt.peakRssMiB)} | 1.00x | |`,
    );
  }
  console.log(`\n${lines.join('\n')}\n`);
  const worst = Math.max(...rows.map((row) => row.visiontorch.ratio));
  console.log(
    `${threads} threads; goal: peak RSS at most ${GOAL_RATIO.toFixed(1)}x PyTorch eager's in every case: ${worst <= GOAL_RATIO ? 'met' : `MISSED (worst ${worst.toFixed(2)}x)`}`,
  );

  const result = {
    benchmark: 'peak resident memory (VmHWM), one fresh process per case and runtime',
    model: modelDir.split('/').slice(-1)[0],
    batch,
    steps,
    threads,
    torch: torchVersion,
    goalRatio: GOAL_RATIO,
    goalMet: worst <= GOAL_RATIO,
    notes: 'MiB. ratio = visiontorch peak / PyTorch eager peak. cachedMiB: free blocks the caching allocator holds at the end.',
    cases: rows,
  };
  if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
}

/** Runs a process that prints one JSON line (its last line of output) and returns it parsed. */
function runJsonProcess(command, commandArgs, environment = {}) {
  let output;
  try {
    output = execFileSync(command, commandArgs, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...environment },
      maxBuffer: 16 * 2 ** 20,
    });
  } catch (error) {
    const detail = (error.stderr || error.message || '').trim().split('\n').slice(-3).join(' | ');
    throw new Error(`${command} ${commandArgs.join(' ')} failed: ${detail}`);
  }
  const last = output.trim().split('\n').at(-1);
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(`${command} ${commandArgs.join(' ')} printed ${JSON.stringify(last)}, expected one JSON line`);
  }
}
