// A PNG bar chart of the inference benchmark: one group per case (model, batch, dtype), one bar
// per runtime, drawn with the canvas the training chart uses (dist/render/canvas.js).
import { Canvas, CHAR_H, CHAR_W, encodePng, textWidth } from '../dist/render/canvas.js';

/** @type {(v: number) => [number, number, number]} */
const hex = (v) => [v >> 16, (v >> 8) & 255, v & 255];
const INK = hex(0x222222);
const MUTED = hex(0x707070);
const GRID = hex(0xececec);
const FRAME = hex(0xb4b4b4);

/** The runtimes in drawing order: key in a case's results, legend name, colour. */
export const RUNTIMES = [
  { key: 'visiontorch', name: 'visiontorch', color: hex(0x1c5fb0) },
  { key: 'onnxruntime', name: 'onnxruntime-node', color: hex(0xd9480f) },
  { key: 'pytorch', name: 'PyTorch eager', color: hex(0x2a9d5c) },
];

const BAR = 16;
const BAR_GAP = 4;
const GROUP_GAP = 18;
const MARGIN = 16;
const HEADER = 104;

const formatRate = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/**
 * `cases`: [{ label, results: { visiontorch|onnxruntime|pytorch: { imagesPerSecond, note? } | { error } } }].
 * Bars are scaled within each case, since throughputs differ by 100x between models; the numbers
 * printed beside them carry the absolute values.
 */
export function renderInferenceChart(cases, { title = 'inference throughput', subtitle = '', width = 1000 } = {}) {
  const labelWidth = Math.max(...cases.map((c) => textWidth(c.label)), textWidth('case')) + 2 * CHAR_W;
  const valueRoom = textWidth('999.99 img/s (fp32)') + CHAR_W;
  const plotX = MARGIN + labelWidth;
  const plotWidth = Math.max(120, width - plotX - valueRoom - MARGIN);
  const groupHeight = RUNTIMES.length * (BAR + BAR_GAP) - BAR_GAP;
  const height = HEADER + cases.length * (groupHeight + GROUP_GAP) + MARGIN;
  const canvas = new Canvas(width, height);

  canvas.text(MARGIN, 14, title, INK, true);
  if (subtitle) canvas.text(MARGIN, 14 + CHAR_H + 8, subtitle, MUTED);
  let legendX = MARGIN;
  const legendY = 14 + 2 * (CHAR_H + 8) + 4;
  for (const runtime of RUNTIMES) {
    canvas.fillRect(legendX, legendY, CHAR_H, CHAR_H, runtime.color);
    canvas.text(legendX + CHAR_H + 8, legendY, runtime.name, INK);
    legendX += CHAR_H + 8 + textWidth(runtime.name) + 3 * CHAR_W;
  }

  cases.forEach((c, index) => {
    const top = HEADER + index * (groupHeight + GROUP_GAP);
    if (index > 0) canvas.fillRect(MARGIN, top - GROUP_GAP / 2, width - 2 * MARGIN, 1, GRID);
    canvas.text(MARGIN, top + (groupHeight - CHAR_H) / 2, c.label, INK);
    canvas.fillRect(plotX, top - 2, 1, groupHeight + 4, FRAME);
    const rates = RUNTIMES.map((r) => c.results[r.key]?.imagesPerSecond).filter((v) => Number.isFinite(v));
    const scale = rates.length ? plotWidth / Math.max(...rates) : 0;
    RUNTIMES.forEach((runtime, row) => {
      const y = top + row * (BAR + BAR_GAP);
      const result = c.results[runtime.key];
      const rate = result?.imagesPerSecond;
      if (!Number.isFinite(rate)) {
        canvas.text(plotX + 8, y + (BAR - CHAR_H) / 2, result?.error ? 'failed' : 'not run', MUTED);
        return;
      }
      const barWidth = Math.max(1, rate * scale);
      canvas.fillRect(plotX + 1, y, barWidth, BAR, runtime.color);
      const text = `${formatRate(rate)} img/s${result.note ? ` (${result.note})` : ''}`;
      canvas.text(plotX + 1 + barWidth + 8, y + (BAR - CHAR_H) / 2, text, MUTED);
    });
  });
  return encodePng(width, height, canvas.pixels);
}
