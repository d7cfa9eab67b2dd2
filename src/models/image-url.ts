/**
 * Image URLs as image inputs: an `http://` or `https://` string is fetched here, with Node's
 * global fetch, and handed on as its bytes, so the native side decodes it by signature and
 * batching reads its size from the header exactly as for a Uint8Array. A `file://` URL is the
 * file path it names; other schemes are refused.
 *
 * Limits, from the environment when the fetch starts:
 * - VISIONTORCH_MAX_IMAGE_BYTES: the most bytes one image may have (default 50 MiB; a number of
 *   bytes, or with a K, M or G suffix for KiB, MiB, GiB);
 * - VISIONTORCH_IMAGE_FETCH_TIMEOUT: seconds one image may take, redirects and body included
 *   (default 30).
 */
import { fileURLToPath } from 'node:url';
import { ErrorCode, invalidArgument, withCode } from '../errors.js';

export const DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024;
export const DEFAULT_IMAGE_FETCH_TIMEOUT_SECONDS = 30;
/** Images of one call fetched at a time: enough to hide latency, few enough to spare the server. */
export const IMAGE_FETCH_CONCURRENCY = 4;

const MAX_BYTES_VARIABLE = 'VISIONTORCH_MAX_IMAGE_BYTES';
const TIMEOUT_VARIABLE = 'VISIONTORCH_IMAGE_FETCH_TIMEOUT';
const ACCEPTED = 'a file path, a file:// URL, an http:// or https:// URL, a Uint8Array of encoded bytes, or { data, width, height, channels }';

/** An image fetch that failed: `url` as given, `status` the HTTP status when the server answered one. */
export type ImageFetchError = Error & { code: ErrorCode; url: string; status?: number };

/** Whether `image` is an http(s) URL, which is fetched instead of read as a path. */
export function isImageUrl(image: unknown): image is string {
  return typeof image === 'string' && /^https?:\/\//i.test(image);
}

/**
 * `images` with every http(s) URL replaced by the bytes it serves and every file:// URL by its
 * path, in order. URLs are fetched IMAGE_FETCH_CONCURRENCY at a time; the first failure aborts
 * the fetches still running and rejects. `method` names the caller in messages.
 */
export async function fetchImageUrls<T>(images: readonly T[], method: string, signal?: AbortSignal): Promise<(T | Uint8Array | string)[]> {
  const resolved: (T | Uint8Array | string)[] = resolveImagePaths(images, method);
  const pending = images.flatMap((image, i) => (isImageUrl(image) ? [i] : []));
  if (pending.length === 0) return resolved;
  // One failure is the call's answer: the other downloads would be wasted.
  const batch = new AbortController();
  const signals = signal ? [signal, batch.signal] : [batch.signal];
  const worker = async (): Promise<void> => {
    for (let i = pending.shift(); i !== undefined; i = pending.shift()) {
      resolved[i] = await fetchImage(images[i] as string, method, AbortSignal.any(signals));
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(IMAGE_FETCH_CONCURRENCY, pending.length) }, worker));
  } catch (error) {
    batch.abort();
    throw error;
  }
  return resolved;
}

/**
 * `images` with every file:// URL replaced by its path, and other schemes refused, at once: for
 * calls without http(s) URLs, which must reach the batcher in the order they were made.
 */
export function resolveImagePaths<T>(images: readonly T[], method: string): (T | string)[] {
  return images.map((image) => (typeof image === 'string' ? localImage(image, method) : image));
}

/** One image input with a URL fetched (see fetchImageUrls). */
export async function fetchImageUrl<T>(image: T, method: string, signal?: AbortSignal): Promise<T | Uint8Array | string> {
  return (await fetchImageUrls([image], method, signal))[0]!;
}

/** A string that is not an http(s) URL: a path, a file:// URL made a path, or a scheme refused. */
function localImage(image: string, method: string): string {
  if (isImageUrl(image)) {
    if (!URL.canParse(image)) throw invalidArgument(TypeError, `${method}: ${redact(image)} is not a valid URL`);
    return image;
  }
  if (/^file:/i.test(image)) {
    try {
      return fileURLToPath(image);
    } catch (error) {
      throw invalidArgument(TypeError, `${method}: ${image} is not a file URL of this machine (${(error as Error).message})`);
    }
  }
  // A scheme of two or more letters before "//" (one letter is a Windows drive), or data:, is a URL
  // we do not fetch; read as a path it would fail with a misleading "file not found".
  const scheme = /^([a-z][a-z0-9+.-]+):\/\//i.exec(image)?.[1] ?? (/^data:/i.test(image) ? 'data' : undefined);
  if (scheme)
    throw invalidArgument(
      TypeError,
      `${method}: unsupported image URL scheme "${scheme.toLowerCase()}:" in ${redact(image)}; an image is ${ACCEPTED}`,
    );
  return image;
}

