import { execFile, execFileSync, spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { retryPolicy } from '../src/hub/http.js';
import { withFileLock } from '../src/hub/lock.js';
import {
  type DownloadProgress,
  ErrorCode,
  HubError,
  HuggingFaceModelLoader,
  type LoadModelOptions,
  ModelNotFoundError,
  type VisionModel,
} from '../src/index.js';
import { expectError, fixture, reference, repoRoot, tempDir } from './helpers.js';
import { FakeHub, gitSha1, isLfs, serve, sha256 } from './hub-server.js';

const REPO = 'acme/vit-tiny';
const COMMIT = '1234567890abcdef1234567890abcdef12345678';
const COMMIT2 = 'fedcba0987654321fedcba0987654321fedcba09';
const FILES = ['config.json', 'model.safetensors', 'preprocessor_config.json'];
const ENV = [
  'HF_ENDPOINT',
  'HF_TOKEN',
  'HUGGING_FACE_HUB_TOKEN',
  'HF_TOKEN_PATH',
  'HF_HOME',
  'HF_HUB_CACHE',
  'HF_HUB_OFFLINE',
  'HF_HUB_ETAG_TIMEOUT',
  'HF_HUB_DOWNLOAD_TIMEOUT',
];

let hub: FakeHub;
let cache: string;
const savedEnv = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));
const savedDelay = retryPolicy.baseDelayMs;
const opened: VisionModel[] = [];

beforeAll(async () => {
  hub = await FakeHub.start();
  retryPolicy.baseDelayMs = 5;
});
afterAll(async () => {
  await hub.close();
  retryPolicy.baseDelayMs = savedDelay;
});
beforeEach(() => {
  for (const key of ENV) delete process.env[key];
  process.env.HF_ENDPOINT = hub.endpoint;
  process.env.HF_HOME = tempDir(); // no token file of this machine's user
  hub.requests.length = 0;
  hub.intercept = undefined;
  hub.redirectLfs = true;
  hub.repos.clear();
  hub.addRepo(REPO, fixture('vit-tiny-random'), COMMIT);
  cache = tempDir();
});
afterEach(() => {
  for (const key of ENV) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
  for (const model of opened.splice(0)) model.dispose();
});

async function load(config: Record<string, unknown> = {}, options: LoadModelOptions = {}): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName: REPO, modelType: 'classification', cacheDir: cache, ...config }, options);
  opened.push(model);
  return model;
}

const repoDir = (id = REPO): string => join(cache, `models--${id.replace('/', '--')}`);
const snapshot = (commit = COMMIT, id = REPO): string => join(repoDir(id), 'snapshots', commit);
const fileOf = (name: string, dir = 'vit-tiny-random'): Buffer => readFileSync(fixture(dir, name));
const etagOf = (name: string, dir = 'vit-tiny-random'): string => (isLfs(name) ? sha256(fileOf(name, dir)) : gitSha1(fileOf(name, dir)));
const resolveUrl = (file: string, rev = COMMIT, id = REPO): string => `/${id}/resolve/${rev}/${file}`;
const gets = (): string[] => hub.log().filter((l) => l.includes('GET'));

async function logitsOf(model: VisionModel): Promise<unknown> {
  const ref = await reference('vit-tiny-random');
  return (await model.forward({ pixelValues: ref.tensors.pixel_values! })).logits!.data;
}

