/**
 * A PNG chart of a training run, drawn without dependencies: small multiples stacked on one step
 * axis (training loss, learning rate, evaluation losses, evaluation scores), a 5x7 bitmap font and
 * a minimal PNG encoder. Regenerating it after every evaluation gives a picture of the run that
 * any image viewer opens, with no TensorBoard to install.
 */

import { invalidArgument } from '../errors.js';
import { Canvas, CHAR_H, CHAR_W, encodePng, type Rect, type RGB, textWidth, writeFileAtomically } from '../render/canvas.js';
import type { EvalEvent, ProgressEvent, TrainerEvent } from './events.js';

export type { Rect } from '../render/canvas.js';

export interface ChartOptions {
  /** Pixels; default 1000. */
  width?: number;
  /** Pixels; default 900. */
  height?: number;
  /** Heading at the top left; default "training". */
  title?: string;
  /**
   * Weight of the previous value in the loss's exponential moving average, in [0, 1). By default it
   * adapts to the number of points (a window of about 1/50 of them), so a run logged every step
   * and one logged every 50 steps look alike.
   */
  smoothing?: number;
}

/** Where a panel is drawn, what range its y-axis spans and which series it holds. */
export interface PanelLayout {
  title: string;
  plot: Rect;
  yDomain: [number, number];
  series: string[];
}

export interface ChartLayout {
  width: number;
  height: number;
  xDomain: [number, number];
  panels: PanelLayout[];
}

interface Point {
  x: number;
  y: number;
}
interface Series {
  label: string;
  points: Point[];
  color: RGB;
  width: number;
  markers: boolean;
}
interface Panel extends PanelLayout {
  data: Series[];
  top: number;
  yTicks: { values: number[]; labels: string[] };
  /** Single-series panels show the latest value instead of a legend. */
  latest?: string;
  placeholder: string;
}
interface Plan extends ChartLayout {
  panels: Panel[];
  xTicks: { values: number[]; labels: string[] };
  epochs: { step: number; epoch: number }[];
  title: string;
  summary: string;
}

const hex = (v: number): RGB => [v >> 16, (v >> 8) & 255, v & 255];
const WHITE = hex(0xffffff);
const INK = hex(0x222222);
const MUTED = hex(0x707070);
const GRID = hex(0xececec);
const FRAME = hex(0xb4b4b4);
const EPOCH = hex(0xc4c4c4);
const RAW_LOSS = hex(0xa9cbec);
const LOSS = hex(0x1c5fb0);
const LR = hex(0x2a9d5c);
const EVAL_COLORS = [0xd9480f, 0x7048e8, 0x0c8599, 0xc2255c, 0x5c940d, 0xe67700, 0x495057].map(hex);

// Text is the 5x7 font at twice its size: 12 px advance, 14 px tall.

// Layout, in pixels.
const HEADER = 44; // title line above the first panel
const FOOTER = 56; // x tick labels and the "step" caption below the last panel
const TITLE_ROW = 28; // panel title and legend above each plot
const PANEL_GAP = 18;
const RIGHT = 24;

// ---------------------------------------------------------------------------------------------
// Data

