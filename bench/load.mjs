// Cold start of a ViT-base safetensors checkpoint: wall time from loadModel() to the first
// predict() resolved, in fresh processes (nothing cached in-process; the OS page cache is warm
// after the first read), against PyTorch eager (Debian's python3-torch) reading the same file:
//   node bench/load.mjs [--runs 5] [--image <jpeg|png>] [--checkpoint <dir>] [--json results.json]
// The checkpoint (random weights, ~350 MB) is written once to a directory under os.tmpdir().
// Goal (issue "Speed"): under 0.5 s with a warm page cache.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { machineCpuTimes, median, option, otherCpuFraction, PYTHON, quietSamples } from './lib.mjs';

const GOAL_SECONDS = 0.5;
const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

if (args[0] === '--child') {
  await childRun(args[1], args[2]);
} else {
  await main();
}

/** One measured cold start; prints one JSON line. Runs in its own process. */
async function childRun(checkpoint, image) {
  // Importing the package and loading the addon (libtorch) come first, like Python's `import
  // torch`, so the measured span is the checkpoint's load and the first prediction alone.
  const { HuggingFaceModelLoader, runtimeInfo } = await import('../dist/index.js');
  const { computeThreads } = runtimeInfo();
  const start = performance.now();
  const model = await HuggingFaceModelLoader.loadModel({ modelName: checkpoint, modelType: 'classification' });
  const loaded = performance.now();
  const [top] = await model.predict(image, { topK: 1 });
  const predicted = performance.now();
  // Outside the measured span: a second prediction shows what the first one paid once.
  await model.predict(image, { topK: 1 });
  const secondPredictSeconds = (performance.now() - predicted) / 1000;
  const cpu = process.cpuUsage();
  const sample = {
    threads: computeThreads,
    startupSeconds: start / 1000, // process start to before loadModel: node, the package, the addon
    loadSeconds: (loaded - start) / 1000,
    firstPredictSeconds: (predicted - loaded) / 1000,
    totalSeconds: (predicted - start) / 1000,
    secondPredictSeconds,
    cpuSeconds: (cpu.user + cpu.system) / 1e6, // lets the parent tell other processes' CPU use from ours
    rssMiB: process.memoryUsage().rss / 2 ** 20,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
    top1: top[0].index,
  };
  process.stdout.write(`${JSON.stringify(sample)}\n`);
  model.dispose();
}

