import { describe, expect, it } from 'vitest';
import {
  DownloadReporter,
  formatBytes,
  formatDownloadLine,
  formatDuration,
  formatMetricsTable,
  formatMetricValue,
  formatProgressBar,
  ProgressReporter,
  type ProgressStream,
} from '../src/cli/progress.js';
import type { EvalEvent, ProgressEvent } from '../src/training/events.js';

const step = (n: number, fields: Partial<ProgressEvent> = {}): ProgressEvent => ({
  kind: 'step',
  step: n,
  totalSteps: 1000,
  epoch: (3 * n) / 1000,
  totalEpochs: 3,
  loss: 0.42131,
  learningRate: 4.1e-5,
  imagesPerSecond: 612.4,
  etaSeconds: 72,
  elapsedSeconds: 60,
  ...fields,
});
const evaluation: EvalEvent = { kind: 'eval', step: 500, epoch: 1.5, metrics: { eval_loss: 0.31213, eval_accuracy: 0.91234 } };

/** A stream that records writes; `isTTY` and `columns` as a terminal (or a pipe) reports them. */
function fakeStream(isTTY: boolean, columns = 100): ProgressStream & { chunks: string[]; text: () => string } {
  const chunks: string[] = [];
  return { isTTY, columns, chunks, write: (s: string) => chunks.push(s), text: () => chunks.join('') };
}

// Control characters other than newline: carriage return, escape, ...
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f]/;

describe('ProgressReporter without a TTY', () => {
  it('prints plain lines every logEvery steps, the last step, and every eval and save', () => {
    const stream = fakeStream(false);
    const reporter = new ProgressReporter({ stream, logEvery: 10 });
    for (let n = 1; n <= 25; n++) reporter.report(step(n, { totalSteps: 25 }));
    reporter.report(evaluation);
    reporter.report({ kind: 'save', step: 25, path: 'runs/latest/checkpoint-25' });
    reporter.finish();
    const text = stream.text();
    expect(text).not.toMatch(CONTROL);
    const lines = text.trimEnd().split('\n');
    expect(lines.map((l) => l.split(' ', 2).join(' '))).toEqual(['step 10/25', 'step 20/25', 'step 25/25', 'eval at', 'checkpoint at']);
    expect(lines[0]).toContain('loss 0.4213');
    expect(lines[0]).toContain('lr 4.1e-5');
    expect(lines[0]).toContain('ETA 1m12s');
    expect(lines[3]).toBe('eval at step 500 (epoch 1.50): loss 0.3121  accuracy 91.23%');
    expect(lines[4]).toBe('checkpoint at step 25: runs/latest/checkpoint-25');
  });

  it('prints nothing in --json mode', () => {
    const stream = fakeStream(true);
    const reporter = new ProgressReporter({ stream, json: true, logEvery: 1 });
    for (let n = 1; n <= 5; n++) reporter.report(step(n));
    reporter.report(evaluation);
    reporter.finish();
    expect(stream.chunks).toEqual([]);
    expect(reporter.mode).toBe('silent');
  });
});

describe('ProgressReporter on a TTY', () => {
  it('redraws one line in place, at most once per interval', () => {
    let now = 0;
    const stream = fakeStream(true, 100);
    const reporter = new ProgressReporter({ stream, now: () => now, redrawIntervalMs: 100 });
    expect(reporter.mode).toBe('tty');
    for (let n = 1; n <= 50; n++) {
      reporter.report(step(n));
      now += 10; // 100 steps a second
    }
    expect(stream.chunks).toHaveLength(5); // steps 1, 11, 21, 31, 41
    for (const chunk of stream.chunks) {
      expect(chunk.startsWith('\r\x1b[2K')).toBe(true);
      expect(chunk).not.toContain('\n');
      expect(chunk.length - 5).toBeLessThanOrEqual(99); // fits 100 columns, last one left free
    }
    expect(stream.chunks[4]).toContain('step 41/1000');
    reporter.finish(); // draws the throttled step 50, then leaves the bar
    expect(stream.chunks.slice(5)).toEqual([expect.stringContaining('step 50/1000'), '\n']);
  });

  it('always draws the last step', () => {
    const stream = fakeStream(true);
    const reporter = new ProgressReporter({ stream, now: () => 0 });
    reporter.report(step(999));
    reporter.report(step(1000));
    expect(stream.chunks.at(-1)).toContain('100% step 1000/1000');
  });

  it('prints eval and save lines above the bar and redraws the bar below', () => {
    const stream = fakeStream(true);
    const reporter = new ProgressReporter({ stream, now: () => 0 });
    reporter.report(step(500));
    reporter.report(evaluation);
    expect(stream.chunks.slice(1)).toEqual([
      '\r\x1b[2Keval at step 500 (epoch 1.50): loss 0.3121  accuracy 91.23%\n',
      expect.stringMatching(/^\r\x1b\[2Kepoch 1\.50\/3 ▕/),
    ]);
  });

  it('fits the bar to the terminal width', () => {
    const e = step(470, { epoch: 1.41 });
    expect(formatProgressBar(e, 120)).toBe(
      'epoch 1.41/3 ▕██████████████▏               ▏  47% step 470/1000 loss 0.4213 lr 4.1e-5 612 img/s ETA 1m12s',
    );
    for (const columns of [100, 80, 60, 40, 30, 20, 12]) {
      const line = formatProgressBar(e, columns);
      expect(line.length, line).toBeLessThanOrEqual(columns - 1);
      expect(line).toContain('47%');
    }
    expect(formatProgressBar(e, 60)).toMatch(/^▕█+▌? *▏ {2}47% step 470\/1000 loss 0.4213 ETA 1m12s$/);
    expect(formatProgressBar(step(0), 100)).toMatch(/▕ {30}▏|▕ +▏/);
    expect(formatProgressBar(step(1000), 100)).toMatch(/▕█+▏ 100%/);
  });
});

describe('formatMetricsTable', () => {
  it('aligns names left and values right, with precision by kind of metric', () => {
    const table = formatMetricsTable(
      { eval_loss: 0.312134, eval_accuracy: 0.91234, eval_top5_accuracy: 1, eval_runtime: 74.2, eval_samples_per_second: 912.34, epoch: 3 },
      'final evaluation',
    );
    expect(table).toBe(
      [
        'final evaluation',
        '  eval_loss                 0.3121',
        '  eval_accuracy             91.23%',
        '  eval_top5_accuracy       100.00%',
        '  eval_runtime               1m14s',
        '  eval_samples_per_second    912.3',
        '  epoch                       3.00',
      ].join('\n'),
    );
  });

  it('has no title line or indent without a title', () => {
    expect(formatMetricsTable({ a_loss: 1, b: 2 })).toBe('a_loss  1.0000\nb            2');
  });

  it('formats odd values', () => {
    expect(formatMetricValue('eval_loss', Number.NaN)).toBe('NaN');
    expect(formatMetricValue('learning_rate', 5e-5)).toBe('5.0e-5');
    expect(formatMetricValue('grad_norm', 1.23456)).toBe('1.2346');
    expect(formatMetricValue('eval_accuracy', 42)).toBe('42'); // a count, not a fraction
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0.0s'],
    [0.53, '0.5s'],
    [9.9, '9.9s'],
    [42.4, '42s'],
    [59.6, '1m00s'],
    [72, '1m12s'],
    [3599, '59m59s'],
    [3723, '1h02m03s'],
    [90_000, '1d01h00m'],
    [Number.NaN, '--'],
    [Number.POSITIVE_INFINITY, '--'],
  ])('%s s → %s', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });
});

