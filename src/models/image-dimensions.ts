/**
 * The width and height of an image input from its JPEG, PNG, WebP or GIF header, without decoding
 * it: what micro-batching needs to merge only detection images that the processor will not pad.
 */
import { open, readFile } from 'node:fs/promises';
import type { ImageInput } from './vision-model.js';

export interface Dimensions {
  width: number;
  height: number;
}

// A JPEG's frame header follows its EXIF and ICC segments, which rarely reach past this.
const HEADER_BYTES = 64 * 1024;

/**
 * `image`'s size as the decoder will see it, or undefined when the header cannot tell (not a
 * JPEG, PNG, WebP or GIF, unreadable, malformed): the caller treats such an image as one it cannot merge,
 * and the native call reports the problem.
 */
export async function imageDimensions(image: ImageInput): Promise<Dimensions | undefined> {
  if (typeof image === 'string') return fileDimensions(image);
  if (image instanceof Uint8Array) return headerDimensions(image).dimensions;
  if (image !== null && typeof image === 'object') {
    const { width, height } = image;
    return Number.isSafeInteger(width) && Number.isSafeInteger(height) && width > 0 && height > 0 ? { width, height } : undefined;
  }
  return undefined;
}

async function fileDimensions(path: string): Promise<Dimensions | undefined> {
  try {
    const file = await open(path, 'r');
    let head: Uint8Array;
    try {
      const buffer = new Uint8Array(HEADER_BYTES);
      const { bytesRead } = await file.read(buffer, 0, HEADER_BYTES, 0);
      head = buffer.subarray(0, bytesRead);
    } finally {
      await file.close();
    }
    const parsed = headerDimensions(head);
    if (parsed.dimensions || !parsed.truncated || head.length < HEADER_BYTES) return parsed.dimensions;
    return headerDimensions(await readFile(path)).dimensions;
  } catch {
    return undefined;
  }
}

/** `truncated`: the bytes end before the header does (more of the file may tell). */
export function headerDimensions(bytes: Uint8Array): { dimensions?: Dimensions; truncated: boolean } {
  if (isPng(bytes)) {
    // The IHDR chunk comes first: length, "IHDR", then width and height, big-endian.
    if (bytes.length < 24) return { truncated: true };
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const width = view.getUint32(16);
    const height = view.getUint32(20);
    return { dimensions: width > 0 && height > 0 ? { width, height } : undefined, truncated: false };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return jpegDimensions(bytes);
  if (isWebp(bytes)) return webpDimensions(bytes);
  if (isGif(bytes)) return gifDimensions(bytes);
  return { truncated: false };
}

const ascii = (bytes: Uint8Array, offset: number, length: number): string => String.fromCharCode(...bytes.subarray(offset, offset + length));

function isWebp(bytes: Uint8Array): boolean {
  return ascii(bytes, 0, 4) === 'RIFF' && ascii(bytes, 8, 4) === 'WEBP' && ['VP8 ', 'VP8L', 'VP8X'].includes(ascii(bytes, 12, 4));
}

function isGif(bytes: Uint8Array): boolean {
  return ascii(bytes, 0, 6) === 'GIF87a' || ascii(bytes, 0, 6) === 'GIF89a';
}

function sized(width: number, height: number): { dimensions?: Dimensions; truncated: boolean } {
  return { dimensions: width > 0 && height > 0 ? { width, height } : undefined, truncated: false };
}

/** The first chunk holds the size: a lossy frame header, a lossless header, or VP8X's canvas. */
function webpDimensions(bytes: Uint8Array): { dimensions?: Dimensions; truncated: boolean } {
  if (bytes.length < 30) return { truncated: true };
  const at = (i: number): number => bytes[i] ?? 0;
  switch (ascii(bytes, 12, 4)) {
    case 'VP8 ':
      // A 3-byte frame tag, the start code 9d 01 2a, then 14-bit width and height.
      if (at(23) !== 0x9d || at(24) !== 0x01 || at(25) !== 0x2a) return { truncated: false };
      return sized((at(26) | (at(27) << 8)) & 0x3fff, (at(28) | (at(29) << 8)) & 0x3fff);
    case 'VP8L':
      // The signature byte 2f, then width - 1 and height - 1 in 14 bits each, least significant first.
      if (at(20) !== 0x2f) return { truncated: false };
      return sized(1 + (at(21) | ((at(22) & 0x3f) << 8)), 1 + ((at(22) >> 6) | (at(23) << 2) | ((at(24) & 0x0f) << 10)));
    default:
      // VP8X: flags and reserved bytes, then canvas width - 1 and height - 1 in 24 bits each.
      return sized(1 + (at(24) | (at(25) << 8) | (at(26) << 16)), 1 + (at(27) | (at(28) << 8) | (at(29) << 16)));
  }
}

/**
 * The logical screen, grown to hold the first frame's rectangle as the decoder (and Pillow) does:
 * walks the colour table and extensions up to the first image descriptor.
 */
function gifDimensions(bytes: Uint8Array): { dimensions?: Dimensions; truncated: boolean } {
  const at = (i: number): number => bytes[i] ?? 0;
  const le16 = (i: number): number => at(i) | (at(i + 1) << 8);
  if (bytes.length < 13) return { truncated: true };
  const screenWidth = le16(6);
  const screenHeight = le16(8);
  let offset = 13 + (at(10) & 0x80 ? 3 << ((at(10) & 7) + 1) : 0);
  while (offset < bytes.length) {
    const introducer = at(offset);
    if (introducer === 0x2c) {
      if (offset + 9 > bytes.length) return { truncated: true };
      const right = le16(offset + 1) + le16(offset + 5);
      const bottom = le16(offset + 3) + le16(offset + 7);
      if (le16(offset + 5) === 0 || le16(offset + 7) === 0) return { truncated: false };
      return sized(Math.max(screenWidth, right), Math.max(screenHeight, bottom));
    }
    if (introducer !== 0x21) return { truncated: false };
    // An extension: its label, then sub-blocks up to an empty one.
    offset += 2;
    while (offset < bytes.length && at(offset) !== 0) offset += 1 + at(offset);
    offset += 1;
  }
  return { truncated: true };
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && PNG_SIGNATURE.every((byte, i) => bytes[i] === byte);
}

/** Walks the marker segments up to the start-of-frame segment, which holds the size. */
function jpegDimensions(bytes: Uint8Array): { dimensions?: Dimensions; truncated: boolean } {
  const at = (i: number): number => bytes[i] ?? 0;
  let offset = 2;
  while (offset + 4 <= bytes.length) {
    if (at(offset) !== 0xff) return { truncated: false };
    const marker = at(offset + 1);
    if (marker === 0xff) {
      offset += 1; // fill byte
      continue;
    }
    // Markers without a length: TEM, RSTn, SOI.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) {
      offset += 2;
      continue;
    }
    // Scan data or the end before any frame header: not an image the decoder can read.
    if (marker === 0xd9 || marker === 0xda) return { truncated: false };
    // SOF0-SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (offset + 9 > bytes.length) return { truncated: true };
      const height = (at(offset + 5) << 8) | at(offset + 6);
      const width = (at(offset + 7) << 8) | at(offset + 8);
      return { dimensions: width > 0 && height > 0 ? { width, height } : undefined, truncated: false };
    }
    offset += 2 + ((at(offset + 2) << 8) | at(offset + 3));
  }
  return { truncated: true };
}
