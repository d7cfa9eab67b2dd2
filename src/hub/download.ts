/**
 * Downloads a model from the HuggingFace hub into the cache, laid out as Python's huggingface_hub
 * lays it out so that both share one cache:
 *   models--org--name/blobs/<etag>                the bytes, named by etag (sha256 for LFS files, git sha1 otherwise)
 *   models--org--name/snapshots/<commit>/<file>   relative symlinks to ../../blobs/<etag>
 *   models--org--name/refs/<revision>             the commit of the branch or tag's last complete download
 *   models--org--name/.no_exist/<commit>/<file>   files known to be absent at that commit
 *
 * Requests follow huggingface_hub's: a HEAD per file for its commit (X-Repo-Commit), etag
 * (X-Linked-Etag, else ETag), size (X-Linked-Size, else Content-Length) and, for LFS files, the
 * CDN Location to GET. The first HEAD, of config.json at the revision, pins the commit; every
 * other file is asked for at that commit, so a branch moving meanwhile cannot mix two versions.
 *
 * What a load costs when the cache has everything: nothing for a commit-hash revision (a commit
 * never changes); one HEAD for a branch or tag (has it moved?), which, when the hub cannot be
 * reached, is not retried: the cached snapshot is used, as huggingface_hub does. Offline
 * (`localFilesOnly`, $HF_HUB_OFFLINE) makes no request at all.
 *
 * A blob is written to blobs/<etag>.incomplete under blobs/<etag>.lock, verified (sha256 for LFS
 * files, the size otherwise) and renamed, so no reader ever sees a partial file; an interrupted
 * download resumes from its .incomplete with a Range request, in this call or a later one.
 */
