import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, inflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCode } from '../src/errors.js';
import { encodePng } from '../src/render/canvas.js';
import { layoutTrainingChart, renderTrainingChart, writeTrainingChart } from '../src/training/chart.js';
import type { EvalEvent, ProgressEvent, TrainerEvent } from '../src/training/events.js';
import { MetricsLog, readMetricsLog } from '../src/training/metrics-log.js';
import { expectError } from './helpers.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'visiontorch-chart-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Image {
  width: number;
  height: number;
  /** RGB, row-major. */
  pixels: Uint8Array;
  at(x: number, y: number): [number, number, number];
}

/** A PNG reader for 8-bit RGB: checks the signature and every chunk's CRC, undoes all five filters. */
function decodePng(png: Buffer): Image {
  expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const chunks: { type: string; data: Buffer }[] = [];
  for (let off = 8; off < png.length; ) {
    const length = png.readUInt32BE(off);
    const typeAndData = png.subarray(off + 4, off + 8 + length);
    expect(png.readUInt32BE(off + 8 + length), 'chunk CRC').toBe(crc32(typeAndData));
    chunks.push({ type: typeAndData.toString('latin1', 0, 4), data: typeAndData.subarray(4) });
    off += 12 + length;
  }
  expect(chunks[0]?.type).toBe('IHDR');
  expect(chunks.at(-1)?.type).toBe('IEND');
  const ihdr = chunks[0]!.data;
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  expect([...ihdr.subarray(8)]).toEqual([8, 2, 0, 0, 0]);
  const raw = inflateSync(Buffer.concat(chunks.filter((c) => c.type === 'IDAT').map((c) => c.data)));
  const stride = width * 3;
  expect(raw.length).toBe((stride + 1) * height);
  const pixels = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    if (filter > 4) throw new Error(`row ${y}: unknown filter type ${filter}`);
    for (let i = 0; i < stride; i++) {
      const a = i >= 3 ? pixels[y * stride + i - 3]! : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + i]! : 0;
      const c = i >= 3 && y > 0 ? pixels[(y - 1) * stride + i - 3]! : 0;
      const p = a + b - c;
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      const predictor = [0, a, b, (a + b) >> 1, paeth][filter]!;
      pixels[y * stride + i] = (raw[y * (stride + 1) + 1 + i]! + predictor) & 0xff;
    }
  }
  const at = (x: number, y: number) => [...pixels.subarray((y * width + x) * 3, (y * width + x) * 3 + 3)] as [number, number, number];
  return { width, height, pixels, at };
}

const step = (n: number, fields: Partial<ProgressEvent> = {}): ProgressEvent => ({
  kind: 'step',
  step: n,
  totalSteps: 1000,
  epoch: n / 250,
  totalEpochs: 4,
  loss: 2 * Math.exp(-n / 300) + 0.2,
  learningRate: 5e-5 * (1 - n / 1000),
  imagesPerSecond: 600,
  etaSeconds: (1000 - n) / 10,
  elapsedSeconds: n / 10,
  ...fields,
});
const evaluation = (n: number, metrics: Record<string, number>): EvalEvent => ({ kind: 'eval', step: n, epoch: n / 250, metrics });

/** A run 600 steps into 1000, evaluated every 200 steps. */
function run(): TrainerEvent[] {
  const events: TrainerEvent[] = [];
  for (let n = 1; n <= 600; n++) {
    events.push(step(n, { loss: 2 * Math.exp(-n / 300) + 0.2 + 0.1 * Math.sin(n) }));
    if (n % 200 === 0) {
      events.push(
        evaluation(n, { eval_loss: 1 / (1 + n / 200), eval_accuracy: 0.5 + n / 1500, eval_top5_accuracy: 0.8 + n / 5000, eval_runtime: 3.2 }),
      );
      events.push({ kind: 'save', step: n, path: `checkpoint-${n}` });
    }
  }
  return events;
}

