/**
 * What the CLI prints while it works, on stderr: `visiontorch train`'s progress and a model's
 * downloads. A bar redrawn in place on a terminal, plain lines in logs and CI (no control
 * characters to garble them), nothing in --json mode (the command prints one JSON document
 * when done).
 */
import type { DownloadProgress } from '../hub/download.js';
import type { EvalEvent, ProgressEvent, SaveEvent, TrainerEvent } from '../training/events.js';

/** The part of a tty.WriteStream the reporter uses; process.stderr is one. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressReporterOptions {
  /** Default process.stderr, which keeps stdout clean for results. */
  stream?: ProgressStream;
  /** --json: print nothing. */
  json?: boolean;
  /** Without a TTY, one line every `logEvery` steps (and for the last step). Default 10. */
  logEvery?: number;
  /** On a TTY, at most one redraw per interval: a terminal cannot show 1000 updates a second anyway. Default 100. */
  redrawIntervalMs?: number;
  /** Milliseconds clock, for tests. */
  now?: () => number;
}

const CLEAR_LINE = '\r\x1b[2K';
const EIGHTHS = ['', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
const MIN_BAR = 10;
const MAX_BAR = 30;

export class ProgressReporter {
  readonly mode: 'tty' | 'plain' | 'silent';
  private readonly stream: ProgressStream;
  private readonly logEvery: number;
  private readonly interval: number;
  private readonly now: () => number;
  private latest: ProgressEvent | undefined;
  private lastDraw = -Infinity;
  /** The bar is on screen (the cursor sits at its end). */
  private barShown = false;
  /** The latest step has not been drawn yet (throttled). */
  private pending = false;

  constructor(options: ProgressReporterOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.mode = options.json ? 'silent' : this.stream.isTTY ? 'tty' : 'plain';
    this.logEvery = Math.max(1, Math.floor(options.logEvery ?? 10));
    this.interval = options.redrawIntervalMs ?? 100;
    this.now = options.now ?? (() => performance.now());
  }

  /** Takes one trainer event; an arrow function so it can be passed as a listener as is. */
  readonly report = (event: TrainerEvent): void => {
    if (this.mode === 'silent') return;
    if (event.kind === 'step') {
      this.step(event);
      return;
    }
    const line = event.kind === 'eval' ? formatEvalLine(event) : formatSaveLine(event);
    if (this.mode === 'plain') return void this.stream.write(`${line}\n`);
    // Above the bar: clear it, print the line, draw the bar again below.
    this.stream.write(`${this.barShown ? CLEAR_LINE : ''}${line}\n`);
    this.barShown = false;
    if (this.latest) this.draw();
  };

  /** Call once when training ends: draws the final state and moves past the bar. */
  finish(): void {
    if (this.mode !== 'tty') return;
    if (this.pending) this.draw();
    if (this.barShown) this.stream.write('\n');
    this.barShown = false;
  }

  private step(event: ProgressEvent): void {
    if (this.mode === 'plain') {
      if (event.step % this.logEvery === 0 || event.step === event.totalSteps) this.stream.write(`${formatStepLine(event)}\n`);
      return;
    }
    this.latest = event;
    this.pending = true;
    if (this.now() - this.lastDraw >= this.interval || event.step >= event.totalSteps) this.draw();
  }

  private draw(): void {
    this.stream.write(CLEAR_LINE + formatProgressBar(this.latest!, this.stream.columns ?? 80));
    this.barShown = true;
    this.pending = false;
    this.lastDraw = this.now();
  }
}

const formatLoss = (loss: number) => (Number.isFinite(loss) ? loss.toFixed(4) : String(loss));
const formatLr = (lr: number) => (lr === 0 ? '0' : lr.toExponential(1));

/**
 * The TTY line, at most `columns - 1` characters (writing the last column makes some terminals
 * wrap): `epoch 1.42/3 ▕██████▌     ▏  47% step 470/1000 loss 0.4213 lr 4.1e-5 612 img/s ETA 1m12s`.
 * When the terminal is narrow, the least useful fields go first.
 */
export function formatProgressBar(e: ProgressEvent, columns: number): string {
  const fraction = e.totalSteps > 0 ? Math.min(1, Math.max(0, e.step / e.totalSteps)) : 0;
  return fitLine(
    [
      { text: `epoch ${e.epoch.toFixed(2)}/${formatEpochs(e.totalEpochs)}`, keep: 2 },
      { text: '', keep: 6, bar: fraction },
      { text: `${Math.floor(fraction * 100)}%`.padStart(4), keep: 7 },
      { text: `step ${e.step}/${e.totalSteps}`, keep: 3 },
      { text: `loss ${formatLoss(e.loss)}`, keep: 5 },
      { text: `lr ${formatLr(e.learningRate)}`, keep: 1 },
      { text: `${Math.round(e.imagesPerSecond)} img/s`, keep: 0 },
      { text: `ETA ${formatDuration(e.etaSeconds)}`, keep: 4 },
    ],
    columns,
  );
}

/** One field of a status line: its text, or the bar when `bar` (the fraction done) is set. */
interface Field {
  text: string;
  /** The higher, the later the field is dropped to fit. */
  keep: number;
  bar?: number;
}

/**
 * Fields joined by spaces in at most `columns - 1` characters (writing the last column makes
 * some terminals wrap), dropping the least useful ones while they do not fit; the bar takes the
 * room left, MIN_BAR to MAX_BAR cells.
 */
function fitLine(fields: Field[], columns: number): string {
  const width = Math.max(10, Math.floor(columns) - 1);
  // Length of everything but the bar cells, with one space between fields.
  const rest = (fs: Field[]) => fs.reduce((n, f) => n + (f.bar !== undefined ? 2 : f.text.length) + 1, -1);
  const needed = (fs: Field[]) => rest(fs) + (fs.some((f) => f.bar !== undefined) ? MIN_BAR : 0);
  const top = Math.max(...fields.map((f) => f.keep));
  let kept = fields;
  for (let keep = 0; keep < top && needed(kept) > width; keep++) kept = kept.filter((f) => f.keep > keep);
  const cells = Math.max(0, Math.min(MAX_BAR, width - rest(kept)));
  return kept
    .map((f) => (f.bar !== undefined ? formatBar(f.bar, cells) : f.text))
    .join(' ')
    .slice(0, width);
}

/** `▕██████▌     ▏`: `fraction` of `cells` cells, in eighths of a cell. */
export function formatBar(fraction: number, cells: number): string {
  const units = Math.round(Math.min(1, Math.max(0, fraction)) * cells * 8);
  const full = Math.floor(units / 8);
  return `▕${'█'.repeat(full)}${EIGHTHS[units % 8]}${' '.repeat(cells - full - (units % 8 ? 1 : 0))}▏`;
}

/** A log line for one step: `step 470/1000 (47%)  epoch 1.42/3  loss 0.4213  ...`. */
export function formatStepLine(e: ProgressEvent): string {
  const percent = e.totalSteps > 0 ? Math.floor((100 * e.step) / e.totalSteps) : 0;
  return [
    `step ${e.step}/${e.totalSteps} (${percent}%)`,
    `epoch ${e.epoch.toFixed(2)}/${formatEpochs(e.totalEpochs)}`,
    `loss ${formatLoss(e.loss)}`,
    `lr ${formatLr(e.learningRate)}`,
    ...(e.gradNorm === undefined ? [] : [`grad_norm ${e.gradNorm.toFixed(3)}`]),
    ...(e.skipped ? ['skipped (not finite)'] : []),
    `${Math.round(e.imagesPerSecond)} img/s`,
    `elapsed ${formatDuration(e.elapsedSeconds)}`,
    `ETA ${formatDuration(e.etaSeconds)}`,
  ].join('  ');
}

export function formatEvalLine(e: EvalEvent): string {
  const metrics = Object.entries(e.metrics).map(([name, value]) => `${name.replace(/^eval_/, '')} ${formatMetricValue(name, value)}`);
  return `eval at step ${e.step} (epoch ${e.epoch.toFixed(2)}): ${metrics.join('  ')}`;
}

export function formatSaveLine(e: SaveEvent): string {
  return `checkpoint at step ${e.step}: ${e.path}`;
}

/** 0.5 → "0.5s", 42 → "42s", 72 → "1m12s", 3723 → "1h02m03s", 90000 → "1d01h00m"; "--" when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--';
  if (seconds < 0) return `-${formatDuration(-seconds)}`;
  if (seconds < 9.95) return `${seconds.toFixed(1)}s`;
  const s = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m${pad(s % 60)}s`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor(s / 3600) % 24)}h${pad(Math.floor(s / 60) % 60)}m`;
}

/**
 * One metric value, with the precision its name calls for (transformers' names): accuracies as
 * percentages, losses with 4 decimals, runtimes as durations, throughputs with 1 decimal.
 */
export function formatMetricValue(name: string, value: number): string {
  const n = name.toLowerCase();
  if (!Number.isFinite(value)) return String(value);
  if (/acc|precision|recall|f1|iou/.test(n) && value >= 0 && value <= 1) return `${(value * 100).toFixed(2)}%`;
  if (/loss/.test(n)) return value.toFixed(4);
  if (/per_second/.test(n)) return value.toFixed(1);
  if (/runtime|duration|seconds|time$/.test(n)) return formatDuration(value);
  if (/(^|_)(lr|learning_rate)$/.test(n)) return formatLr(value);
  if (/epoch/.test(n)) return value.toFixed(2);
  if (Number.isInteger(value)) return String(value);
  const a = Math.abs(value);
  return a >= 1e-3 && a < 1e6 ? value.toFixed(4) : value.toExponential(3);
}

/**
 * Metrics as an aligned two-column table, names left-aligned and values right-aligned:
 *
 *     final evaluation
 *       eval_loss           0.3121
 *       eval_accuracy       91.23%
 *       eval_runtime          4.2s
 */
export function formatMetricsTable(metrics: Record<string, number>, title?: string): string {
  const rows = Object.entries(metrics).map(([name, value]) => [name, formatMetricValue(name, value)] as const);
  const nameWidth = Math.max(0, ...rows.map(([name]) => name.length));
  const valueWidth = Math.max(0, ...rows.map(([, value]) => value.length));
  const indent = title === undefined ? '' : '  ';
  const lines = rows.map(([name, value]) => `${indent}${name.padEnd(nameWidth)}  ${value.padStart(valueWidth)}`);
  return (title === undefined ? lines : [title, ...lines]).join('\n');
}

/** A run's length in epochs: whole numbers as they are, a maxSteps run's fraction to 2 decimals. */
function formatEpochs(epochs: number): string {
  return Number.isInteger(epochs) ? String(epochs) : epochs.toFixed(2);
}

export interface DownloadReporterOptions {
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** --json: print nothing. */
  json?: boolean;
  /** On a TTY, at most one redraw per interval. Default 100. */
  redrawIntervalMs?: number;
  /** Milliseconds clock, for tests. */
  now?: () => number;
}

/**
 * Download progress (loadModel's onProgress): on a terminal one bar per file, redrawn in place
 * and left on screen when the file is done; otherwise a line when a file starts and one when it
 * is done.
 */
export class DownloadReporter {
  readonly mode: 'tty' | 'plain' | 'silent';
  private readonly stream: ProgressStream;
  private readonly interval: number;
  private readonly now: () => number;
  /** The file being downloaded: where it started (a resumed download starts past 0) and when. */
  private current: { file: string; startBytes: number; startTime: number } | undefined;
  private lastDraw = -Infinity;
  private barShown = false;

  constructor(options: DownloadReporterOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.mode = options.json ? 'silent' : this.stream.isTTY ? 'tty' : 'plain';
    this.interval = options.redrawIntervalMs ?? 100;
    this.now = options.now ?? (() => performance.now());
  }

  readonly report = (event: DownloadProgress): void => {
    if (this.mode === 'silent') return;
    if (this.current?.file !== event.file) this.start(event);
    const current = this.current!;
    const seconds = (this.now() - current.startTime) / 1000;
    const rate = seconds > 0 ? (event.downloadedBytes - current.startBytes) / seconds : Number.NaN;
    const done = event.totalBytes !== undefined && event.downloadedBytes >= event.totalBytes;
    if (this.mode === 'plain') {
      if (!done) return;
      const speed = Number.isFinite(rate) ? ` (${formatBytes(Math.round(rate))}/s)` : '';
      this.stream.write(`downloaded ${event.file}: ${formatBytes(event.downloadedBytes)} in ${formatDuration(seconds)}${speed}\n`);
      this.current = undefined;
      return;
    }
    if (!done && this.now() - this.lastDraw < this.interval) return;
    this.stream.write(CLEAR_LINE + formatDownloadLine(event, rate, this.stream.columns ?? 80));
    this.barShown = true;
    this.lastDraw = this.now();
    if (done) this.finish();
  };

  /** Call when loading ends, also on failure: moves past a bar left half way. */
  finish(): void {
    if (this.barShown) this.stream.write('\n');
    this.barShown = false;
    this.current = undefined;
  }

  private start(event: DownloadProgress): void {
    this.finish();
    this.current = { file: event.file, startBytes: event.downloadedBytes, startTime: this.now() };
    this.lastDraw = -Infinity;
    if (this.mode !== 'plain') return;
    const size = event.totalBytes === undefined ? '' : ` (${formatBytes(event.totalBytes)})`;
    const resumed = event.downloadedBytes > 0 ? `, resuming at ${formatBytes(event.downloadedBytes)}` : '';
    this.stream.write(`downloading ${event.file}${size}${resumed}\n`);
  }
}

/** `model.safetensors ▕████▌     ▏  45% 45.2/100.5 MB 12.3 MB/s ETA 4.5s`, fitted to `columns`. */
export function formatDownloadLine(e: DownloadProgress, bytesPerSecond: number, columns: number): string {
  const total = e.totalBytes;
  const rate = Number.isFinite(bytesPerSecond) ? `${formatBytes(Math.round(bytesPerSecond))}/s` : '-- B/s';
  if (total === undefined)
    return fitLine(
      [
        { text: e.file, keep: 2 },
        { text: formatBytes(e.downloadedBytes), keep: 1 },
        { text: rate, keep: 0 },
      ],
      columns,
    );
  const fraction = total > 0 ? Math.min(1, e.downloadedBytes / total) : 1;
  return fitLine(
    [
      { text: e.file, keep: 6 },
      { text: '', keep: 5, bar: fraction },
      { text: `${Math.floor(fraction * 100)}%`.padStart(4), keep: 7 },
      { text: formatByteProgress(e.downloadedBytes, total), keep: 4 },
      { text: rate, keep: 2 },
      { text: `ETA ${formatDuration(bytesPerSecond > 0 ? (total - e.downloadedBytes) / bytesPerSecond : Number.NaN)}`, keep: 3 },
    ],
    columns,
  );
}

const BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB'];
/** The unit for `bytes`: decimal, as the hub and tqdm count. */
const byteUnit = (bytes: number): number => {
  let unit = 0;
  while (unit < BYTE_UNITS.length - 1 && bytes >= 1000 ** (unit + 1)) unit++;
  return unit;
};
const inUnit = (bytes: number, unit: number): string => (unit === 0 ? String(bytes) : (bytes / 1000 ** unit).toFixed(1));

/** 512 → "512 B", 100468 → "100.5 kB", 3.4e8 → "340.0 MB". */
export function formatBytes(bytes: number): string {
  const unit = byteUnit(bytes);
  return `${inUnit(bytes, unit)} ${BYTE_UNITS[unit]}`;
}

/** "45.2/100.5 MB", in the total's unit. */
function formatByteProgress(done: number, total: number): string {
  const unit = byteUnit(total);
  return `${inUnit(done, unit)}/${inUnit(total, unit)} ${BYTE_UNITS[unit]}`;
}
