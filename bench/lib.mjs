// Shared by the benchmarks: a line-protocol client for the Python peers, medians, argument parsing.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Debian's python3 has python3-torch; a python3 earlier on PATH (pyenv, venvs) may not. */
export const PYTHON = process.env.VISIONTORCH_BENCH_PYTHON ?? '/usr/bin/python3';

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