/** Pixels inside `rect` (1 px in from its frame) that are not background, grid or frame grey. */
function inkPixels(image: Image, rect: { x: number; y: number; width: number; height: number }): number {
  let count = 0;
  for (let y = rect.y + 2; y < rect.y + rect.height - 2; y++) {
    for (let x = rect.x + 2; x < rect.x + rect.width - 2; x++) {
      const [r, g, b] = image.at(x, y);
      if (Math.max(r, g, b) - Math.min(r, g, b) > 40) count++; // coloured, i.e. a data line
    }
  }
  return count;
}

describe('renderTrainingChart', () => {
  it('encodes a valid PNG of the default size, 1000x900', () => {
    const image = decodePng(renderTrainingChart(run()));
    expect([image.width, image.height]).toEqual([1000, 900]);
  });

  it('honours width and height', () => {
    const image = decodePng(renderTrainingChart(run(), { width: 640, height: 480 }));
    expect([image.width, image.height]).toEqual([640, 480]);
  });

  it('draws the loss line inside the first panel', () => {
    const history = run();
    const layout = layoutTrainingChart(history);
    expect(layout.panels.map((p) => p.title)).toEqual(['training loss', 'learning rate', 'eval loss', 'eval accuracy']);
    expect(layout.panels[0]!.series).toEqual(['raw', 'EMA']);
    expect(layout.panels[3]!.series).toEqual(['accuracy', 'top5_accuracy']); // eval_runtime is not plotted
    expect(layout.xDomain).toEqual([0, 1000]);
    const image = decodePng(renderTrainingChart(history));
    const plot = layout.panels[0]!.plot;
    expect(inkPixels(image, plot)).toBeGreaterThan(500);
    // 600 of 1000 steps done: the right part of the plot is still empty.
    expect(inkPixels(image, { ...plot, x: plot.x + Math.ceil(plot.width * 0.62), width: Math.floor(plot.width * 0.38) })).toBe(0);
  });

  it('stacks panels vertically on a shared x-axis', () => {
    const { panels } = layoutTrainingChart(run());
    for (const p of panels) expect([p.plot.x, p.plot.width]).toEqual([panels[0]!.plot.x, panels[0]!.plot.width]);
    for (let i = 1; i < panels.length; i++) expect(panels[i]!.plot.y).toBeGreaterThan(panels[i - 1]!.plot.y + panels[i - 1]!.plot.height);
  });

  it('draws empty and nearly empty histories', () => {
    const histories: TrainerEvent[][] = [
      [],
      [step(1)],
      [{ kind: 'save', step: 0, path: 'x' }],
      [evaluation(0, { eval_loss: 2.3, eval_accuracy: 0.1 })],
      [step(1, { loss: Number.NaN, learningRate: Number.NaN })],
      Array.from({ length: 20 }, (_, i) => step(i + 1, { loss: 0.7, learningRate: 0 })), // constant series
    ];
    for (const history of histories) {
      const image = decodePng(renderTrainingChart(history));
      expect([image.width, image.height]).toEqual([1000, 900]);
    }
    expect(layoutTrainingChart([]).panels.map((p) => p.title)).toEqual(['training loss', 'learning rate']);
    const constant = layoutTrainingChart(histories[5]!).panels[0]!.yDomain;
    expect(constant[1]).toBeGreaterThan(constant[0]);
    expect(constant[0]).toBeLessThan(0.7);
    expect(constant[1]).toBeGreaterThan(0.7);
  });

  it('skips NaN and infinite losses', () => {
    const history = Array.from({ length: 100 }, (_, i) =>
      step(i + 1, { loss: i === 10 ? Number.POSITIVE_INFINITY : i % 9 === 4 ? Number.NaN : 1 + i / 100 }),
    );
    const [lo, hi] = layoutTrainingChart(history).panels[0]!.yDomain;
    expect(lo).toBeGreaterThanOrEqual(0.9);
    expect(hi).toBeLessThan(2.1);
    const allNaN = layoutTrainingChart(history.map((e) => ({ ...e, loss: Number.NaN })));
    expect(allNaN.panels[0]!.series).toEqual([]);
    const image = decodePng(renderTrainingChart(history.map((e) => ({ ...e, loss: Number.NaN }))));
    expect(inkPixels(image, allNaN.panels[0]!.plot)).toBe(0);
  });

  it('copes with huge step counts', () => {
    const history = Array.from({ length: 50_000 }, (_, i) => step((i + 1) * 20_000, { totalSteps: 1e9, loss: 1 + Math.sin(i / 1000) }));
    const layout = layoutTrainingChart(history);
    expect(layout.xDomain).toEqual([0, 1e9]);
    const image = decodePng(renderTrainingChart(history));
    expect(inkPixels(image, layout.panels[0]!.plot)).toBeGreaterThan(1000);
  });

  it('keeps the later report of a repeated step (a resumed run)', () => {
    const history = [step(1, { loss: 1 }), step(2, { loss: 1 }), step(2, { loss: 3 }), step(3, { loss: 1 })];
    expect(layoutTrainingChart(history).panels[0]!.yDomain[1]).toBeGreaterThan(3);
  });
});