describe('downloading from the hub', () => {
  it('fetches config, processor config and weights into huggingface_hub’s cache layout', async () => {
    const events: DownloadProgress[] = [];
    const model = await load({}, { onProgress: (e) => events.push(e) });
    const weightsSha = etagOf('model.safetensors');
    expect(hub.log()).toEqual([
      `HEAD /${REPO}/resolve/main/config.json`,
      `GET ${resolveUrl('config.json')}`,
      `HEAD ${resolveUrl('preprocessor_config.json')}`,
      `GET ${resolveUrl('preprocessor_config.json')}`,
      `HEAD ${resolveUrl('model.safetensors')}`,
      `cdn:GET /cdn/${weightsSha}`,
    ]);
    expect(hub.requests.every((r) => r.headers['accept-encoding'] === 'identity' && r.headers.authorization === undefined)).toBe(true);

    expect(readdirSync(repoDir()).sort()).toEqual(['blobs', 'refs', 'snapshots']);
    expect(readFileSync(join(repoDir(), 'refs', 'main'), 'utf8')).toBe(COMMIT);
    expect(readdirSync(join(repoDir(), 'snapshots'))).toEqual([COMMIT]);
    expect(readdirSync(snapshot()).sort()).toEqual(FILES);
    // Exactly the blobs, no .lock or .incomplete left behind.
    expect(readdirSync(join(repoDir(), 'blobs')).sort()).toEqual(FILES.map((f) => etagOf(f)).sort());
    for (const file of FILES) {
      expect(readlinkSync(join(snapshot(), file))).toBe(`../../blobs/${etagOf(file)}`);
      expect(readFileSync(join(snapshot(), file)).equals(fileOf(file))).toBe(true);
    }

    const direct = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' });
    opened.push(direct);
    expect(await logitsOf(model)).toEqual(await logitsOf(direct));

    const size = fileOf('model.safetensors').length;
    expect(events.filter((e) => e.file === 'model.safetensors').at(-1)).toEqual({
      file: 'model.safetensors',
      downloadedBytes: size,
      totalBytes: size,
    });
    expect(events.map((e) => e.file)).toContain('config.json');
  });

  it('a second load asks once whether the branch moved; a commit, localFilesOnly or HF_HUB_OFFLINE ask nothing', async () => {
    await load();
    hub.requests.length = 0;
    await load();
    expect(hub.log()).toEqual([`HEAD /${REPO}/resolve/main/config.json`]);

    for (const config of [{ revision: COMMIT }, { localFilesOnly: true }]) {
      hub.requests.length = 0;
      await load(config);
      expect(hub.log()).toEqual([]);
    }
    process.env.HF_HUB_OFFLINE = '1';
    await load();
    expect(hub.log()).toEqual([]);
  });

  it('follows a moved branch into a new snapshot, reusing the blobs it already has', async () => {
    await load();
    hub.repos.get(REPO)!.commit = COMMIT2;
    hub.requests.length = 0;
    await load();
    expect(readFileSync(join(repoDir(), 'refs', 'main'), 'utf8')).toBe(COMMIT2);
    expect(readdirSync(snapshot(COMMIT2)).sort()).toEqual(FILES);
    expect(gets()).toEqual([]); // metadata only: every blob was there
  });

  it('pins a revision given as a commit hash without writing refs/, and a tag writes refs/<tag>', async () => {
    await load({ revision: COMMIT });
    expect(hub.log()[0]).toBe(`HEAD ${resolveUrl('config.json')}`);
    expect(existsSync(join(repoDir(), 'refs'))).toBe(false);
    expect(readdirSync(snapshot()).sort()).toEqual(FILES);
    await expectError(load({ revision: 'v1.0' }), ErrorCode.MODEL_NOT_FOUND, '"v1.0"');
    hub.repos.get(REPO)!.refs = ['main', 'v1.0'];
    await load({ revision: 'v1.0' });
    expect(readdirSync(join(repoDir(), 'refs'))).toEqual(['v1.0']);
    expect(readFileSync(join(repoDir(), 'refs', 'v1.0'), 'utf8')).toBe(COMMIT);
  });

  it('resumes a download cut off half way with a Range request', async () => {
    const data = fileOf('model.safetensors');
    const half = Math.floor(data.length / 2);
    let cut = false;
    hub.intercept = (_req, res, r) => {
      if (r.server !== 'cdn' || cut) return false;
      cut = true;
      res.writeHead(200, { 'Content-Length': String(data.length) });
      res.write(data.subarray(0, half), () => res.destroy());
      return true;
    };
    const events: DownloadProgress[] = [];
    await load({}, { onProgress: (e) => e.file === 'model.safetensors' && events.push(e) });
    const cdn = hub.requests.filter((r) => r.server === 'cdn');
    expect(cdn).toHaveLength(2);
    expect(cdn[0]!.headers.range).toBeUndefined();
    expect(cdn[1]!.headers.range).toBe(`bytes=${half}-`);
    expect(readFileSync(join(repoDir(), 'blobs', sha256(data))).equals(data)).toBe(true);
    expect(events.at(-1)?.downloadedBytes).toBe(data.length);
  });

  it('resumes the .incomplete file an earlier process left', async () => {
    const data = fileOf('model.safetensors');
    mkdirSync(join(repoDir(), 'blobs'), { recursive: true });
    writeFileSync(join(repoDir(), 'blobs', `${sha256(data)}.incomplete`), data.subarray(0, 1000));
    await load();
    expect(hub.requests.filter((r) => r.server === 'cdn').map((r) => r.headers.range)).toEqual(['bytes=1000-']);
    expect(readFileSync(join(snapshot(), 'model.safetensors')).equals(data)).toBe(true);
  });

  it('starts over when the server ignores Range (200) or refuses it (416)', async () => {
    const data = fileOf('model.safetensors');
    for (const answer of [200, 416]) {
      cache = tempDir();
      mkdirSync(join(repoDir(), 'blobs'), { recursive: true });
      writeFileSync(join(repoDir(), 'blobs', `${sha256(data)}.incomplete`), Buffer.alloc(1000, 7)); // not even the right bytes
      hub.intercept = (req, res, r) => {
        if (r.server !== 'cdn' || !req.headers.range) return false;
        if (answer === 416) res.writeHead(416).end();
        else res.writeHead(200, { 'Content-Length': String(data.length) }).end(data);
        return true;
      };
      await load();
      expect(readFileSync(join(snapshot(), 'model.safetensors')).equals(data)).toBe(true);
    }
  });

  it('rejects a corrupt body, naming the file, and keeps nothing of it', async () => {
    const bad = Buffer.from(fileOf('model.safetensors'));
    bad[bad.length - 1]! ^= 0xff;
    hub.intercept = (req, res, r) => {
      if (r.server !== 'cdn') return false;
      serve(req, res, bad, {});
      return true;
    };
    const error = await expectError(load(), ErrorCode.HUB, 'model.safetensors', `"${REPO}"`, sha256(bad), sha256(fileOf('model.safetensors')));
    expect(error).toBeInstanceOf(HubError);
    expect(readdirSync(snapshot())).not.toContain('model.safetensors');
    expect(existsSync(join(repoDir(), 'refs', 'main'))).toBe(false); // written once the snapshot is whole
    expect(readdirSync(join(repoDir(), 'blobs')).filter((n) => !/^[0-9a-f]+$/.test(n))).toEqual([]);

    hub.intercept = undefined;
    await load();
    expect(readFileSync(join(snapshot(), 'model.safetensors')).equals(fileOf('model.safetensors'))).toBe(true);
  });

  it('rejects a small file whose size is not the announced one', async () => {
    hub.intercept = (req, res, r) => {
      if (r.method !== 'GET' || !r.path.endsWith('/config.json')) return false;
      serve(req, res, Buffer.from('{}'), {});
      return true;
    };
    await expectError(load(), ErrorCode.HUB, 'config.json', `"${REPO}"`, '2 bytes', String(fileOf('config.json').length));
    expect(existsSync(snapshot())).toBe(false);
  });

  it('two loads in this process and one in another download each blob once', async () => {
    const data = fileOf('model.safetensors');
    // The weights come slowly, so that all three loads overlap.
    hub.intercept = (_req, res, r) => {
      if (r.server !== 'cdn') return false;
      res.writeHead(200, { 'Content-Length': String(data.length) });
      const step = Math.ceil(data.length / 8);
      let at = 0;
      const timer = setInterval(() => {
        res.write(data.subarray(at, at + step));
        at += step;
        if (at >= data.length) {
          clearInterval(timer);
          res.end();
        }
      }, 60);
      return true;
    };
    const script = `import { HuggingFaceModelLoader } from 'visiontorch';
      const model = await HuggingFaceModelLoader.loadModel({ modelName: '${REPO}', modelType: 'classification', cacheDir: process.env.TEST_CACHE });
      console.log(model.architecture);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: repoRoot, env: { ...process.env, TEST_CACHE: cache } });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((done) => child.on('exit', done));
    while (hub.requests.length === 0) await sleep(20); // the child has started downloading
    const models = await Promise.all([load(), load()]);
    expect(await exited, output).toBe(0);
    expect(output.trim()).toBe('ViTForImageClassification');
    expect(models.map((m) => m.architecture)).toEqual(['ViTForImageClassification', 'ViTForImageClassification']);
    expect(gets().filter((l) => l.startsWith('cdn:'))).toHaveLength(1);
    expect(gets().filter((l) => l.endsWith('/config.json'))).toHaveLength(1);
    expect(readFileSync(join(repoDir(), 'blobs', sha256(data))).equals(data)).toBe(true);
    expect(readdirSync(join(repoDir(), 'blobs')).sort()).toEqual(FILES.map((f) => etagOf(f)).sort());
  });

  it('downloads every shard a sharded index names', async () => {
    hub.addRepo('acme/sharded', fixture('vit-tiny-random-sharded'), COMMIT2);
    const model = await load({ modelName: 'acme/sharded' });
    const shards = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
    expect(readdirSync(snapshot(COMMIT2, 'acme/sharded')).sort()).toEqual([
      'config.json',
      ...shards,
      'model.safetensors.index.json',
      'preprocessor_config.json',
    ]);
    expect(existsSync(join(repoDir('acme/sharded'), '.no_exist', COMMIT2, 'model.safetensors'))).toBe(true);
    const direct = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random-sharded'), modelType: 'classification' });
    opened.push(direct);
    expect(await logitsOf(model)).toEqual(await logitsOf(direct));
  });

  it('falls back to pytorch_model.bin, and remembers what the repository lacks', async () => {
    hub.addRepo('acme/pt', fixture('vit-tiny-random-pt'), COMMIT2);
    hub.redirectLfs = false;
    await load({ modelName: 'acme/pt' });
    expect(
      hub
        .log()
        .filter((l) => l.startsWith('HEAD'))
        .map((l) => l.split('/').at(-1)),
    ).toEqual(['config.json', 'preprocessor_config.json', 'model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin']);
    expect(readdirSync(join(repoDir('acme/pt'), '.no_exist', COMMIT2)).sort()).toEqual(['model.safetensors', 'model.safetensors.index.json']);
    hub.requests.length = 0;
    await load({ modelName: 'acme/pt', revision: COMMIT2 });
    expect(hub.log()).toEqual([]);
  });

  it('downloads into $HF_HUB_CACHE, else $HF_HOME/hub, when no cacheDir is given', async () => {
    process.env.HF_HUB_CACHE = cache;
    expect((await load({ cacheDir: undefined })).loadReport.source).toBe(join(snapshot(), 'model.safetensors'));
    expect(readdirSync(snapshot()).sort()).toEqual(FILES);
    expect(existsSync(join(process.env.HF_HOME!, 'hub'))).toBe(false);

    delete process.env.HF_HUB_CACHE;
    const home = tempDir();
    process.env.HF_HOME = home;
    const inHome = join(home, 'hub', 'models--acme--vit-tiny', 'snapshots', COMMIT);
    expect((await load({ cacheDir: undefined })).loadReport.source).toBe(join(inHome, 'model.safetensors'));
    expect(readdirSync(inHome).sort()).toEqual(FILES);
    expect(readdirSync(cache)).toEqual(['models--acme--vit-tiny']); // nothing more in the first cache
  });

  it('fetches no weights for random initialisation', async () => {
    await load({ pretrained: false });
    expect(readdirSync(snapshot()).sort()).toEqual(['config.json', 'preprocessor_config.json']);
  });

  it('follows a relative redirect of a renamed repository, and caches it under the name asked for', async () => {
    hub.renamed.set('acme/old-vit', REPO);
    await load({ modelName: 'acme/old-vit' });
    expect(readdirSync(snapshot(COMMIT, 'acme/old-vit')).sort()).toEqual(FILES);
  });
});

describe('the CLI', () => {
  it('shows each download on stderr, as plain lines when it is not a terminal', async () => {
    const cli = join(repoRoot, 'dist', 'cli', 'main.js');
    const args = [cli, 'predict', '--model', REPO, '--top-k', '1', fixture('images', 'rocket.jpg')];
    // Asynchronously: this process's event loop serves the hub.
    const { stdout, stderr } = await promisify(execFile)(process.execPath, args, { env: { ...process.env, HF_HUB_CACHE: cache } });
    expect(stderr.trimEnd().split('\n')).toEqual([
      'downloading config.json (677 B)',
      expect.stringMatching(/^downloaded config\.json: 677 B in /),
      'downloading preprocessor_config.json (323 B)',
      expect.stringMatching(/^downloaded preprocessor_config\.json: 323 B in /),
      'downloading model.safetensors (100.5 kB)',
      expect.stringMatching(/^downloaded model\.safetensors: 100\.5 kB in /),
    ]);
    expect(stdout).toMatch(/rocket\.jpg\n {2}\d\.\d{4} {2}\S/);
    // Into $HF_HUB_CACHE, not $HF_HOME/hub.
    expect(readdirSync(snapshot()).sort()).toEqual(FILES);
    expect(existsSync(join(process.env.HF_HOME!, 'hub'))).toBe(false);
  });
});

describe('hub errors', () => {
  it('asks for a token for a gated or private model (401 and 403)', async () => {
    for (const status of [401, 403] as const) {
      hub.addRepo('acme/private', fixture('vit-tiny-random'), COMMIT, { privateStatus: status });
      const error = await expectError(load({ modelName: 'acme/private' }), ErrorCode.HUB, '"acme/private"', 'HF_TOKEN');
      expect(error).toBeInstanceOf(HubError);
      expect(error).toMatchObject({ status });
    }
  });

  it('sends the token as a Bearer header to the hub and never to the CDN', async () => {
    hub.addRepo('acme/private', fixture('vit-tiny-random'), COMMIT, { privateStatus: 401 });
    process.env.HF_TOKEN = hub.token;
    await load({ modelName: 'acme/private' });
    const [toHub, toCdn] = [hub.requests.filter((r) => r.server === 'hub'), hub.requests.filter((r) => r.server === 'cdn')];
    expect(toHub.map((r) => r.headers.authorization)).toEqual(toHub.map(() => `Bearer ${hub.token}`));
    expect(toCdn).toHaveLength(1);
    expect(toCdn[0]!.headers.authorization).toBeUndefined();
  });

  it('reads the token from the token option, $HUGGING_FACE_HUB_TOKEN and $HF_HOME/token, and says when it is refused', async () => {
    hub.addRepo('acme/private', fixture('vit-tiny-random'), COMMIT, { privateStatus: 401 });
    await load({ modelName: 'acme/private', cacheDir: tempDir() }, { token: hub.token });
    process.env.HUGGING_FACE_HUB_TOKEN = hub.token;
    await load({ modelName: 'acme/private', cacheDir: tempDir() });
    delete process.env.HUGGING_FACE_HUB_TOKEN;
    writeFileSync(join(process.env.HF_HOME!, 'token'), `${hub.token}\n`);
    await load({ modelName: 'acme/private', cacheDir: tempDir() });
    process.env.HF_TOKEN = 'hf_wrong';
    await expectError(load({ modelName: 'acme/private', cacheDir: tempDir() }), ErrorCode.HUB, '$HF_TOKEN', '"acme/private"');
  });

  it('names a repository that does not exist, and every place it looked', async () => {
    const error = await expectError(
      load({ modelName: 'acme/nope' }),
      ErrorCode.MODEL_NOT_FOUND,
      '"acme/nope"',
      'models--acme--nope',
      `${hub.endpoint}/acme/nope/resolve/main/config.json`,
    );
    expect(error).toBeInstanceOf(ModelNotFoundError);
  });

  it('retries a server error, then succeeds; reports the URL when it goes on', async () => {
    let failures = 0;
    hub.intercept = (_req, res, r) => {
      if (r.server !== 'hub' || !r.path.endsWith('/config.json') || r.method !== 'HEAD' || failures >= 2) return false;
      failures++;
      res.writeHead(500).end();
      return true;
    };
    await load();
    expect(hub.log().filter((l) => l.startsWith('HEAD') && l.endsWith('/config.json'))).toHaveLength(3);

    hub.intercept = (_req, res, r) => {
      if (!r.path.endsWith('/preprocessor_config.json')) return false;
      res.writeHead(503).end();
      return true;
    };
    const error = await expectError(
      load({ cacheDir: tempDir() }),
      ErrorCode.HUB,
      'preprocessor_config.json',
      `"${REPO}"`,
      `${hub.endpoint}/${REPO}/resolve/${COMMIT}/preprocessor_config.json`,
      '503',
    );
    expect(error).toBeInstanceOf(HubError);
  });

  it('gives up on a silent server after HF_HUB_ETAG_TIMEOUT and tries again', async () => {
    process.env.HF_HUB_ETAG_TIMEOUT = '0.2';
    let silent = 0;
    hub.intercept = (_req, _res, r) => r.method === 'HEAD' && silent++ < 2; // no answer at all
    await load();
    expect(silent).toBeGreaterThan(2);
    hub.intercept = () => true;
    await expectError(load({ cacheDir: tempDir() }), ErrorCode.HUB, 'config.json', '0.2 s');
  });

  it('refuses shard names, etags and commits that would leave the cache', async () => {
    hub.addRepo('acme/sharded', fixture('vit-tiny-random-sharded'), COMMIT2);
    const index = JSON.parse(fileOf('model.safetensors.index.json', 'vit-tiny-random-sharded').toString());
    index.weight_map['classifier.bias'] = '../evil.safetensors';
    hub.setFile('acme/sharded', 'model.safetensors.index.json', Buffer.from(JSON.stringify(index)));
    await expectError(load({ modelName: 'acme/sharded' }), ErrorCode.HUB, '"../evil.safetensors"');
    expect(hub.log().some((l) => l.includes('evil'))).toBe(false);

    for (const [name, value, named] of [
      ['ETag', '"../../../escape"', '"../../../escape"'],
      ['X-Repo-Commit', '../../x', '"../../x"'],
    ] as const) {
      hub.intercept = (_req, res, r) => {
        if (r.method !== 'HEAD') return false;
        res.writeHead(200, { ETag: '"abc"', 'X-Repo-Commit': COMMIT, [name]: value }).end();
        return true;
      };
      await expectError(load({ cacheDir: tempDir() }), ErrorCode.HUB, named);
    }
  });
});

describe('without a network', () => {
  /** A cache as Python's huggingface_hub writes it. */
  function pythonCache(): void {
    mkdirSync(join(repoDir(), 'blobs'), { recursive: true });
    mkdirSync(snapshot(), { recursive: true });
    mkdirSync(join(repoDir(), 'refs'));
    writeFileSync(join(repoDir(), 'refs', 'main'), COMMIT);
    for (const file of FILES) {
      copyFileSync(fixture('vit-tiny-random', file), join(repoDir(), 'blobs', etagOf(file)));
      symlinkSync(`../../blobs/${etagOf(file)}`, join(snapshot(), file));
    }
  }

  it('loads a cache that Python filled when the hub cannot be reached, asking it once', async () => {
    pythonCache();
    const weights = join(snapshot(), 'model.safetensors');
    process.env.HF_ENDPOINT = 'http://127.0.0.1:9'; // nothing listens there
    expect((await load()).loadReport.source).toBe(weights);
    expect((await load({ revision: COMMIT })).loadReport.source).toBe(weights);

    // A hub that answers 503 is asked once whether the branch moved, not retried: the cache is used.
    process.env.HF_ENDPOINT = hub.endpoint;
    hub.intercept = (_req, res) => {
      res.writeHead(503).end();
      return true;
    };
    expect((await load()).loadReport.source).toBe(weights);
    expect(hub.log()).toEqual([`HEAD /${REPO}/resolve/main/config.json`]);
  });

  it('offline with nothing cached says so and where it looked', async () => {
    const error = await expectError(load({ localFilesOnly: true }), ErrorCode.MODEL_NOT_FOUND, repoDir(), 'localFilesOnly');
    expect(error).toBeInstanceOf(ModelNotFoundError);
    process.env.HF_HUB_OFFLINE = 'true';
    await expectError(load(), ErrorCode.MODEL_NOT_FOUND, 'HF_HUB_OFFLINE');
    expect(hub.requests).toEqual([]);
  });
});

describe('withFileLock', () => {
  it('lets one holder in at a time', async () => {
    const path = join(tempDir(), 'x.lock');
    let inside = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 4 }, () =>
        withFileLock(path, async () => {
          most = Math.max(most, ++inside);
          await sleep(20);
          inside--;
        }),
      ),
    );
    expect(most).toBe(1);
    expect(existsSync(path)).toBe(false);
  });

  it('breaks a lock whose process is gone, or that nobody refreshed', async () => {
    const dir = tempDir();
    const dead = Number(execFileSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' }).trim());
    writeFileSync(join(dir, 'dead.lock'), `${dead} ${hostname()}\n`);
    expect(await withFileLock(join(dir, 'dead.lock'), async () => 'taken')).toBe('taken');

    writeFileSync(join(dir, 'old.lock'), ''); // as Python's filelock may leave one
    const old = new Date(Date.now() - 60_000);
    utimesSync(join(dir, 'old.lock'), old, old);
    expect(await withFileLock(join(dir, 'old.lock'), async () => 'taken', { staleMs: 30_000 })).toBe('taken');

    // A live holder's lock is waited for.
    writeFileSync(join(dir, 'live.lock'), `${process.pid} ${hostname()}\n`);
    let released = false;
    setTimeout(() => {
      rmSync(join(dir, 'live.lock'));
      released = true;
    }, 150);
    expect(await withFileLock(join(dir, 'live.lock'), async () => released)).toBe(true);
  });
});
