/**
 * A HuggingFace hub in miniature for the tests, on 127.0.0.1: `/{repo}/resolve/{revision}/{file}`
 * answers HEAD and GET with the hub's headers (X-Repo-Commit; ETag the git sha1 of small files;
 * X-Linked-Etag and X-Linked-Size the sha256 and size of LFS files, served from a second server,
 * the "CDN", through a 302), X-Error-Code on 404s, Range requests, and Bearer tokens for private
 * repositories. Every request is recorded; `intercept` lets a test answer one itself.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface FakeRepo {
  commit: string;
  files: Map<string, Buffer>;
  /** Branches and tags, all at `commit`. Default ['main']. */
  refs?: string[];
  /** Without `Authorization: Bearer <token>` it answers this status. */
  privateStatus?: 401 | 403;
}

export interface RecordedRequest {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
}

export type Interceptor = (req: IncomingMessage, res: ServerResponse, request: RecordedRequest) => boolean | undefined;

export const isLfs = (file: string): boolean => /\.(safetensors|bin)$/.test(file);
export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');
export const gitSha1 = (data: Buffer): string => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');

export class FakeHub {
  readonly repos = new Map<string, FakeRepo>();
  readonly requests: RecordedRequest[] = [];
  /** Tokens accepted for private repositories. */
  token = 'hf_secret';
  /** Send LFS files to the CDN with a 302, as the hub does. */
  redirectLfs = true;
  intercept?: Interceptor;
  /** Repositories renamed: old id -> new id, answered with a relative 307. */
  readonly renamed = new Map<string, string>();
  private readonly lfs = new Map<string, Buffer>();

  private constructor(
    private readonly hub: Server,
    private readonly cdn: Server,
  ) {}

  static async start(): Promise<FakeHub> {
    const fake: FakeHub = new FakeHub(
      createServer((req, res) => fake.answer('hub', req, res)),
      createServer((req, res) => fake.answer('cdn', req, res)),
    );
    await Promise.all([fake.hub, fake.cdn].map((s) => new Promise<void>((done) => s.listen(0, '127.0.0.1', done))));
    return fake;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.hub.address() as AddressInfo).port}`;
  }

  get cdnBase(): string {
    return `http://127.0.0.1:${(this.cdn.address() as AddressInfo).port}`;
  }

  /** A repository holding the files of a fixture directory (reference files left out). */
  addRepo(id: string, dir: string, commit: string, extra: Partial<FakeRepo> = {}): FakeRepo {
    const files = new Map<string, Buffer>();
    for (const name of readdirSync(dir).filter((n) => !n.startsWith('reference'))) files.set(name, readFileSync(join(dir, name)));
    const repo = { commit, files, ...extra };
    this.repos.set(id, repo);
    for (const data of files.values()) this.lfs.set(sha256(data), data);
    return repo;
  }

  setFile(id: string, name: string, data: Buffer): void {
    this.repos.get(id)!.files.set(name, data);
    this.lfs.set(sha256(data), data);
  }

  /** `METHOD path` of the requests so far, e.g. `HEAD /acme/vit/resolve/main/config.json`; `cdn:` prefixes the CDN's. */
  log(): string[] {
    return this.requests.map((r) => `${r.server === 'cdn' ? 'cdn:' : ''}${r.method} ${r.path}`);
  }

  async close(): Promise<void> {
    for (const server of [this.hub, this.cdn]) {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    }
  }

  private answer(server: 'hub' | 'cdn', req: IncomingMessage, res: ServerResponse): void {
    const request: RecordedRequest = { server, method: req.method ?? '', path: req.url ?? '', headers: req.headers };
    this.requests.push(request);
    if (this.intercept?.(req, res, request)) return;
    if (server === 'cdn') {
      const data = this.lfs.get(request.path.replace(/^\/cdn\//, ''));
      return void (data ? serve(req, res, data, {}) : end(res, 404, {}));
    }
    const match = /^\/(.+)\/resolve\/([^/]+)\/(.+)$/.exec(request.path);
    if (!match) return void end(res, 404, {});
    const [, repoId, revision, file] = match.map((m) => decodeURIComponent(m)) as [string, string, string, string];
    const renamed = this.renamed.get(repoId);
    if (renamed) return void end(res, 307, { Location: request.path.replace(repoId, renamed) });
    const repo = this.repos.get(repoId);
    if (!repo) return void end(res, 404, { 'X-Error-Code': 'RepoNotFound', 'X-Error-Message': 'Repository not found' });
    if (repo.privateStatus && req.headers.authorization !== `Bearer ${this.token}`) {
      return void end(res, repo.privateStatus, { 'X-Error-Code': 'GatedRepo', 'X-Error-Message': 'Access to this model is restricted' });
    }
    if (revision !== repo.commit && !(repo.refs ?? ['main']).includes(revision)) return void end(res, 404, { 'X-Error-Code': 'RevisionNotFound' });
    const data = repo.files.get(file);
    if (!data) return void end(res, 404, { 'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': repo.commit });
    const headers: Record<string, string> = { 'X-Repo-Commit': repo.commit };
    if (!isLfs(file)) return void serve(req, res, data, { ...headers, ETag: `"${gitSha1(data)}"` });
    const sha = sha256(data);
    Object.assign(headers, { 'X-Linked-Etag': `"${sha}"`, 'X-Linked-Size': String(data.length) });
    if (this.redirectLfs) return void end(res, 302, { ...headers, Location: `${this.cdnBase}/cdn/${sha}` });
    serve(req, res, data, { ...headers, ETag: `"${sha}"` });
  }
}

function end(res: ServerResponse, status: number, headers: Record<string, string>): void {
  res.writeHead(status, { 'Content-Length': '0', ...headers });
  res.end();
}

/** The body, or the part a `Range: bytes=N-` asks for. */
export function serve(req: IncomingMessage, res: ServerResponse, data: Buffer, headers: Record<string, string>): void {
  const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? Number.NaN);
  if (start >= data.length) return void end(res, 416, { 'Content-Range': `bytes */${data.length}` });
  const part = Number.isNaN(start) ? data : data.subarray(start);
  const range = Number.isNaN(start) ? {} : { 'Content-Range': `bytes ${start}-${data.length - 1}/${data.length}` };
  res.writeHead(Number.isNaN(start) ? 200 : 206, { ...headers, ...range, 'Content-Length': String(part.length), 'Accept-Ranges': 'bytes' });
  res.end(req.method === 'HEAD' ? undefined : part);
}
