/**
 * The width and height of an image input from its JPEG or PNG header, without decoding it: what
 * micro-batching needs to merge only detection images that the processor will not pad.
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
 * JPEG or PNG, unreadable, malformed): the caller treats such an image as one it cannot merge,
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
  return { truncated: false };
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
