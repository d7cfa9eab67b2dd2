/**
 * A small raster canvas (anti-aliased lines, rectangles, a built-in bitmap font) and a PNG
 * encoder: what the training chart and annotated prediction images are drawn with, using Node's
 * zlib only.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { invalidArgument } from '../errors.js';

export type RGB = readonly [number, number, number];

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Glyphs are drawn at this scale: 6x7-pixel cells become 12x14. */
export const SCALE = 2;
export const CHAR_W = 6 * SCALE;
export const CHAR_H = 7 * SCALE;

// 5x7 glyphs for ASCII 32..126, five column bytes each (bit 0 = top row), after the classic
// public-domain LCD font; g, j, p, q and y use bit 7 as a descender row, without which "training"
// reads "trainins".
const FONT = `
0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000
001c224100 0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402
3e5149453e 00427f4000 4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503
3649494936 064949291e 0036360000 0056360000 0008142241 1414141414 4122140800 0201510906
324979413e 7e1111117e 7f49494936 3e41414122 7f4141221c 7f49494941 7f09090101 3e41415132
7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f0204027f 7f0408107f 3e4141413e
7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f 1f2040201f 7f2018207f
6314081463 0304780403 6151494543 00007f4141 0204081020 41417f0000 0402010204 4040404040
0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 18a4a4a47c
7f08040478 00447d4000 4080847d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438
fc24242418 18242424fc 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c
4428102844 1ca0a0a07c 4464544c44 0008364100 00007f0000 0041360800 0804080408`
  .trim()
  .split(/\s+/)
  .map((g) => Buffer.from(g, 'hex'));

export class Canvas {
  readonly pixels: Uint8Array;
  private clip: Rect;

  /** A white canvas, or one over existing RGB pixels (an image to draw on). */
  constructor(
    readonly width: number,
    readonly height: number,
    pixels?: Uint8Array,
  ) {
    if (pixels && pixels.length !== width * height * 3)
      throw invalidArgument(RangeError, `expected ${width * height * 3} bytes of RGB, got ${pixels.length}`);
    this.pixels = pixels ?? new Uint8Array(width * height * 3).fill(255);
    this.clip = { x: 0, y: 0, width, height };
  }

  /** Restricts drawing to `rect` (within the image); no argument: the whole image. */
  clipTo(rect?: Rect): void {
    const r = rect ?? { x: 0, y: 0, width: this.width, height: this.height };
    const x = Math.max(0, Math.floor(r.x));
    const y = Math.max(0, Math.floor(r.y));
    this.clip = { x, y, width: Math.min(this.width, Math.ceil(r.x + r.width)) - x, height: Math.min(this.height, Math.ceil(r.y + r.height)) - y };
  }

  blend(x: number, y: number, c: RGB, alpha = 1): void {
    const { clip } = this;
    if (x < clip.x || y < clip.y || x >= clip.x + clip.width || y >= clip.y + clip.height) return;
    const i = (y * this.width + x) * 3;
    const p = this.pixels;
    p[i] = Math.round(p[i]! + (c[0] - p[i]!) * alpha);
    p[i + 1] = Math.round(p[i + 1]! + (c[1] - p[i + 1]!) * alpha);
    p[i + 2] = Math.round(p[i + 2]! + (c[2] - p[i + 2]!) * alpha);
  }

  fillRect(x: number, y: number, w: number, h: number, c: RGB): void {
    for (let py = Math.round(y); py < Math.round(y + h); py++) for (let px = Math.round(x); px < Math.round(x + w); px++) this.blend(px, py, c);
  }

  /** Anti-aliased segment with round caps: coverage from each pixel centre's distance to it. */
  line(x0: number, y0: number, x1: number, y1: number, c: RGB, width: number): void {
    const r = width / 2;
    const dx = x1 - x0;
    const dy = y1 - y0;
    const len2 = dx * dx + dy * dy;
    const c0 = this.clip;
    const minX = Math.max(c0.x, Math.floor(Math.min(x0, x1) - r - 1));
    const maxX = Math.min(c0.x + c0.width - 1, Math.ceil(Math.max(x0, x1) + r + 1));
    const minY = Math.max(c0.y, Math.floor(Math.min(y0, y1) - r - 1));
    const maxY = Math.min(c0.y + c0.height - 1, Math.ceil(Math.max(y0, y1) + r + 1));
    for (let py = minY; py <= maxY; py++) {
      for (let px = minX; px <= maxX; px++) {
        const cx = px + 0.5 - x0;
        const cy = py + 0.5 - y0;
        const t = len2 === 0 ? 0 : Math.min(1, Math.max(0, (cx * dx + cy * dy) / len2));
        const coverage = Math.min(1, r + 0.5 - Math.hypot(cx - t * dx, cy - t * dy));
        if (coverage > 0) this.blend(px, py, c, coverage);
      }
    }
  }

  disc(x: number, y: number, radius: number, c: RGB): void {
    this.line(x, y, x, y, c, radius * 2);
  }

  text(x: number, y: number, s: string, c: RGB, bold = false): void {
    for (let i = 0; i < s.length; i++) {
      const code = s.charCodeAt(i);
      const glyph = FONT[code >= 32 && code <= 126 ? code - 32 : 31]!; // '?' for anything else
      for (let col = 0; col < 5; col++) {
        for (let row = 0; row < 8; row++) {
          if (!((glyph[col]! >> row) & 1)) continue;
          this.fillRect(x + i * CHAR_W + col * SCALE, y + row * SCALE, SCALE + (bold ? 1 : 0), SCALE, c);
        }
      }
    }
  }
}

export const textWidth = (s: string) => s.length * CHAR_W - SCALE;

/** Replaces `path` with `bytes` atomically (temporary file in the same directory, then rename). */
export async function writeFileAtomically(path: string, bytes: Uint8Array): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  // Same directory: rename is atomic only within one file system.
  const temp = join(dir, `.${basename(path)}.${process.pid}.${++tempCounter}.tmp`);
  try {
    await writeFile(temp, bytes);
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}
let tempCounter = 0;

// ---------------------------------------------------------------------------------------------
// PNG

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** Encodes 8-bit RGB pixels (row-major, 3 bytes each), or grayscale ones with `channels` 1, as a PNG. */
export function encodePng(width: number, height: number, pixels: Uint8Array, channels: 1 | 3 = 3): Buffer {
  const what = channels === 1 ? 'grayscale' : 'RGB';
  if (pixels.length !== width * height * channels)
    throw invalidArgument(RangeError, `expected ${width * height * channels} bytes of ${what}, got ${pixels.length}`);
  const stride = width * channels;
  // Filter 1 (Sub) on every row: a chart is mostly flat colour, which Sub turns into runs of zeros.
  const filtered = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * stride;
    const out = y * (stride + 1);
    filtered[out] = 1;
    for (let i = 0; i < stride; i++) filtered[out + 1 + i] = (pixels[row + i]! - (i >= channels ? pixels[row + i - channels]! : 0)) & 0xff;
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  // bit depth 8, colour type 0 (grayscale) or 2 (RGB), deflate, adaptive filters, no interlace
  header.set([8, channels === 1 ? 0 : 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(filtered)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