async function fetchImage(url: string, method: string, signal: AbortSignal): Promise<Uint8Array> {
  const maxBytes = maxImageBytes();
  const timeoutSeconds = fetchTimeoutSeconds();
  const shown = redact(url);
  const fail = (reason: string, code: ErrorCode = ErrorCode.IMAGE, status?: number): ImageFetchError =>
    withCode(
      Object.assign(new Error(`${method}: could not fetch the image ${shown}: ${reason}`), { url: shown, ...(status !== undefined && { status }) }),
      code,
    );
  // Aborted to close the connection at once when the body is refused (too large).
  const refuse = new AbortController();
  const timeout = AbortSignal.timeout(timeoutSeconds * 1000);
  const why = (error: unknown): ImageFetchError => {
    // The caller's signal, or the batch's after another image failed (that error is then the answer).
    if (signal.aborted) return fail('aborted', ErrorCode.ABORTED);
    if (timeout.aborted) return fail(`no complete answer within ${timeoutSeconds} s (${TIMEOUT_VARIABLE})`);
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    // fetch's own messages may quote the URL whole, secrets included.
    return fail(String(cause?.message ?? cause?.code ?? (error as Error).message).replaceAll(url, shown));
  };
  const target = new URL(url); // checked by localImage
  // fetch refuses a URL with credentials: they become Basic authentication, as with curl.
  const headers: Record<string, string> = { accept: 'image/*' };
  if (target.username || target.password) {
    const credentials = `${decodeCredential(target.username)}:${decodeCredential(target.password)}`;
    headers.authorization = `Basic ${Buffer.from(credentials).toString('base64')}`;
    target.username = '';
    target.password = '';
  }
  let response: Response;
  try {
    response = await fetch(target, { signal: AbortSignal.any([signal, timeout, refuse.signal]), headers });
  } catch (error) {
    throw why(error);
  }
  try {
    if (!response.ok) throw fail(`HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`, ErrorCode.IMAGE, response.status);
    const tooLarge = () => fail(`larger than the limit of ${mib(maxBytes)} (${MAX_BYTES_VARIABLE})`);
    const declared = Number(response.headers.get('content-length') ?? Number.NaN);
    // Content-Length counts the encoded body (fetch undoes gzip), so it rules out, never in.
    if (declared > maxBytes) throw tooLarge();
    if (!response.body) return new Uint8Array(0);
    const chunks: Uint8Array[] = [];
    let total = 0;
    const reader = response.body.getReader();
    const next = () =>
      reader.read().catch((error: unknown) => {
        throw why(error);
      });
    for (let chunk = await next(); !chunk.done; chunk = await next()) {
      total += chunk.value.byteLength;
      // A server that sends no length, or a false one, is cut off here rather than buffered.
      if (total > maxBytes) throw tooLarge();
      chunks.push(chunk.value);
    }
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, offset);
      offset += chunk.byteLength;
    }
    return bytes;
  } catch (error) {
    refuse.abort();
    throw error;
  }
}

/** A URL's percent-encoded user name or password as typed (kept as is when malformed). */
function decodeCredential(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The URL without credentials, query or fragment (they may hold secrets), for messages. */
function redact(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}${parsed.search ? '?…' : ''}`;
  } catch {
    return url.replace(/[?#].*$/s, '').replace(/\/\/[^/@]*@/, '//');
  }
}

function mib(bytes: number): string {
  return `${+(bytes / 2 ** 20).toFixed(2)} MiB`;
}

function maxImageBytes(): number {
  const text = process.env[MAX_BYTES_VARIABLE]?.trim();
  if (!text) return DEFAULT_MAX_IMAGE_BYTES;
  const match = /^(\d+)\s*(?:([kmg])(?:i?b)?)?$/i.exec(text);
  const bytes = match ? Number(match[1]) * 1024 ** ' kmg'.indexOf((match[2] ?? ' ').toLowerCase()) : Number.NaN;
  if (!(Number.isSafeInteger(bytes) && bytes > 0))
    throw withCode(
      new RangeError(`${MAX_BYTES_VARIABLE} must be a positive number of bytes (e.g. 52428800 or 50M), got "${text}"`),
      ErrorCode.CONFIG,
    );
  return bytes;
}

function fetchTimeoutSeconds(): number {
  const text = process.env[TIMEOUT_VARIABLE]?.trim();
  if (!text) return DEFAULT_IMAGE_FETCH_TIMEOUT_SECONDS;
  const seconds = Number(text);
  // setTimeout's limit, in seconds.
  if (!(seconds > 0 && seconds * 1000 <= 2 ** 31 - 1))
    throw withCode(new RangeError(`${TIMEOUT_VARIABLE} must be a positive number of seconds, got "${text}"`), ErrorCode.CONFIG);
  return seconds;
}
