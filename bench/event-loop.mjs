// Event-loop responsiveness while a model infers or trains: the JavaScript thread must stay free,
// since every computing call runs on the addon's compute thread. Each phase runs a JS workload
// (a 1 ms timer and an HTTP server on 127.0.0.1 answering a client in this process, 100
// requests/s) beside the model's work, and measures with perf_hooks.monitorEventLoopDelay:
//   node bench/event-loop.mjs [--seconds 10] [--only idle,forward,...] [--threads N] [--json results.json]
// Phases: idle (nothing computing), forward and predict (ViT-B/16, batch 8), step-vit-base
// (BaseTrainer.trainingStep, ViT-B/16 batch 8), step-small (the Fashion-MNIST ViT, batch 128),
// train (trainer.train of config/model_config.yaml, shortened, with evaluations and checkpoints).
// --threads sets the compute threads (default: one per core), e.g. 1 to leave a core to Node.
// Goal (issue "Speed"): event-loop delay p99 under 10 ms in every phase.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, HuggingFaceModelLoader, loadConfig, runtimeInfo, setNumThreads, tensor } from '../dist/index.js';
import { machineCpuTimes, option, otherCpuFraction, quantile, warnIfMachineBusy } from './lib.mjs';

const GOAL_P99_MS = 10;
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const args = process.argv.slice(2);
const seconds = Number(option(args, 'seconds', '10'));
const jsonPath = option(args, 'json', undefined);
if (!(seconds > 0)) throw new Error(`--seconds must be a positive number, got ${option(args, 'seconds')}`);
const allPhases = ['idle', 'forward', 'predict', 'step-vit-base', 'step-small', 'train'];
const phases = option(args, 'only', allPhases.join(',')).split(',');
for (const name of phases) {
  if (!allPhases.includes(name)) throw new Error(`--only: unknown phase "${name}" (phases: ${allPhases.join(', ')})`);
}

const threads = option(args, 'threads', undefined);
if (threads !== undefined) {
  if (!/^[1-9][0-9]*$/.test(threads)) throw new Error(`--threads must be a positive integer, got ${threads}`);
  setNumThreads(Number(threads));
}
const machineLoad = await warnIfMachineBusy();
const { computeThreads } = runtimeInfo();
const server = await startServer();
const results = [];

const vitBaseConfig = {
  modelName: join(root, 'test', 'fixtures', 'configs', 'vit-base-patch16-224'),
  modelType: /** @type {const} */ ('classification'),
  pretrained: false,
};
const needsVitBase = phases.some((p) => ['forward', 'predict', 'step-vit-base'].includes(p));
const vitBase = needsVitBase ? await HuggingFaceModelLoader.loadModel(vitBaseConfig, { seed: 0 }) : undefined;
const batch = 8;
const pixels = tensor('float32', [batch, 3, 224, 224]);
for (let i = 0; i < pixels.data.length; i++) pixels.data[i] = Math.sin(i * 0.37);
const photos = ['images/rocket.jpg', 'images/chelsea.png', 'coco-sample/000000039769.jpg'].map((p) => join(root, 'test', 'fixtures', p));
const images = Array.from({ length: batch }, (_, i) => photos[i % photos.length]);