import { createHash, type Hash, randomUUID } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { type FileHandle, mkdir, open, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { dirname, join, relative, resolve } from 'node:path';
import { ErrorCode, HubError, invalidArgument, ModelNotFoundError, withCode } from '../errors.js';
import { type CacheLookup, COMMIT_HASH, findCachedSnapshot, hfHome, hubCacheDir, isValidRepoId, isValidRevision, repoFolderName } from './cache.js';
import { HttpError, header, isTransient, type RetryPolicy, sendFollowing, withRetries } from './http.js';
import { withFileLock } from './lock.js';

/** One step of a file's download: sent on start, for each chunk received, and at the end. */
export interface DownloadProgress {
  /** The file's name in the repository, e.g. `model.safetensors`. */
  file: string;
  /** Bytes on disk so far, including those of an earlier download it resumes. */
  downloadedBytes: number;
  /** Undefined when the server does not say. */
  totalBytes?: number;
}

export interface DownloadOptions {
  /** Branch, tag or commit hash. Default `main`. */
  revision?: string;
  /** Default as `hubCacheDir()`. */
  cacheDir?: string;
  /** Use the cache only, as $HF_HUB_OFFLINE=1 does. */
  localFilesOnly?: boolean;
  /** Sent as `Authorization: Bearer`; default $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, then $HF_HOME/token. */
  token?: string;
  /** False: config.json and preprocessor_config.json only (for random initialisation). Default true. */
  weights?: boolean;
  onProgress?: (event: DownloadProgress) => void;
}

const CONFIG = 'config.json';
const PROCESSOR = 'preprocessor_config.json';
/** In transformers' order of preference: a single file, else its sharded index. */
const WEIGHTS = [
  ['model.safetensors', 'model.safetensors.index.json'],
  ['pytorch_model.bin', 'pytorch_model.bin.index.json'],
] as const;

/** huggingface_hub's spellings of yes for boolean variables. */
function envFlag(name: string): boolean {
  return ['1', 'ON', 'YES', 'TRUE'].includes((process.env[name] ?? '').trim().toUpperCase());
}

/** Whether $HF_HUB_OFFLINE forbids requests. */
export function hubOffline(): boolean {
  return envFlag('HF_HUB_OFFLINE');
}

function envSeconds(name: string, fallback: number): number {
  const text = process.env[name]?.trim();
  if (!text) return fallback * 1000;
  const seconds = Number(text);
  if (!(seconds > 0 && Number.isFinite(seconds))) throw invalidArgument(RangeError, `$${name} must be a positive number of seconds, got "${text}"`);
  return seconds * 1000;
}

/** The token to send and where it came from (for messages): as huggingface_hub looks for it. */
export function hubToken(token?: string): { token?: string; source?: string } {
  if (token) return { token, source: 'the token option' };
  for (const name of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN']) {
    const value = process.env[name]?.trim();
    if (value) return { token: value, source: `$${name}` };
  }
  const file = process.env.HF_TOKEN_PATH ? resolve(process.env.HF_TOKEN_PATH) : join(hfHome(), 'token');
  try {
    const value = readFileSync(file, 'utf8').trim();
    if (value) return { token: value, source: file };
  } catch {
    // No token file: anonymous.
  }
  return {};
}

/** Python's `urllib.parse.quote(s, safe='')`, as hf_hub_url encodes the revision. */
const quote = (s: string): string => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

// Names that come from the server become paths: a shard name must be a plain file name, an etag
// a plain name that cannot be `.` or `..`.
const isPlainFileName = (name: string): boolean => /^[^/\\\0]+$/.test(name) && !name.includes('..');
const SAFE_ETAG = /^[\w-][\w.-]{0,254}$/;
const SHA256 = /^[0-9a-f]{64}$/;

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** What a HEAD tells about one file. */
interface FileMeta {
  commit: string;
  etag: string;
  size?: number;
  /** Where to GET it: the CDN for LFS files, else the file's URL at the commit. */
  location: string;
}

/**
 * The snapshot directory of `repoId` at `options.revision` in the cache, with config.json,
 * preprocessor_config.json (when the repository has one) and the weights, downloading whatever
 * the cache lacks. Throws ModelNotFoundError when the model is not there (no such repository,
 * revision or config.json; offline and not cached), HubError when it cannot be had.
 */
export async function downloadModel(repoId: string, options: DownloadOptions = {}): Promise<string> {
  if (!isValidRepoId(repoId)) throw invalidArgument(RangeError, `"${repoId}" is not a hub model id (expected "org/name" or "name")`);
  const revision = options.revision ?? 'main';
  if (!isValidRevision(revision)) throw invalidArgument(RangeError, `revision "${revision}" is not a valid branch, tag or commit`);
  const cacheDir = hubCacheDir(options.cacheDir);
  const cached = findCachedSnapshot(cacheDir, repoId, revision);
  const offline = options.localFilesOnly ? 'localFilesOnly is set' : hubOffline() ? 'HF_HUB_OFFLINE is set' : undefined;
  if (offline) {
    if (cached.snapshot) return cached.snapshot;
    throw new ModelNotFoundError(
      repoId,
      [`HuggingFace cache: ${cached.looked}`],
      `Nothing was downloaded (${offline}): load it once with a network, or fill the cache with huggingface_hub.`,
    );
  }
  return new RepoDownload(repoId, revision, join(cacheDir, repoFolderName(repoId)), options).run(cached);
}

/** One downloadModel call: the repository, its commit once known, and the request settings. */
class RepoDownload {
  private readonly endpoint = (process.env.HF_ENDPOINT?.trim() || 'https://huggingface.co').replace(/\/+$/, '');
  private readonly token: { token?: string; source?: string };
  private readonly headers: Record<string, string>;
  // As huggingface_hub: HF_HUB_ETAG_TIMEOUT for metadata, HF_HUB_DOWNLOAD_TIMEOUT for downloads.
  private readonly etagTimeoutMs = envSeconds('HF_HUB_ETAG_TIMEOUT', 10);
  private readonly downloadTimeoutMs = envSeconds('HF_HUB_DOWNLOAD_TIMEOUT', 10);
  private readonly weights: boolean;
  private commit = '';

  constructor(
    private readonly repoId: string,
    private readonly revision: string,
    private readonly repoDir: string,
    private readonly options: DownloadOptions,
  ) {
    if (!URL.canParse(this.endpoint) || !/^https?:$/.test(new URL(this.endpoint).protocol)) {
      throw invalidArgument(RangeError, `$HF_ENDPOINT must be an http or https URL, got "${this.endpoint}"`);
    }
    this.token = hubToken(options.token);
    this.weights = options.weights ?? true;
    this.headers = {
      'User-Agent': `visiontorch; node/${process.versions.node}`,
      // The real size, not a compressed one: it is what the download is checked against.
      'Accept-Encoding': 'identity',
      ...(this.token.token && { Authorization: `Bearer ${this.token.token}` }),
    };
  }

  private get snapshot(): string {
    return join(this.repoDir, 'snapshots', this.commit);
  }

  private url(revision: string, file: string): string {
    return `${this.endpoint}/${this.repoId}/resolve/${quote(revision)}/${file.split('/').map(quote).join('/')}`;
  }

  async run(cached: CacheLookup): Promise<string> {
    // A commit never changes: a snapshot that holds everything needs no request.
    if (COMMIT_HASH.test(this.revision) && this.ready(this.revision)) return join(this.repoDir, 'snapshots', this.revision);
    let config: FileMeta | undefined;
    try {
      // With a snapshot to fall back on, an unreachable hub is not waited for.
      config = await this.head(this.revision, CONFIG, cached.snapshot ? { retries: 0, baseDelayMs: 0 } : undefined);
    } catch (error) {
      if (cached.snapshot && isTransient(error)) return cached.snapshot;
      const failure = this.failure(error, CONFIG);
      if (failure instanceof ModelNotFoundError) {
        throw new ModelNotFoundError(this.repoId, [`HuggingFace cache: ${cached.looked}`, ...failure.searched], failure.hint);
      }
      throw failure;
    }
    this.commit = config!.commit;
    if (!this.ready(this.commit)) {
      await this.ensure(CONFIG, config);
      await this.ensure(PROCESSOR);
      if (this.weights) await this.ensureWeights();
    }
    // Only now: until the new snapshot is whole, the ref keeps naming the last complete one,
    // which offline loads can still use.
    if (this.revision !== this.commit) await this.writeRef().catch((error: unknown) => Promise.reject(this.failure(error, `refs/${this.revision}`)));
    return this.snapshot;
  }

  /** Whether the snapshot of `commit` holds all this load needs. */
  private ready(commit: string): boolean {
    const dir = join(this.repoDir, 'snapshots', commit);
    const has = (file: string): boolean => isFile(join(dir, file));
    if (!has(CONFIG)) return false;
    if (!has(PROCESSOR) && !existsSync(join(this.repoDir, '.no_exist', commit, PROCESSOR))) return false;
    if (!this.weights) return true;
    return WEIGHTS.some(([single, index]) => {
      if (has(single)) return true;
      if (!has(index)) return false;
      try {
        return this.shards(join(dir, index), index).every(has);
      } catch {
        return false; // a broken index: the download path reports it
      }
    });
  }

  private async ensureWeights(): Promise<void> {
    for (const [single, index] of WEIGHTS) {
      if (await this.ensure(single)) return;
      if (await this.ensure(index)) {
        for (const shard of this.shards(join(this.snapshot, index), index)) {
          if (!(await this.ensure(shard))) {
            throw new HubError(
              `${index} of "${this.repoId}" names the shard ${shard}, which the hub does not have`,
              this.url(this.commit, shard),
              404,
            );
          }
        }
        return;
      }
    }
    const names = WEIGHTS.flat().join(', ');
    throw new HubError(
      `"${this.repoId}" at ${this.commit} has no weights this package reads (looked for ${names})`,
      this.url(this.commit, WEIGHTS[0][0]),
      404,
    );
  }

  /** The shard file names an index lists, each checked to be a plain file name. */
  private shards(path: string, index: string): string[] {
    let weightMap: unknown;
    try {
      weightMap = (JSON.parse(readFileSync(path, 'utf8')) as { weight_map?: unknown }).weight_map;
    } catch (error) {
      throw new HubError(`${index} of "${this.repoId}" is not valid JSON: ${(error as Error).message}`);
    }
    if (typeof weightMap !== 'object' || weightMap === null) throw new HubError(`${index} of "${this.repoId}" has no "weight_map" object`);
    const names = [...new Set(Object.values(weightMap))];
    for (const name of names) {
      if (typeof name !== 'string' || !isPlainFileName(name)) {
        throw new HubError(
          `${index} of "${this.repoId}" names the shard ${JSON.stringify(name)}: refused, a shard must be a plain file name in the repository`,
        );
      }
    }
    return names as string[];
  }

  /**
   * Puts `file` of the commit into the snapshot, downloading its blob unless the cache has it
   * (another revision may share it). False when the repository has no such file.
   */
  private async ensure(file: string, known?: FileMeta): Promise<boolean> {
    const pointer = join(this.snapshot, file);
    if (isFile(pointer)) return true;
    if (existsSync(join(this.repoDir, '.no_exist', this.commit, file))) return false;
    try {
      const meta = known ?? (await this.head(this.commit, file, undefined, true));
      if (!meta) return false;
      const blob = join(this.repoDir, 'blobs', meta.etag);
      if (!isFile(blob)) {
        await mkdir(dirname(blob), { recursive: true });
        await withFileLock(`${blob}.lock`, async () => {
          // Whoever held the lock before may have just downloaded it.
          if (!isFile(blob)) await this.download(file, meta, blob);
        });
      }
      await linkRelative(blob, pointer);
      return true;
    } catch (error) {
      throw this.failure(error, file);
    }
  }

  /**
   * The metadata of `file` at `revision`, as huggingface_hub's get_hf_file_metadata reads it.
   * `optional`: undefined when the repository has no such file (noted in .no_exist/).
   */
  private async head(revision: string, file: string, policy?: RetryPolicy, optional = false): Promise<FileMeta | undefined> {
    const url = this.url(revision, file);
    let answer: { final: string; response: IncomingMessage };
    try {
      answer = await withRetries(async () => {
        const { url: final, response } = await sendFollowing(
          url,
          { method: 'HEAD', headers: this.headers, timeoutMs: this.etagTimeoutMs },
          'relative',
        );
        response.resume();
        const status = response.statusCode ?? 0;
        if (status >= 400) throw new HttpError(`${url} answered ${status}`, url, status, response.headers);
        return { final, response };
      }, policy);
    } catch (error) {
      const code = error instanceof HttpError && error.status === 404 ? (header(error.headers, 'x-error-code') ?? 'EntryNotFound') : undefined;
      if (!optional || code !== 'EntryNotFound') throw error;
      const commit = header((error as HttpError).headers, 'x-repo-commit');
      const absent = join(this.repoDir, '.no_exist', commit && COMMIT_HASH.test(commit) ? commit : this.commit, file);
      await mkdir(dirname(absent), { recursive: true });
      await writeFile(absent, '');
      return undefined;
    }
    const { headers, statusCode } = answer.response;
    const commit = header(headers, 'x-repo-commit');
    if (!commit || !COMMIT_HASH.test(commit)) {
      throw new HubError(
        `${url}: the answer has ${commit ? `a commit "${commit}" that is not a commit hash` : 'no X-Repo-Commit header'}: is ${this.endpoint} a HuggingFace hub?`,
        url,
      );
    }
    const etag = (header(headers, 'x-linked-etag') ?? header(headers, 'etag'))?.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
    if (!etag || !SAFE_ETAG.test(etag)) {
      throw new HubError(`${url}: the answer has ${etag ? `an etag ${JSON.stringify(etag)} that cannot name a file in the cache` : 'no ETag'}`, url);
    }
    const sizeText = header(headers, 'x-linked-size') ?? header(headers, 'content-length');
    const location = header(headers, 'location');
    const redirected = statusCode !== undefined && statusCode >= 300 && statusCode <= 399 && location !== undefined;
    return {
      commit,
      etag,
      size: sizeText !== undefined && /^\d+$/.test(sizeText) ? Number(sizeText) : undefined,
      location: redirected ? new URL(location, answer.final).href : revision === commit ? answer.final : this.url(commit, file),
    };
  }

  /** Downloads `file` into `blob` through blob.incomplete, resuming what an earlier try left. */
  private async download(file: string, meta: FileMeta, blob: string): Promise<void> {
    const partial = `${blob}.incomplete`;
    const handle = await open(partial, 'a');
    const sha = SHA256.test(meta.etag) ? { hash: createHash('sha256'), bytes: 0 } : undefined;
    let problem: string | undefined;
    try {
      await withRetries(() => this.fetchInto(handle, partial, file, meta, sha));
      const size = (await handle.stat()).size;
      if (meta.size !== undefined && size !== meta.size) problem = `${size} bytes where ${meta.size} were announced`;
      else if (sha) {
        if (sha.bytes !== size) sha.hash = await hashPrefix(partial, size);
        const digest = sha.hash.digest('hex');
        if (digest !== meta.etag) problem = `its sha256 is ${digest}, not ${meta.etag}`;
      }
    } finally {
      await handle.close();
    }
    if (problem) {
      await rm(partial, { force: true });
      throw new HubError(
        `${file} of "${this.repoId}" from ${meta.location} is corrupt: ${problem}. It was deleted; loading again downloads it afresh`,
        meta.location,
      );
    }
    await rename(partial, blob);
  }

  /** One GET into the partial file: appends after the bytes already there, or starts over when the server cannot resume. */
  private async fetchInto(handle: FileHandle, partial: string, file: string, meta: FileMeta, sha?: { hash: Hash; bytes: number }): Promise<void> {
    let offset = (await handle.stat()).size;
    if (meta.size !== undefined && offset > meta.size) {
      await handle.truncate(0);
      offset = 0;
    }
    if (meta.size !== undefined && offset === meta.size) return; // whole already: an earlier run stopped before renaming
    const headers: Record<string, string> = { ...this.headers, ...(offset > 0 && { Range: `bytes=${offset}-` }) };
    // A CDN gets no token, as huggingface_hub does not send it one.
    if (new URL(meta.location).origin !== new URL(this.endpoint).origin) delete headers.Authorization;
    const { url, response } = await sendFollowing(meta.location, { method: 'GET', headers, timeoutMs: this.downloadTimeoutMs }, 'all');
    const status = response.statusCode ?? 0;
    const rangeStart = Number(/^bytes (\d+)-/.exec(header(response.headers, 'content-range') ?? '')?.[1]);
    if (status === 416 || (status === 206 && rangeStart !== offset)) {
      response.resume();
      await handle.truncate(0);
      throw new HttpError(`${url}: the server cannot resume at byte ${offset}; starting over`, url);
    }
    if (status !== 200 && status !== 206) {
      response.resume();
      throw new HttpError(`${url} answered ${status}`, url, status, response.headers);
    }
    if (status === 200 && offset > 0) {
      await handle.truncate(0); // the server ignored Range: the whole file comes again
      offset = 0;
    }
    if (sha && sha.bytes !== offset) {
      sha.hash = await hashPrefix(partial, offset); // resuming what another try wrote
      sha.bytes = offset;
    }
    const report = (): void => this.options.onProgress?.({ file, downloadedBytes: offset, totalBytes: meta.size });
    report();
    const chunks = response[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await chunks.next();
      } catch (error) {
        throw new HttpError(`${url}: the connection broke after ${offset} bytes (${(error as Error).message})`, url);
      }
      if (next.done) break;
      await handle.write(next.value);
      sha?.hash.update(next.value);
      if (sha) sha.bytes += next.value.length;
      offset += next.value.length;
      report();
    }
    // A body that ended short without a Content-Length is a broken connection (resumed); one that
    // had all its Content-Length is the server's whole answer, which download() checks.
    if (meta.size !== undefined && offset < meta.size && header(response.headers, 'content-length') === undefined) {
      throw new HttpError(`${url}: the connection closed after ${offset} of ${meta.size} bytes`, url);
    }
  }

  /** refs/<revision> := commit, written whole (tmp + rename) and only when it changes. */
  private async writeRef(): Promise<void> {
    const ref = join(this.repoDir, 'refs', this.revision);
    if (isFile(ref) && readFileSync(ref, 'utf8').trim() === this.commit) return;
    await mkdir(dirname(ref), { recursive: true });
    const temporary = `${ref}.${randomUUID()}.tmp`;
    await writeFile(temporary, this.commit);
    await rename(temporary, ref);
  }

  /** A failed request as the user should read it. */
  private failure(error: unknown, file: string): Error {
    // The cache cannot be written: not a directory, no permission, no space.
    if (isSystemError(error)) {
      return withCode(
        new Error(`${file} of "${this.repoId}": cannot write to the cache at ${this.repoDir}: ${error.message}`, { cause: error }),
        ErrorCode.IO,
      );
    }
    if (!(error instanceof HttpError)) return error as Error;
    const { status, url } = error;
    const code = header(error.headers, 'x-error-code');
    const says = header(error.headers, 'x-error-message');
    const repo = `"${this.repoId}"`;
    if (status === 401 || status === 403) {
      const { token, source } = this.token;
      const message = !token
        ? `${repo} is gated or private${code === 'RepoNotFound' ? ', or does not exist' : ''}: set HF_TOKEN (or pass token) with access to it`
        : status === 401
          ? `the hub refused the token from ${source} for ${repo}: check it, or create a new one`
          : `the token from ${source} has no access to ${repo}: it is gated or private; request access on ${this.endpoint}/${this.repoId} or use a token that has it`;
      return new HubError(`${message} (${url} answered ${status}${says ? `: ${says}` : ''})`, url, status);
    }
    if (status === 404 && file === CONFIG) {
      const what =
        code === 'RepoNotFound'
          ? 'repository not found: no such model'
          : code === 'RevisionNotFound'
            ? `revision "${this.revision}" not found`
            : 'no such file: not a transformers model';
      return new ModelNotFoundError(
        this.repoId,
        [`hub: ${url} (${what})`],
        this.token.token ? undefined : 'A private model looks missing without a token: set HF_TOKEN if it is one.',
      );
    }
    if (status === 404) return new HubError(`${file} of ${repo}: no such file (${url} answered 404)`, url, status);
    if (isTransient(error)) return new HubError(`could not download ${file} of ${repo}: ${error.message}`, url, status);
    return new HubError(`${file} of ${repo}: ${url} answered ${status}${says ? `: ${says}` : ''}`, url, status);
  }
}

/** An error of the file system (ENOTDIR, EACCES, ENOSPC, ...), as Node raises them. */
function isSystemError(error: unknown): error is NodeJS.ErrnoException {
  return (
    error instanceof Error &&
    typeof (error as NodeJS.ErrnoException).syscall === 'string' &&
    /^E[A-Z]+$/.test(String((error as NodeJS.ErrnoException).code))
  );
}

/** sha256 of the first `bytes` bytes of a file. */
async function hashPrefix(path: string, bytes: number): Promise<Hash> {
  const hash = createHash('sha256');
  if (bytes > 0) for await (const chunk of createReadStream(path, { end: bytes - 1 })) hash.update(chunk as Buffer);
  return hash;
}

/** `pointer` -> the blob, as a relative symlink (`../../blobs/<etag>`) so that a moved cache still works. */
async function linkRelative(blob: string, pointer: string): Promise<void> {
  await mkdir(dirname(pointer), { recursive: true });
  const target = relative(dirname(pointer), blob);
  try {
    await symlink(target, pointer);
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  if ((await readlink(pointer).catch(() => undefined)) === target) return; // linked meanwhile by another process
  await rm(pointer, { force: true }); // a link to a blob that is gone
  await symlink(target, pointer);
}