function latestPerStep<E extends { step: number }>(events: E[]): E[] {
  // A resumed run repeats steps; the later report wins.
  const byStep = new Map<number, E>();
  for (const e of events) if (Number.isFinite(e.step)) byStep.set(e.step, e);
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

function finitePoints<E extends { step: number }>(events: E[], value: (e: E) => number | undefined): Point[] {
  const points: Point[] = [];
  for (const e of events) {
    const y = value(e);
    if (typeof y === 'number' && Number.isFinite(y)) points.push({ x: e.step, y });
  }
  return points;
}

/** Debiased EMA (as TensorBoard's smoothing): early values are not pulled towards zero. */
function movingAverage(points: Point[], smoothing?: number): Point[] {
  if (smoothing !== undefined && !(smoothing >= 0 && smoothing < 1))
    throw invalidArgument(RangeError, `smoothing must be in [0, 1), got ${smoothing}`);
  const a = smoothing ?? 1 - 1 / Math.max(1, points.length / 50);
  let sum = 0;
  let weight = 0;
  return points.map((p) => {
    sum = a * sum + (1 - a) * p.y;
    weight = a * weight + (1 - a);
    return { x: p.x, y: sum / weight };
  });
}

/** Which eval panel a metric belongs to; undefined for bookkeeping (runtime, throughput, epoch). */
function metricGroup(name: string): 'loss' | 'score' | undefined {
  if (/loss/i.test(name)) return 'loss';
  if (/runtime|per_second|epoch|samples|(^|_)steps?$/i.test(name)) return undefined;
  return 'score';
}

/**
 * Steps at which an epoch after the first begins (`epoch` is 1-based), interpolated between
 * reports; in long runs only the starts of every 2nd, 5th, 10th... epoch, so at most ~20 are drawn.
 */
function epochBoundaries(steps: ProgressEvent[], xMax: number): { step: number; epoch: number }[] {
  const out: { step: number; epoch: number }[] = [];
  const every = niceTicks(0, steps.at(-1)?.epoch ?? 0, 20, 1).step;
  for (let i = 1; i < steps.length; i++) {
    const a = steps[i - 1]!;
    const b = steps[i]!;
    // Epoch m * every begins where the fractional epoch count reaches m * every - 1.
    for (let m = Math.floor((a.epoch + 1) / every) + 1; m * every - 1 <= b.epoch; m++) {
      const k = m * every - 1;
      const step = a.step + ((k - a.epoch) / (b.epoch - a.epoch)) * (b.step - a.step);
      if (k > 0 && step < xMax) out.push({ step, epoch: m * every });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Axes

/** Evenly spaced round values (1, 2 or 5 times a power of ten) covering [lo, hi]. */
function niceTicks(lo: number, hi: number, count: number, minStep = 0): { values: number[]; step: number } {
  const raw = Math.max((hi - lo) / Math.max(1, count), minStep, Number.MIN_VALUE);
  const power = 10 ** Math.floor(Math.log10(raw));
  const m = raw / power;
  const step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * power;
  const values: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) values.push(k * step);
  return { values, step };
}

// Trailing zeros of the fraction only ("1.50e-10" -> "1.5e-10", "2.00" -> "2"), never of an exponent.
const trimZeros = (s: string) => s.replace(/(\.\d*?)0+(?=e|$)/, '$1').replace(/\.(?=e|$)/, '');

/** Tick labels of one axis share a notation: fixed decimals, or exponents when those would be many. */
function tickFormatter(values: number[], step: number): (v: number) => string {
  const maxAbs = Math.max(...values.map(Math.abs));
  const stepPower = Math.floor(Math.log10(step) + 1e-9);
  if (maxAbs >= 1e5 || maxAbs < 1e-3 || stepPower < -4) {
    // Each label with its own exponent and only the digits the spacing needs: 5e-6, 1e-5, 1.5e-5.
    return (v) => {
      if (v === 0) return '0';
      const digits = Math.max(0, Math.floor(Math.log10(Math.abs(v)) + 1e-9) - stepPower);
      return trimZeros(v.toExponential(Math.min(digits, 6)));
    };
  }
  return (v) => v.toFixed(Math.max(0, -stepPower));
}

/** Step counts: 2500, 25k, 1.5M. */
function formatCount(v: number): string {
  for (const [unit, size] of [
    ['B', 1e9],
    ['M', 1e6],
    ['k', 1e3],
  ] as const) {
    if (Math.abs(v) >= size * (unit === 'k' ? 10 : 1)) return `${trimZeros((v / size).toFixed(2))}${unit}`;
  }
  return String(Math.round(v));
}

/** A legend value: four significant digits, exponent notation for tiny or huge values. */
function formatValue(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return trimZeros(v.toExponential(2));
  return String(Number(v.toPrecision(4)));
}

function yDomain(series: Series[], capAtOne: boolean): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) {
    for (const p of s.points) {
      lo = Math.min(lo, p.y);
      hi = Math.max(hi, p.y);
    }
  }
  if (!Number.isFinite(lo)) return [0, 1];
  // A constant series still needs a non-empty range; padding keeps lines and markers off the frame.
  const pad = hi > lo ? (hi - lo) * 0.06 : Math.abs(lo) * 0.1 || 1;
  return [lo >= 0 ? Math.max(0, lo - pad) : lo - pad, capAtOne && hi <= 1 ? Math.min(1, hi + pad) : hi + pad];
}

// ---------------------------------------------------------------------------------------------
// Layout

function plan(history: TrainerEvent[], options: ChartOptions): Plan {
  const width = Math.max(360, Math.round(options.width ?? 1000));
  const height = Math.max(300, Math.round(options.height ?? 900));
  const steps = latestPerStep(history.filter((e): e is ProgressEvent => e.kind === 'step'));
  const evals = latestPerStep(history.filter((e): e is EvalEvent => e.kind === 'eval'));
  const last = steps.at(-1);

  const panels: Omit<Panel, 'plot' | 'top' | 'yTicks'>[] = [];
  const addPanel = (title: string, data: Series[], placeholder: string, capAtOne = false) => {
    const only = data.length === 1 ? data[0]?.points.at(-1) : undefined;
    panels.push({
      title,
      data,
      series: data.map((s) => s.label),
      yDomain: yDomain(data, capAtOne),
      latest: only && `last ${formatValue(only.y)}`,
      placeholder,
    });
  };

  const loss = finitePoints(steps, (e) => e.loss);
  addPanel(
    'training loss',
    loss.length === 0
      ? []
      : [
          { label: 'raw', points: loss, color: RAW_LOSS, width: 1.2, markers: false },
          { label: 'EMA', points: movingAverage(loss, options.smoothing), color: LOSS, width: 2.6, markers: false },
        ],
    'no training steps yet',
  );
  const lr = finitePoints(steps, (e) => e.learningRate);
  addPanel(
    'learning rate',
    lr.length === 0 ? [] : [{ label: 'learning rate', points: lr, color: LR, width: 2, markers: false }],
    'no training steps yet',
  );

  // Evaluation panels appear with the first evaluation; metrics keep their colour across panels.
  const names = [...new Set(evals.flatMap((e) => Object.keys(e.metrics)))];
  const groups = { loss: [] as Series[], score: [] as Series[] };
  for (const name of names) {
    const group = metricGroup(name);
    const points = finitePoints(evals, (e) => e.metrics[name]);
    if (!group || points.length === 0) continue;
    const color = EVAL_COLORS[(groups.loss.length + groups.score.length) % EVAL_COLORS.length]!;
    groups[group].push({ label: name.replace(/^eval_/, ''), points, color, width: 2, markers: true });
  }
  if (groups.loss.length > 0) addPanel('eval loss', groups.loss, '');
  if (groups.score.length > 0) {
    const accuracy = groups.score.every((s) => /acc/i.test(s.label));
    addPanel(accuracy ? 'eval accuracy' : 'eval metrics', groups.score, '', true);
  }

  // The x-axis spans the whole run when its length is known, so the chart also shows how far along it is.
  const xMax = history.reduce(
    (m, e) => (Number.isFinite(e.step) ? Math.max(m, e.step) : m),
    Math.max(1, Number.isFinite(last?.totalSteps) ? last!.totalSteps : 0),
  );

  // Y tick labels decide the left margin, which all panels share so that their x-axes line up.
  const panelHeight = Math.floor((height - HEADER - FOOTER - PANEL_GAP * (panels.length - 1)) / panels.length);
  const plotHeight = panelHeight - TITLE_ROW;
  const yTicks = panels.map((p) => {
    if (p.data.length === 0) return { values: [], labels: [] }; // an empty panel has no scale to show
    const { values, step } = niceTicks(p.yDomain[0], p.yDomain[1], Math.min(6, Math.max(2, Math.floor(plotHeight / 35))));
    return { values, labels: values.map(tickFormatter(values, step)) };
  });
  const left = 16 + Math.max(3 * CHAR_W, ...yTicks.flatMap((t) => t.labels.map((l) => l.length * CHAR_W))) + 10;
  const plotWidth = width - left - RIGHT;
  const x = niceTicks(0, xMax, Math.max(2, Math.floor(plotWidth / 110)), 1);

  return {
    width,
    height,
    xDomain: [0, xMax],
    panels: panels.map((p, i) => {
      const top = HEADER + i * (panelHeight + PANEL_GAP);
      return { ...p, top, yTicks: yTicks[i]!, plot: { x: left, y: top + TITLE_ROW, width: plotWidth, height: plotHeight } };
    }),
    xTicks: { values: x.values, labels: x.values.map(formatCount) },
    epochs: epochBoundaries(steps, xMax),
    title: options.title ?? 'training',
    summary: last ? `step ${last.step}/${last.totalSteps}   epoch ${last.epoch.toFixed(2)}/${last.totalEpochs}` : '',
  };
}

/** The chart's geometry for `history`: panel rectangles, axis domains, series names. */
export function layoutTrainingChart(history: TrainerEvent[], options: ChartOptions = {}): ChartLayout {
  const p = plan(history, options);
  return {
    width: p.width,
    height: p.height,
    xDomain: p.xDomain,
    panels: p.panels.map(({ title, plot, yDomain, series }) => ({ title, plot, yDomain, series })),
  };
}

// ---------------------------------------------------------------------------------------------
// Drawing

/** Keeps, per pixel column, the first, lowest, highest and last point: the drawn shape is unchanged. */
function decimate(points: Point[]): Point[] {
  const out: Point[] = [];
  for (let i = 0; i < points.length; ) {
    const column = Math.floor(points[i]!.x);
    let lo = i;
    let hi = i;
    let j = i;
    for (; j < points.length && Math.floor(points[j]!.x) === column; j++) {
      if (points[j]!.y < points[lo]!.y) lo = j;
      if (points[j]!.y > points[hi]!.y) hi = j;
    }
    for (const k of [...new Set([i, lo, hi, j - 1])].sort((a, b) => a - b)) out.push(points[k]!);
    i = j;
  }
  return out;
}

function drawSeries(canvas: Canvas, s: Series, toPixel: (p: Point) => Point, plotWidth: number): void {
  let pts = s.points.map(toPixel);
  if (pts.length > 4 * plotWidth) pts = decimate(pts);
  for (let i = 1; i < pts.length; i++) canvas.line(pts[i - 1]!.x, pts[i - 1]!.y, pts[i]!.x, pts[i]!.y, s.color, s.width);
  if (s.markers && pts.length <= plotWidth / 6) {
    for (const p of pts) marker(canvas, p.x, p.y, s.color);
  } else if (pts.length === 1) {
    canvas.disc(pts[0]!.x, pts[0]!.y, s.width + 1, s.color);
  }
}

function marker(canvas: Canvas, x: number, y: number, c: RGB): void {
  canvas.disc(x, y, 5.5, WHITE);
  canvas.disc(x, y, 4, c);
}

function drawPanel(canvas: Canvas, panel: Panel, plan: Plan, isFirst: boolean, isLast: boolean): void {
  const { plot } = panel;
  const [x0, x1] = plan.xDomain;
  const [y0, y1] = panel.yDomain;
  const px = (x: number) => plot.x + ((x - x0) / (x1 - x0)) * plot.width;
  const py = (y: number) => plot.y + plot.height - ((y - y0) / (y1 - y0)) * plot.height;
  const bottom = plot.y + plot.height;

  for (const v of panel.yTicks.values) canvas.fillRect(plot.x, Math.round(py(v)), plot.width, 1, GRID);
  for (const v of plan.xTicks.values) canvas.fillRect(Math.round(px(v)), plot.y, 1, plot.height, GRID);
  for (const { step } of plan.epochs) {
    for (let y = plot.y; y < bottom; y += 8) canvas.fillRect(Math.round(px(step)), y, 1, Math.min(4, bottom - y), EPOCH);
  }
  // Frame: left and bottom axis darker, so the panels read as separate plots.
  canvas.fillRect(plot.x, plot.y, plot.width, 1, GRID);
  canvas.fillRect(plot.x + plot.width - 1, plot.y, 1, plot.height, GRID);
  canvas.fillRect(plot.x, plot.y, 1, plot.height + 1, FRAME);
  canvas.fillRect(plot.x, bottom, plot.width, 1, FRAME);

  // Lines may reach a few pixels past the plot so that markers on its edge stay whole.
  canvas.clipTo({ x: plot.x - 6, y: plot.y - 6, width: plot.width + 12, height: plot.height + 12 });
  for (const s of panel.data) drawSeries(canvas, s, (p) => ({ x: px(p.x), y: py(p.y) }), plot.width);
  canvas.clipTo();

  if (panel.data.length === 0 && panel.placeholder) {
    canvas.text(plot.x + (plot.width - textWidth(panel.placeholder)) / 2, plot.y + (plot.height - CHAR_H) / 2, panel.placeholder, MUTED);
  }
  panel.yTicks.values.forEach((v, i) => {
    const label = panel.yTicks.labels[i]!;
    canvas.text(plot.x - 10 - textWidth(label), Math.round(py(v)) - CHAR_H / 2, label, MUTED);
  });
  if (isFirst) {
    let free = plot.x; // epoch labels must not overlap one another
    for (const { step, epoch } of plan.epochs) {
      const label = `epoch ${epoch}`;
      const x = Math.round(px(step)) + 5;
      if (x < free || x + textWidth(label) > plot.x + plot.width) continue;
      canvas.text(x, plot.y + 6, label, MUTED);
      free = x + textWidth(label) + CHAR_W;
    }
  }
  if (isLast) {
    plan.xTicks.values.forEach((v, i) => {
      const label = plan.xTicks.labels[i]!;
      const x = Math.round(px(v)) - textWidth(label) / 2;
      canvas.text(Math.min(Math.max(x, 2), canvas.width - 2 - textWidth(label)), bottom + 8, label, MUTED);
    });
    canvas.text(plot.x + (plot.width - textWidth('step')) / 2, bottom + 32, 'step', INK);
  }

  // Title on the left of the title row; legend (or latest value) right-aligned on the same row.
  const textY = panel.top + 6;
  canvas.text(plot.x, textY, panel.title, INK, true);
  if (panel.data.length > 1) {
    // Latest values in the legend while they fit beside the title, then names only, then as many
    // entries as fit and "+N" for the rest.
    const room = plot.width - textWidth(panel.title) - 3 * CHAR_W;
    const entryWidth = (label: string) => 26 + textWidth(label) + 18;
    const legendWidth = (labels: string[]) => labels.reduce((w, l) => w + entryWidth(l), -18);
    let labels = panel.data.map((s) => `${s.label} ${formatValue(s.points.at(-1)!.y)}`);
    if (legendWidth(labels) > room) labels = panel.data.map((s) => s.label);
    let more = '';
    while (legendWidth(labels) > room && labels.length > 1) {
      labels = labels.slice(0, -1);
      more = `+${panel.data.length - labels.length}`;
      if (legendWidth(labels) + 18 + textWidth(more) <= room) break;
    }
    let x = plot.x + plot.width - legendWidth(labels) - (more ? 18 + textWidth(more) : 0);
    labels.forEach((label, i) => {
      const s = panel.data[i]!;
      const cy = textY + CHAR_H / 2;
      canvas.line(x, cy, x + 20, cy, s.color, s.width);
      if (s.markers) marker(canvas, x + 10, cy, s.color);
      canvas.text(x + 26, textY, label, INK);
      x += entryWidth(label);
    });
    if (more) canvas.text(x, textY, more, MUTED);
  } else if (panel.latest) {
    canvas.text(plot.x + plot.width - textWidth(panel.latest), textY, panel.latest, MUTED);
  }
}

/** An RGB PNG of the run in `history` (see ChartOptions). Never throws on odd data: it draws what is finite. */
export function renderTrainingChart(history: TrainerEvent[], options: ChartOptions = {}): Buffer {
  const p = plan(history, options);
  const canvas = new Canvas(p.width, p.height);
  canvas.text(16, 14, p.title, INK, true);
  if (p.summary) canvas.text(p.width - RIGHT - textWidth(p.summary), 14, p.summary, MUTED);
  for (const [i, panel] of p.panels.entries()) drawPanel(canvas, panel, p, i === 0, i === p.panels.length - 1);
  return encodePng(p.width, p.height, canvas.pixels);
}

/** Renders the chart and replaces `path` atomically, so an image viewer never sees half a file. */
export async function writeTrainingChart(path: string, history: TrainerEvent[], options?: ChartOptions): Promise<void> {
  await writeFileAtomically(path, renderTrainingChart(history, options));
}