for (const name of phases) {
  if (name === 'idle') {
    results.push(await measure(name, 'nothing computing', async () => sleep(seconds * 1000), { minIterations: 1, seconds: 0 }));
  } else if (name === 'forward') {
    await vitBase.forward({ pixelValues: pixels }); // warm-up outside the measurement
    results.push(await measure(name, 'ViT-B/16 forward, batch 8', () => vitBase.forward({ pixelValues: pixels })));
  } else if (name === 'predict') {
    await vitBase.predict(images);
    results.push(await measure(name, 'ViT-B/16 predict, 8 image files', () => vitBase.predict(images)));
  } else if (name === 'step-vit-base') {
    const trainer = new BaseTrainer({ model: vitBase, modelConfig: vitBaseConfig, learningRate: 1e-4, lrScheduler: 'constant' });
    const labels = tensor(
      'int64',
      [batch],
      BigInt64Array.from({ length: batch }, (_, i) => BigInt(i)),
    );
    await trainer.trainingStep({ pixelValues: pixels, labels }); // allocates the optimizer state
    results.push(
      await measure(name, 'ViT-B/16 trainingStep, batch 8', () => trainer.trainingStep({ pixelValues: pixels, labels }), { minIterations: 2 }),
    );
  } else if (name === 'step-small') {
    const modelConfig = {
      modelName: join(root, 'config', 'models', 'vit-fashion-mnist'),
      modelType: /** @type {const} */ ('classification'),
      pretrained: false,
    };
    const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 0 });
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 1e-3, lrScheduler: 'constant', mixedPrecision: 'bf16' });
    const small = tensor('float32', [128, 1, 28, 28]);
    for (let i = 0; i < small.data.length; i++) small.data[i] = Math.sin(i * 0.11);
    const labels = tensor(
      'int64',
      [128],
      BigInt64Array.from({ length: 128 }, (_, i) => BigInt(i % 10)),
    );
    await trainer.trainingStep({ pixelValues: small, labels });
    results.push(await measure(name, 'Fashion-MNIST ViT trainingStep, batch 128, bf16', () => trainer.trainingStep({ pixelValues: small, labels })));
    model.dispose();
  } else if (name === 'train') {
    results.push(await measureTrain());
  }
}
vitBase?.dispose();
server.close();

const result = {
  benchmark: 'event-loop delay while computing',
  threads: computeThreads,
  goalP99Ms: GOAL_P99_MS,
  machineLoadBefore: machineLoad,
  phases: results,
};
result.goalMet = results.every((r) => r.eventLoopDelayMs.p99 < GOAL_P99_MS);
for (const r of results) {
  const d = r.eventLoopDelayMs;
  console.log(
    `${r.phase.padEnd(13)} ${r.work}: event-loop delay p50 ${d.p50.toFixed(2)} ms, p99 ${d.p99.toFixed(2)} ms, max ${d.max.toFixed(1)} ms; ` +
      `HTTP p99 ${r.httpMs.p99.toFixed(2)} ms (${r.httpMs.count} requests); GC max ${r.gcPauseMs.max.toFixed(1)} ms; ` +
      `JS thread busy ${(r.eventLoopUtilization * 100).toFixed(1)}%; ${r.iterations} calls in ${r.seconds.toFixed(1)} s` +
      (r.otherCpuFraction > 0.1 ? ` (other processes took ${(r.otherCpuFraction * 100).toFixed(0)}% of the CPU)` : ''),
  );
}
console.log(`event-loop delay p99 goal < ${GOAL_P99_MS} ms in every phase (${computeThreads} compute threads): ${result.goalMet ? 'met' : 'MISSED'}`);
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);

/** The trainer's whole loop (data loading, events, metrics.jsonl, evaluations, chart, checkpoints), shortened. */
async function measureTrain() {
  const job = await loadConfig(join(root, 'config', 'model_config.yaml'));
  const outputDir = mkdtempSync(join(tmpdir(), 'visiontorch-bench-train-'));
  try {
    const model = await HuggingFaceModelLoader.loadModel(job.model, { seed: job.training.seed });
    const trainer = new BaseTrainer({ model, modelConfig: job.model, ...job.training });
    // About 10 s of training on 2 cores: 3 evaluations (each redraws the chart) and 2 checkpoints.
    const steps = 120;
    const config = {
      ...job.training,
      maxSteps: steps,
      logEvery: 1,
      evalEvery: steps / 3,
      saveEvery: steps / 2,
      outputDir,
      // limit applies to each split: 2,048 training images (the steps go round them) and 2,048 test images.
      dataset: { ...job.training.dataset, limit: 2048 },
    };
    let events = 0;
    const measured = await measure(
      'train',
      `trainer.train, ${steps} steps of the Fashion-MNIST ViT (batch ${job.training.batchSize}, evaluations, checkpoints)`,
      () => trainer.train(config, { onProgress: () => events++ }),
      { minIterations: 1, seconds: 0 },
    );
    model.dispose();
    return { ...measured, trainerEvents: events };
  } finally {
    rmSync(outputDir, { recursive: true, force: true });
  }
}

