/**
 * HTTP for the hub, on node:http/https: one request with an idle timeout, redirects, and retries
 * with exponential backoff for what may pass (connection errors, timeouts, 5xx, 429).
 */
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A request that failed: `status` is the HTTP status, undefined when no answer came (connection
 * refused or lost, timeout). `headers` are the answer's, for the hub's X-Error-Code.
 */
export class HttpError extends Error {
  constructor(
    message: string,
    readonly url: string,
    readonly status?: number,
    readonly headers: IncomingHttpHeaders = {},
  ) {
    super(message);
  }
}

/** Worth trying again: no answer at all, a server error, or "too many requests". */
export function isTransient(error: unknown): error is HttpError {
  return error instanceof HttpError && (error.status === undefined || error.status >= 500 || error.status === 429);
}

export interface RetryPolicy {
  /** Tries after the first one. */
  retries: number;
  /** The wait before the first retry; it doubles for each next one. */
  baseDelayMs: number;
}

/** As huggingface_hub's backoff: waits of 0.5 s, 1 s, 2 s. Tests shorten the waits here. */
export const retryPolicy: RetryPolicy = { retries: 3, baseDelayMs: 500 };

/** `attempt()`, tried again after a transient failure while the policy allows. */
export async function withRetries<T>(attempt: () => Promise<T>, policy: RetryPolicy = retryPolicy): Promise<T> {
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (!isTransient(error) || n >= policy.retries) {
        if (isTransient(error) && n > 0) error.message += ` (tried ${n + 1} times)`;
        throw error;
      }
      await sleep(policy.baseDelayMs * 2 ** n);
    }
  }
}

export interface RequestOptions {
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  /** Longest silence, connecting or reading, before giving up. */
  timeoutMs: number;
}

/** One request, no redirect followed. The caller reads or discards (`resume()`) the body. */
export function send(url: string, options: RequestOptions): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const request = target.protocol === 'https:' ? httpsRequest : target.protocol === 'http:' ? httpRequest : undefined;
    if (!request) return reject(new HttpError(`${url}: only http and https URLs are supported`, url, 0));
    const req = request(target, { method: options.method, headers: options.headers }, resolve);
    // A socket timeout counts silence, so it also ends a body that stops arriving half way.
    req.setTimeout(options.timeoutMs, () => req.destroy(new Error(`timed out: no data for ${options.timeoutMs / 1000} s`)));
    req.on('error', (error) => reject(new HttpError(`${url}: ${error.message}`, url)));
    req.end();
  });
}

const MAX_REDIRECTS = 10;

/**
 * `send`, following redirects: every one (`'all'`, for downloads: the hub sends LFS files to a CDN
 * with a 302), or only relative ones (`'relative'`, as huggingface_hub's metadata request does: a
 * renamed repository answers with a relative Location; an absolute one is the caller's to use).
 * Authorization is not sent on to another origin, as `requests` does not.
 */
export async function sendFollowing(
  url: string,
  options: RequestOptions,
  follow: 'all' | 'relative',
): Promise<{ url: string; response: IncomingMessage }> {
  let headers = options.headers;
  for (let hops = 0; ; hops++) {
    const response = await send(url, { ...options, headers });
    const location = response.headers.location;
    const status = response.statusCode ?? 0;
    if (status < 300 || status > 399 || status === 304 || !location) return { url, response };
    const absolute = /^([a-z][a-z0-9+.-]*:|\/\/)/i.test(location);
    if (follow === 'relative' && absolute) return { url, response };
    response.resume();
    if (hops === MAX_REDIRECTS) throw new HttpError(`${url}: more than ${MAX_REDIRECTS} redirects`, url, status);
    const next = new URL(location, url);
    if (next.origin !== new URL(url).origin) {
      headers = Object.fromEntries(Object.entries(headers).filter(([name]) => name.toLowerCase() !== 'authorization'));
    }
    url = next.href;
  }
}

/** One header's value as a string (Node gives arrays for repeated ones). */
export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}
