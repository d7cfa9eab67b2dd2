// Shared by the benchmarks: a line-protocol client for the Python peers, medians, argument parsing.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Debian's python3 has python3-torch; a python3 earlier on PATH (pyenv, venvs) may not. */
export const PYTHON = process.env.VISIONTORCH_BENCH_PYTHON ?? '/usr/bin/python3';

/** onnxruntime-node from bench/.peers, where setup-peers.sh installs it outside the package's dependencies. */
export function loadOnnxRuntime() {
  const peersDir = join(dirname(fileURLToPath(import.meta.url)), '.peers');
  const packageDir = join(peersDir, 'node_modules', 'onnxruntime-node');
  if (!existsSync(join(packageDir, 'package.json'))) {
    throw new Error(`onnxruntime-node is not installed in ${relative(process.cwd(), peersDir) || '.'}: run bash bench/setup-peers.sh`);
  }
  const { version } = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
  // A CommonJS package: require it by its directory rather than let resolution find another copy.
  return { ort: createRequire(import.meta.url)(packageDir), version };
}

/** A long-lived peer process answering one JSON request per line, so peers and visiontorch can alternate. */
export function startPeer(script) {
  const child = spawn(PYTHON, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  // A peer that died (an import error, out of memory) fails each request instead of crashing the
  // benchmark with EPIPE when it writes the next one.
  let exit;
  child.on('exit', (code, signal) => (exit = signal ? `signal ${signal}` : `code ${code}`));
  child.on('error', (error) => (exit = error.message));
  child.stdin.on('error', () => {});
  return {
    async request(message) {
      if (exit) throw new Error(`${script} exited (${exit})`);
      child.stdin.write(`${JSON.stringify(message)}\n`);
      const { value, done } = await lines.next();
      if (done) throw new Error(`${script} exited${exit ? ` (${exit})` : ''}`);
      const reply = JSON.parse(value);
      if (reply.error) throw new Error(`${script}: ${reply.error}`);
      return reply;
    },
    close() {
      child.stdin.end();
    },
  };
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function option(args, name, fallback) {
  const index = args.indexOf(`--${name}`);
  return index >= 0 && index + 1 < args.length ? args[index + 1] : fallback;
}

/** The value below which `fraction` of `values` lie (nearest rank), e.g. quantile(latencies, 0.99). */
export function quantile(values, fraction) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))];
}

/**
 * Seconds of CPU time the whole machine has spent busy, and in all, since boot (Linux /proc/stat,
 * in USER_HZ = 100 ticks; undefined elsewhere). Two readings around a measurement, less the
 * measured process's own CPU time, say how much other work competed with it.
 */
export function machineCpuTimes() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    const idle = fields[3] + fields[4]; // idle + iowait
    return { busy: (total - idle) / 100, total: total / 100 };
  } catch {
    return undefined;
  }
}

/** The fraction (0..1) of the machine's CPU capacity that others used between two machineCpuTimes() readings. */
export function otherCpuFraction(before, after, ownCpuSeconds) {
  if (!before || !after || after.total <= before.total) return undefined;
  return Math.max(0, (after.busy - before.busy - ownCpuSeconds) / (after.total - before.total));
}

/**
 * The samples ({ otherCpuFraction }) taken while other processes used at most `threshold` of the
 * CPU, when there are at least 3 of them (or all samples are quiet); otherwise all of them (the
 * caller should then say that the machine was busy).
 */
export function quietSamples(samples, threshold = 0.1) {
  const quiet = samples.filter((s) => !(s.otherCpuFraction > threshold));
  return quiet.length >= Math.min(3, samples.length) ? quiet : samples;
}

/** Runs `work` and returns its wall seconds and the share of the CPU other processes took meanwhile (this process's CPU time, plus `extraCpuSeconds(result)`, is ours). */
/** @param {() => Promise<any>} work @param {(result: any) => number} [extraCpuSeconds] */
export async function timedWithLoad(work, extraCpuSeconds = () => 0) {
  const machineBefore = machineCpuTimes();
  const cpuBefore = process.cpuUsage();
  const start = performance.now();
  const result = await work();
  const seconds = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const own = (cpu.user + cpu.system) / 1e6 + extraCpuSeconds(result);
  return { seconds, otherCpuFraction: otherCpuFraction(machineBefore, machineCpuTimes(), own), result };
}

/**
 * The fraction of the machine's CPU time used over `milliseconds` (0..1; undefined off Linux).
 * Called while this benchmark is idle, it says whether other work (a compiler, another
 * benchmark) competes for the cores and would make the numbers slow and noisy.
 */
export async function machineCpuLoad(milliseconds = 1000) {
  const before = machineCpuTimes();
  await new Promise((resolve) => setTimeout(resolve, milliseconds));
  return otherCpuFraction(before, machineCpuTimes(), 0);
}

/** Warns on stderr when other processes keep the machine busy (see machineCpuLoad); returns the load. */
export async function warnIfMachineBusy() {
  const load = await machineCpuLoad();
  if (load !== undefined && load > 0.15) {
    console.warn(
      `warning: ${(load * 100).toFixed(0)}% of the CPU is busy with other processes before the benchmark starts; its numbers will be slower and noisier than on an idle machine`,
    );
  }
  return load;
}