/**
 * Runs `work` repeatedly (at least `minIterations` times and for `seconds`) while the JS workload
 * runs, and summarises the event loop's delay, the timer's and the HTTP requests' latencies, GC
 * pauses and how busy the JS thread was.
 */
async function measure(phase, work, run, options = {}) {
  const duration = (options.seconds ?? seconds) * 1000;
  const minIterations = options.minIterations ?? 1;
  const gcPauses = [];
  const gcObserver = new PerformanceObserver((list) => gcPauses.push(...list.getEntries().map((e) => e.duration)));
  gcObserver.observe({ entryTypes: ['gc'] });
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  const probes = startProbes();
  const utilizationStart = performance.eventLoopUtilization();
  const machineStart = machineCpuTimes();
  const cpuStart = process.cpuUsage();
  histogram.enable();
  const start = performance.now();
  let iterations = 0;
  while (iterations < minIterations || performance.now() - start < duration) {
    await run();
    iterations++;
  }
  const elapsed = (performance.now() - start) / 1000;
  histogram.disable();
  const utilization = performance.eventLoopUtilization(utilizationStart).utilization;
  const cpu = process.cpuUsage(cpuStart);
  const othersCpu = otherCpuFraction(machineStart, machineCpuTimes(), (cpu.user + cpu.system) / 1e6);
  const { timerGaps, httpLatencies } = await probes.stop();
  gcObserver.disconnect();
  const ms = (ns) => ns / 1e6;
  return {
    phase,
    work,
    iterations,
    seconds: elapsed,
    // monitorEventLoopDelay records the intervals between ticks of a 1 ms timer, so its figures are
    // the delay plus about 1 ms (idle p50 ~1.1 ms): compared with the goal as they are, conservatively.
    eventLoopDelayMs: {
      p50: ms(histogram.percentile(50)),
      p99: ms(histogram.percentile(99)),
      max: ms(histogram.max),
      mean: ms(histogram.mean),
      samples: histogram.count,
    },
    timerGapMs: { p50: quantile(timerGaps, 0.5), p99: quantile(timerGaps, 0.99), max: Math.max(...timerGaps), ticks: timerGaps.length },
    httpMs: { p50: quantile(httpLatencies, 0.5), p99: quantile(httpLatencies, 0.99), max: Math.max(...httpLatencies), count: httpLatencies.length },
    gcPauseMs: { count: gcPauses.length, total: gcPauses.reduce((a, b) => a + b, 0), max: gcPauses.length ? Math.max(...gcPauses) : 0 },
    eventLoopUtilization: utilization,
    // The share of the machine's CPU other processes took meanwhile: a busy machine delays every thread.
    otherCpuFraction: othersCpu,
  };
}

/** A 1 ms timer recording the gaps between its ticks, and an HTTP client sending a request every 10 ms. */
function startProbes() {
  const timerGaps = [];
  let lastTick = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    timerGaps.push(now - lastTick);
    lastTick = now;
  }, 1);
  const httpLatencies = [];
  let inFlight = Promise.resolve();
  const client = setInterval(() => {
    inFlight = inFlight.then(async () => {
      const sent = performance.now();
      await server.get();
      httpLatencies.push(performance.now() - sent);
    });
  }, 10);
  return {
    async stop() {
      clearInterval(ticker);
      clearInterval(client);
      await inFlight;
      return { timerGaps, httpLatencies };
    },
  };
}

/** An HTTP server on 127.0.0.1 (an ephemeral port) answering a small JSON body, with a keep-alive client. */
async function startServer() {
  const body = JSON.stringify({ status: 'ok' });
  const httpServer = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise((resolve, reject) => httpServer.listen(0, '127.0.0.1', () => resolve(undefined)).once('error', reject));
  const { port } = /** @type {import('node:net').AddressInfo} */ (httpServer.address());
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  return {
    get: () =>
      new Promise((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port, path: '/health', agent }, (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP probe: status ${res.statusCode}`))));
        });
        req.on('error', (error) => reject(new Error(`HTTP probe to 127.0.0.1:${port} failed: ${error.message}`)));
        req.end();
      }),
    close() {
      agent.destroy();
      httpServer.close();
    },
  };
}

function sleep(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}