describe('DownloadReporter', () => {
  const file = (downloadedBytes: number, name = 'model.safetensors', totalBytes: number | undefined = 100_468) => ({
    file: name,
    downloadedBytes,
    totalBytes,
  });

  it('prints a line when a file starts and one when it is done, without a TTY', () => {
    let now = 0;
    const stream = fakeStream(false);
    const reporter = new DownloadReporter({ stream, now: () => now });
    reporter.report(file(0, 'config.json', 677));
    reporter.report(file(677, 'config.json', 677));
    for (const bytes of [50_000, 60_000, 100_468]) {
      reporter.report(file(bytes));
      now += 1000;
    }
    reporter.finish();
    expect(stream.text()).not.toMatch(CONTROL);
    expect(stream.text().trimEnd().split('\n')).toEqual([
      'downloading config.json (677 B)',
      'downloaded config.json: 677 B in 0.0s',
      'downloading model.safetensors (100.5 kB), resuming at 50.0 kB',
      'downloaded model.safetensors: 100.5 kB in 2.0s (25.2 kB/s)',
    ]);
  });

  it('draws one bar per file on a TTY, redrawn at most once per interval and left when done', () => {
    let now = 0;
    const stream = fakeStream(true, 80);
    const reporter = new DownloadReporter({ stream, now: () => now, redrawIntervalMs: 100 });
    for (let bytes = 0; bytes <= 100_000; bytes += 10_000) {
      reporter.report(file(bytes, 'model.safetensors', 100_000));
      now += 40;
    }
    reporter.report(file(0, 'config.json', 677));
    reporter.finish();
    const bars = stream.chunks.filter((c) => c.startsWith('\r\x1b[2K'));
    expect(bars.length).toBeLessThan(8); // 11 events, a redraw every 100 ms at most, and the last
    for (const bar of bars) expect(bar.length - 5).toBeLessThanOrEqual(79);
    expect(bars.at(-2)).toMatch(/^\r\x1b\[2Kmodel\.safetensors ▕█+▏ 100% 100\.0\/100\.0 kB 250\.0 kB\/s ETA 0\.0s$/);
    expect(stream.text().split('\n')).toHaveLength(3); // each file's bar ends its own line
    expect(bars.at(-1)).toContain('config.json ▕');
  });

  it('prints nothing in --json mode', () => {
    const stream = fakeStream(true);
    const reporter = new DownloadReporter({ stream, json: true });
    reporter.report(file(100_468));
    reporter.finish();
    expect(stream.chunks).toEqual([]);
  });

  it('fits the line to the terminal, and does without a total', () => {
    const e = file(45_200_000, 'model.safetensors', 100_500_000);
    expect(formatDownloadLine(e, 12_300_000, 100)).toBe('model.safetensors ▕█████████████▌                ▏  44% 45.2/100.5 MB 12.3 MB/s ETA 4.5s');
    for (const columns of [80, 60, 40, 20, 12]) expect(formatDownloadLine(e, 12_300_000, columns).length).toBeLessThanOrEqual(columns - 1);
    expect(formatDownloadLine(e, 12_300_000, 40)).toBe('model.safetensors ▕██████▎       ▏  44%');
    expect(formatDownloadLine({ file: 'x.bin', downloadedBytes: 2048 }, Number.NaN, 80)).toBe('x.bin 2.0 kB -- B/s');
    expect([0, 999, 1000, 1_234_567, 5e9].map(formatBytes)).toEqual(['0 B', '999 B', '1.0 kB', '1.2 MB', '5.0 GB']);
  });
});