async function main() {
  const runs = Number(option(args, 'runs', '5'));
  const image = option(args, 'image', join(here, '..', 'test', 'fixtures', 'images', 'rocket.jpg'));
  const checkpoint = option(args, 'checkpoint', join(tmpdir(), 'visiontorch-bench', 'vit-base-patch16-224'));
  const jsonPath = option(args, 'json', undefined);
  if (!existsSync(image)) throw new Error(`--image ${image}: no such file`);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got ${option(args, 'runs')}`);

  await ensureCheckpoint(checkpoint);
  const ours = () => measuredProcess(process.execPath, [fileURLToPath(import.meta.url), '--child', checkpoint, image]);
  const threads = ours().threads; // also the warm-up: reads the file into the page cache
  const peerScript = join(here, 'peers', 'torch_load.py');
  const theirs = () => measuredProcess(PYTHON, [peerScript, checkpoint, image, String(threads)]);
  let peerProblem;
  try {
    theirs();
  } catch (error) {
    peerProblem = error.message;
    console.warn(`PyTorch peer skipped: ${peerProblem}`);
  }

  // Alternating runs, so that a slower or faster spell of the machine hits both alike.
  const samples = { visiontorch: [], pytorch: [] };
  for (let run = 0; run < runs; run++) {
    samples.visiontorch.push(ours());
    if (!peerProblem) samples.pytorch.push(theirs());
  }

  // On a shared machine other processes can take the cores mid-run; a sample during which they
  // used over 10% of the CPU is left out of the medians, as long as 3 samples are quiet.
  /** @type {(list: any[]) => Record<string, number> | undefined} */
  const summarize = (list) => {
    if (list.length === 0) return undefined;
    const used = quietSamples(list);
    const keys = ['totalSeconds', 'loadSeconds', 'firstPredictSeconds', 'secondPredictSeconds', 'startupSeconds', 'rssMiB', 'peakRssMiB'];
    /** @type {Record<string, number>} */
    const medians = Object.fromEntries(keys.map((key) => [key, median(used.map((s) => s[key]))]));
    return {
      ...medians,
      bestTotalSeconds: Math.min(...used.map((s) => s.totalSeconds)),
      samplesUsed: used.length,
    };
  };
  const contended = [...samples.visiontorch, ...samples.pytorch].filter((s) => s.otherCpuFraction > 0.1).length;
  if (contended > 0)
    console.warn(
      `warning: other processes used over 10% of the CPU during ${contended} of the runs; those runs are left out of the medians when at least 3 are quiet`,
    );
  const result = {
    benchmark: 'checkpoint load to first prediction (warm page cache, fresh process)',
    checkpoint: 'ViT-B/16 at 224, model.safetensors (random weights)',
    checkpointBytes: statSync(join(checkpoint, 'model.safetensors')).size,
    threads,
    runs,
    goalSeconds: GOAL_SECONDS,
    visiontorch: summarize(samples.visiontorch),
    pytorch: summarize(samples.pytorch),
    pytorchSkipped: peerProblem,
    // Same weights, same image, same preprocessing: the top class must agree.
    sameTop1: samples.pytorch.length ? samples.pytorch.every((s, i) => s.top1 === samples.visiontorch[i].top1) : undefined,
    samples,
  };
  result.goalMet = result.visiontorch.totalSeconds < GOAL_SECONDS;
  const ms = (seconds) => `${(seconds * 1000).toFixed(0)} ms`;
  const describe = (s) =>
    `${ms(s.totalSeconds)} (load ${ms(s.loadSeconds)} + first predict ${ms(s.firstPredictSeconds)}), RSS ${s.rssMiB.toFixed(0)} MiB`;
  console.log(
    `ViT-B/16 safetensors load to first prediction, ${threads} threads, median of ${result.visiontorch.samplesUsed}/${runs} runs: visiontorch ${describe(result.visiontorch)}` +
      (result.pytorch
        ? `; PyTorch eager ${describe(result.pytorch)}; ratio ${(result.pytorch.totalSeconds / result.visiontorch.totalSeconds).toFixed(2)}x`
        : '') +
      `; goal < ${ms(GOAL_SECONDS)}: ${result.goalMet ? 'met' : 'MISSED'}`,
  );
  if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
}

/** Writes the random-weight ViT-base checkpoint once (to a temporary name, renamed when complete). */
async function ensureCheckpoint(checkpoint) {
  if (existsSync(join(checkpoint, 'model.safetensors'))) return;
  const { HuggingFaceModelLoader } = await import('../dist/index.js');
  const config = join(here, '..', 'test', 'fixtures', 'configs', 'vit-base-patch16-224');
  const partial = `${checkpoint}.partial-${process.pid}`;
  mkdirSync(dirname(checkpoint), { recursive: true });
  console.log(`writing a ViT-base checkpoint to ${checkpoint} (once)`);
  const model = await HuggingFaceModelLoader.loadModel({ modelName: config, modelType: 'classification', pretrained: false }, { seed: 0 });
  try {
    await model.save(partial);
    rmSync(checkpoint, { recursive: true, force: true });
    renameSync(partial, checkpoint);
  } finally {
    model.dispose();
    rmSync(partial, { recursive: true, force: true });
  }
}

/** runJsonProcess, with the share of the machine's CPU that other processes took meanwhile. */
function measuredProcess(command, commandArgs) {
  const before = machineCpuTimes();
  const sample = runJsonProcess(command, commandArgs);
  return { ...sample, otherCpuFraction: otherCpuFraction(before, machineCpuTimes(), sample.cpuSeconds) };
}

/** Runs a process that prints one JSON line (its last line of output) and returns it parsed. */
function runJsonProcess(command, commandArgs) {
  let output;
  try {
    output = execFileSync(command, commandArgs, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
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