describe('encodePng', () => {
  it('round-trips pixels', () => {
    const pixels = Uint8Array.from({ length: 7 * 5 * 3 }, (_, i) => (i * 37) % 256);
    const image = decodePng(encodePng(7, 5, pixels));
    expect([image.width, image.height]).toEqual([7, 5]);
    expect([...image.pixels]).toEqual([...pixels]);
  });
});

describe('writeTrainingChart', () => {
  it('writes the PNG and leaves no temporary file', async () => {
    const path = join(dir, 'out', 'chart.png');
    await writeTrainingChart(path, run());
    await writeTrainingChart(path, run().slice(0, 50)); // replaces it
    expect(await readdir(join(dir, 'out'))).toEqual(['chart.png']);
    expect(decodePng(await readFile(path)).width).toBe(1000);
  });
});

describe('MetricsLog', () => {
  it('round-trips events, NaN included, one JSON line each', async () => {
    const outputDir = join(dir, 'run', 'nested');
    const events: TrainerEvent[] = [
      step(1),
      step(2, { loss: Number.NaN, gradNorm: Number.POSITIVE_INFINITY }),
      evaluation(2, { eval_loss: 0.5 }),
      { kind: 'save', step: 2, path: 'NaN' },
    ];
    const log = new MetricsLog(outputDir);
    for (const e of events) log.append(e);
    log.close();
    expect(log.path).toBe(join(outputDir, 'metrics.jsonl'));
    const text = await readFile(log.path, 'utf8');
    expect(text.endsWith('\n')).toBe(true);
    expect(
      text
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line).kind),
    ).toEqual(['step', 'step', 'eval', 'save']);
    expect(await readMetricsLog(log.path)).toEqual(events);
  });

  it('appends to an existing log (a resumed run)', async () => {
    const outputDir = join(dir, 'resumed');
    for (const n of [1, 2]) {
      const log = new MetricsLog(outputDir);
      log.append(step(n));
      log.close();
    }
    expect((await readMetricsLog(join(outputDir, 'metrics.jsonl'))).map((e) => e.step)).toEqual([1, 2]);
  });

  it('skips a truncated last line but not a bad line in the middle', async () => {
    const log = new MetricsLog(join(dir, 'truncated'));
    log.append(step(1));
    log.append(step(2));
    log.close();
    await appendFile(log.path, JSON.stringify(step(3)).slice(0, 40));
    expect((await readMetricsLog(log.path)).map((e) => e.step)).toEqual([1, 2]);

    const bad = join(dir, 'bad.jsonl');
    await writeFile(bad, `${JSON.stringify(step(1))}\n{"kind":"st\n${JSON.stringify(step(3))}\n`);
    await expectError(readMetricsLog(bad), ErrorCode.IO, 'bad.jsonl:2');
  });

  it('refuses to write after close', () => {
    const log = new MetricsLog(join(dir, 'closed'));
    log.close();
    expectError(() => log.append(step(1)), ErrorCode.IO, log.path);
  });
});
