// Latency under CPU contention: batch-1 forward passes of visiontorch and onnxruntime-node, one
// request at a time with a pause between requests (a server's pattern), first on an idle machine,
// then while a sibling process keeps one core busy (a busy loop in another Node process):
//   node bench/contention.mjs [--model vit-tiny,vit (keys of bench/inference-models.json)]
//                             [--requests 200] [--pause-ms 5] [--burners 1] [--json results.json]
// The two runtimes take turns in blocks of 20 requests, with a pause between blocks so that one
// runtime's spinning threads have gone quiet before the other is timed. Prints p50/p99 latency per
// runtime and phase, the ratios (above 1: visiontorch faster) and how much the load slowed each.
import { fork } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HuggingFaceModelLoader, runtimeInfo, tensor } from '../dist/index.js';
import { loadOnnxRuntime, option, quantile } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

// A busy sibling: this file run with --burn spins until its parent goes away.
if (args.includes('--burn')) {
  process.on('disconnect', () => process.exit(0));
  const spin = () => {
    const until = performance.now() + 50;
    while (performance.now() < until);
    setImmediate(spin);
  };
  spin();
} else {
  await main();
}

async function main() {
  const MODELS = JSON.parse(readFileSync(join(here, 'inference-models.json'), 'utf8'));
  const models = option(args, 'model', 'vit-tiny,vit').split(',');
  const requests = Number(option(args, 'requests', '200'));
  const pauseMs = Number(option(args, 'pause-ms', '5'));
  const burners = Number(option(args, 'burners', '1'));
  const jsonPath = option(args, 'json', undefined);
  for (const key of models) if (!MODELS[key]) throw new Error(`unknown model ${key}; expected one of ${Object.keys(MODELS).join(', ')}`);
  if (!(requests >= 20) || !(pauseMs >= 0) || !(burners >= 1)) throw new Error('--requests must be >= 20, --pause-ms >= 0, --burners >= 1');

  const threads = runtimeInfo().computeThreads;
  const { ort, version: ortVersion } = loadOnnxRuntime();
  const onnxDir = join(here, '.peers', 'onnx');
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const BLOCK = 20;
  const SETTLE_MS = 200;

  /** Latencies in ms of `count` requests per runtime, the runtimes alternating in blocks. */
  async function measure(runners, count) {
    const latencies = Object.fromEntries(Object.keys(runners).map((name) => [name, []]));
    for (let done = 0; done < count; done += BLOCK) {
      for (const [name, run] of Object.entries(runners)) {
        await sleep(SETTLE_MS);
        for (let i = 0; i < Math.min(BLOCK, count - done); i++) {
          const start = performance.now();
          await run();
          latencies[name].push(performance.now() - start);
          await sleep(pauseMs);
        }
      }
    }
    return latencies;
  }

  function startBurners() {
    const children = Array.from({ length: burners }, () => fork(fileURLToPath(import.meta.url), ['--burn'], { stdio: 'inherit' }));
    return () => {
      for (const child of children) child.kill();
    };
  }

  const results = [];
  console.log(
    `contention benchmark: ${models.join(', ')}; batch 1 float32; ${requests} requests per runtime and phase, ${pauseMs} ms apart; ` +
      `${threads} threads; load: ${burners} busy sibling process(es) on ${cpus().length} CPUs`,
  );
  for (const key of models) {
    const entry = MODELS[key];
    const size = entry.imageSize;
    const onnxPath = join(onnxDir, `${key}.onnx`);
    if (!existsSync(onnxPath)) throw new Error(`no ONNX export of ${key} at ${relative(process.cwd(), onnxPath)}: run bash bench/setup-peers.sh`);
    const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
    const model = await HuggingFaceModelLoader.loadModel({ modelName: join(here, entry.config), modelType: 'classification', pretrained: false });
    const pixels = tensor('float32', [1, 3, size, size]);
    for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.13);
    const ortInput = new ort.Tensor('float32', pixels.data, [1, 3, size, size]);
    const runners = {
      visiontorch: () => model.forward({ pixelValues: pixels }),
      onnxruntime: () => session.run({ pixel_values: ortInput }),
    };
    await measure(runners, BLOCK); // warm-up: first-call packing, allocator, thread start
    const phases = {};
    for (const phase of ['idle', 'loaded']) {
      const stop = phase === 'loaded' ? startBurners() : () => {};
      if (phase === 'loaded') await sleep(500);
      try {
        const latencies = await measure(runners, requests);
        phases[phase] = Object.fromEntries(
          Object.entries(latencies).map(([name, ms]) => [name, { p50: quantile(ms, 0.5), p99: quantile(ms, 0.99), ms }]),
        );
      } finally {
        stop();
      }
      const line = Object.entries(phases[phase]).map(([name, r]) => `${name} p50 ${r.p50.toFixed(2)} ms p99 ${r.p99.toFixed(2)} ms`);
      console.log(`  ${entry.title} ${phase}: ${line.join(', ')}`);
    }
    model.dispose();
    await session.release();
    results.push({ model: key, title: entry.title, imageSize: size, phases });
  }

  const f = (ms) => (ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
  const x = (v) => `${v.toFixed(2)}x`;
  const lines = [
    `Batch-1 float32 latency, ms (${requests} requests per runtime and phase; loaded: ${burners} busy sibling process(es); ratio above 1: visiontorch faster)`,
    '',
    '| model | phase | visiontorch p50 | p99 | onnxruntime-node p50 | p99 | vs ORT p50 | vs ORT p99 |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    for (const [phase, p] of Object.entries(r.phases)) {
      const v = p.visiontorch;
      const o = p.onnxruntime;
      lines.push(`| ${r.title} | ${phase} | ${f(v.p50)} | ${f(v.p99)} | ${f(o.p50)} | ${f(o.p99)} | ${x(o.p50 / v.p50)} | ${x(o.p99 / v.p99)} |`);
    }
  }
  lines.push('', 'Slowdown under load (loaded p50 / idle p50):');
  for (const r of results) {
    const slow = (name) => x(r.phases.loaded[name].p50 / r.phases.idle[name].p50);
    lines.push(`  ${r.title}: visiontorch ${slow('visiontorch')}, onnxruntime-node ${slow('onnxruntime')}`);
  }
  console.log(`\n${lines.join('\n')}`);
  if (jsonPath) {
    const report = {
      benchmark: 'batch-1 float32 forward latency, idle and with busy sibling processes',
      threads,
      requests,
      pauseMs,
      burners,
      machine: { cpu: cpus()[0]?.model, cpus: cpus().length },
      versions: { visiontorchTorch: runtimeInfo().torchVersion, onnxruntimeNode: ortVersion, node: process.version },
      results,
    };
    mkdirSync(dirname(jsonPath), { recursive: true });
    writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`wrote ${jsonPath}`);
  }
}
