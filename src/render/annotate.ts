/**
 * Predictions drawn onto a copy of the image: boxes with their labels for detection, a
 * translucent colour per class for segmentation. `visiontorch predict --draw out.png` uses these.
 */

import { invalidArgument } from '../errors.js';
import type { ImageInput } from '../models/vision-model.js';
import { decodeImage } from '../runtime.js';
import { Canvas, CHAR_H, encodePng, type RGB, SCALE, textWidth, writeFileAtomically } from './canvas.js';

export interface BoxAnnotation {
  label: string;
  score: number;
  box: { xmin: number; ymin: number; xmax: number; ymax: number };
}

// Distinct, saturated colours, assigned per label in order of first appearance.
const PALETTE: RGB[] = [0xe6194b, 0x3cb44b, 0x4363d8, 0xf58231, 0x911eb4, 0x42d4f4, 0xf032e6, 0xbfef45, 0xfabed4, 0x469990, 0xdcbeff, 0x9a6324].map(
  (v) => [v >> 16, (v >> 8) & 255, v & 255] as const,
);

export function paletteColor(index: number): RGB {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length]!;
}

/** The image's pixels as RGB, for drawing on. */
async function rgbCanvas(image: ImageInput): Promise<Canvas> {
  const decoded = await decodeImage(image);
  const { width, height, channels, data } = decoded;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) rgb[i * 3 + c] = data[i * channels + (channels >= 3 ? c : 0)]!;
  }
  return new Canvas(width, height, rgb);
}

/** `image` with each detection's box and "label score" caption, written as a PNG to `path`. */
export async function drawDetections(image: ImageInput, detections: BoxAnnotation[], path: string): Promise<void> {
  const canvas = await rgbCanvas(image);
  const thickness = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 200));
  const colors = new Map<string, RGB>();
  for (const { label, score, box } of detections) {
    if (!colors.has(label)) colors.set(label, paletteColor(colors.size));
    const color = colors.get(label)!;
    const { xmin, ymin, xmax, ymax } = box;
    canvas.line(xmin, ymin, xmax, ymin, color, thickness);
    canvas.line(xmax, ymin, xmax, ymax, color, thickness);
    canvas.line(xmax, ymax, xmin, ymax, color, thickness);
    canvas.line(xmin, ymax, xmin, ymin, color, thickness);
    const caption = `${label} ${score.toFixed(2)}`;
    // The caption sits on a filled tab above the box, inside the image when the box touches its top.
    const tabHeight = CHAR_H + 2 * SCALE;
    const tabY = ymin - tabHeight >= 0 ? ymin - tabHeight : ymin;
    canvas.fillRect(xmin, tabY, textWidth(caption) + 2 * SCALE, tabHeight, color);
    canvas.text(xmin + SCALE, tabY + SCALE, caption, [255, 255, 255]);
  }
  await writeFileAtomically(path, encodePng(canvas.width, canvas.height, canvas.pixels));
}

/** `image` with each pixel tinted by its class in `labelMap` (row-major, the image's size), and a legend. */
export async function drawSegmentation(image: ImageInput, labelMap: Int32Array, labels: string[], path: string, opacity = 0.5): Promise<void> {
  const canvas = await rgbCanvas(image);
  if (labelMap.length !== canvas.width * canvas.height) {
    throw invalidArgument(RangeError, `labelMap has ${labelMap.length} entries, the image ${canvas.width}x${canvas.height}`);
  }
  const present = new Set<number>();
  for (let i = 0; i < labelMap.length; i++) {
    const label = labelMap[i]!;
    present.add(label);
    canvas.blend(i % canvas.width, Math.floor(i / canvas.width), paletteColor(label), opacity);
  }
  let y = SCALE * 2;
  for (const label of [...present].sort((a, b) => a - b)) {
    const name = labels[label] ?? String(label);
    canvas.fillRect(SCALE * 2, y, CHAR_H, CHAR_H, paletteColor(label));
    canvas.fillRect(SCALE * 2 + CHAR_H + SCALE, y - SCALE, textWidth(name) + 2 * SCALE, CHAR_H + 2 * SCALE, [0, 0, 0]);
    canvas.text(SCALE * 3 + CHAR_H + SCALE, y, name, [255, 255, 255]);
    y += CHAR_H + 3 * SCALE;
  }
  await writeFileAtomically(path, encodePng(canvas.width, canvas.height, canvas.pixels));
}

export interface SegmentAnnotation {
  id: number;
  label: string;
  score: number;
}

/**
 * `image` with each segment of an instance or panoptic `segmentation` (segment id per pixel,
 * row-major, -1 for none) in its own colour, its outline darkened so that touching instances of
 * one class stay apart, and "label score" written at its centre.
 */
export async function drawSegments(
  image: ImageInput,
  segmentation: Int32Array,
  segments: SegmentAnnotation[],
  path: string,
  opacity = 0.5,
): Promise<void> {
  const canvas = await rgbCanvas(image);
  const { width, height } = canvas;
  if (segmentation.length !== width * height) {
    throw invalidArgument(RangeError, `segmentation has ${segmentation.length} entries, the image ${width}x${height}`);
  }
  const byId = new Map(segments.map((s, order) => [s.id, { ...s, order, x: 0, y: 0, pixels: 0 }]));
  for (let i = 0; i < segmentation.length; i++) {
    const segment = byId.get(segmentation[i]!);
    if (!segment) continue;
    const x = i % width;
    const y = Math.floor(i / width);
    segment.x += x;
    segment.y += y;
    segment.pixels++;
    const right = x + 1 < width ? segmentation[i + 1] : segmentation[i];
    const below = y + 1 < height ? segmentation[i + width] : segmentation[i];
    const outline = right !== segmentation[i] || below !== segmentation[i];
    canvas.blend(x, y, outline ? [0, 0, 0] : paletteColor(segment.order), outline ? 0.8 : opacity);
  }
  for (const segment of byId.values()) {
    if (segment.pixels === 0) continue;
    const caption = `${segment.label} ${segment.score.toFixed(2)}`;
    const tabWidth = textWidth(caption) + 2 * SCALE;
    const tabHeight = CHAR_H + 2 * SCALE;
    const left = Math.min(Math.max(0, Math.round(segment.x / segment.pixels - tabWidth / 2)), Math.max(0, width - tabWidth));
    const top = Math.min(Math.max(0, Math.round(segment.y / segment.pixels - tabHeight / 2)), Math.max(0, height - tabHeight));
    canvas.fillRect(left, top, tabWidth, tabHeight, paletteColor(segment.order));
    canvas.text(left + SCALE, top + SCALE, caption, [255, 255, 255]);
  }
  await writeFileAtomically(path, encodePng(width, height, canvas.pixels));
}
