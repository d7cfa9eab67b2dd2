/**
 * Image URLs as inputs: fetched from a server on 127.0.0.1 and predicted exactly as the same file
 * given by path; statuses, oversize bodies (declared or not), silence and refused schemes are
 * coded errors that name the URL, and the server sees the connection closed.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeImage, ErrorCode, HuggingFaceModelLoader, type VisionModel } from '../src/index.js';
import { expectError, fixture, repoRoot } from './helpers.js';

const IMAGES = { 'rocket.jpg': fixture('images', 'rocket.jpg'), 'chelsea.png': fixture('images', 'chelsea.png') };
const MIB = 1024 * 1024;

/** Serves the fixture images and the misbehaving answers the tests need; records each request. */
class ImageServer {
  /** Per path, whether the server saw its latest connection closed. */
  readonly closed = new Map<string, Promise<void>>();
  readonly paths: string[] = [];
  inFlight = 0;
  mostInFlight = 0;
  /** Milliseconds before an image is answered, so that concurrent fetches overlap. */
  delayMs = 0;
  private readonly server: Server;

  private constructor() {
    this.server = createServer((req, res) => this.answer(req, res));
  }

  static async start(): Promise<ImageServer> {
    const server = new ImageServer();
    await new Promise<void>((done) => server.server.listen(0, '127.0.0.1', done));
    return server;
  }

  url(path: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${path}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((done) => this.server.close(done));
  }

  private answer(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').replace(/\?.*$/, '');
    this.paths.push(path);
    this.closed.set(path, new Promise((done) => res.on('close', done)));
    const name = path.slice(1);
    if (name in IMAGES) {
      this.inFlight++;
      this.mostInFlight = Math.max(this.mostInFlight, this.inFlight);
      setTimeout(() => {
        this.inFlight--;
        const data = readFileSync(IMAGES[name as keyof typeof IMAGES]);
        res.writeHead(200, { 'content-type': name.endsWith('.png') ? 'image/png' : 'image/jpeg', 'content-length': data.length });
        res.end(data);
      }, this.delayMs);
    } else if (path === '/private.jpg') {
      if (req.headers.authorization === `Basic ${Buffer.from('user:hunter2').toString('base64')}`) res.end(readFileSync(IMAGES['rocket.jpg']));
      else res.writeHead(401, { 'www-authenticate': 'Basic' }).end();
    } else if (path === '/redirect') {
      res.writeHead(302, { location: '/rocket.jpg' }).end();
    } else if (path === '/loop') {
      res.writeHead(302, { location: '/loop' }).end();
    } else if (path === '/big') {
      // 2 MiB, truthfully declared.
      res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': 2 * MIB });
      res.end(Buffer.alloc(2 * MIB, 0xff));
    } else if (path === '/endless') {
      // No length, and bytes for as long as the client reads them.
      res.writeHead(200, { 'content-type': 'image/jpeg' });
      const chunk = Buffer.alloc(64 * 1024, 0xff);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      pump();
    } else if (path === '/silent') {
      // Never answers.
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    }
  }
}

let server: ImageServer;
let model: VisionModel;
const savedEnv = { ...process.env };

beforeAll(async () => {
  server = await ImageServer.start();
  model = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' });
});

afterAll(async () => {
  model.dispose();
  await server.stop();
});

afterEach(() => {
  for (const key of ['VISIONTORCH_MAX_IMAGE_BYTES', 'VISIONTORCH_IMAGE_FETCH_TIMEOUT']) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
  server.delayMs = 0;
});

describe('an image URL', () => {
  it.each(Object.keys(IMAGES))('predicts and preprocesses %s exactly as its file', async (name) => {
    const path = IMAGES[name as keyof typeof IMAGES];
    expect(await model.predict(server.url(`/${name}`))).toEqual(await model.predict(path));
    const fromUrl = await model.preprocess([server.url(`/${name}`)]);
    const fromPath = await model.preprocess([path]);
    expect(fromUrl.pixelValues.shape).toEqual(fromPath.pixelValues.shape);
    expect(Buffer.from(fromUrl.pixelValues.data.buffer).equals(Buffer.from(fromPath.pixelValues.data.buffer))).toBe(true);
    // The scheme is case-insensitive; decodeImage takes URLs too.
    const decoded = await decodeImage(server.url(`/${name}`).replace('http', 'HTTP'));
    expect(Buffer.from(decoded.data).equals(Buffer.from((await decodeImage(path)).data))).toBe(true);
  });

  it('fetches several URLs of one call at most 4 at a time, in order', async () => {
    server.delayMs = 250;
    server.mostInFlight = 0;
    const names = ['rocket.jpg', 'chelsea.png', 'chelsea.png', 'rocket.jpg', 'rocket.jpg', 'chelsea.png', 'rocket.jpg', 'chelsea.png'];
    const fromUrls = await model.predict([...names.map((name) => server.url(`/${name}`)), IMAGES['rocket.jpg']]);
    const fromPaths = await model.predict([...names.map((name) => IMAGES[name as keyof typeof IMAGES]), IMAGES['rocket.jpg']]);
    expect(fromUrls).toEqual(fromPaths);
    expect(server.mostInFlight).toBe(4);
  });

  it('follows redirects', async () => {
    expect(await model.predict(server.url('/redirect'))).toEqual(await model.predict(IMAGES['rocket.jpg']));
    await expectError(model.predict(server.url('/loop')), ErrorCode.IMAGE, server.url('/loop'), /redirect/);
  });

  it('a status other than 2xx is an error naming the status and the URL, without its secrets', async () => {
    const error = await expectError(
      model.predict(server.url('/missing.jpg?token=s3cret')),
      ErrorCode.IMAGE,
      'HTTP 404 Not Found',
      `${server.url('/missing.jpg')}?…`,
    );
    expect(error.message).not.toContain('s3cret');
    expect(error).toMatchObject({ status: 404, url: `${server.url('/missing.jpg')}?…` });
    const withCredentials = server.url('/missing.jpg').replace('http://', 'http://user:hunter2@');
    expect((await expectError(model.predict(withCredentials), ErrorCode.IMAGE, server.url('/missing.jpg'))).message).not.toContain('hunter2');
  });

  it('credentials in the URL are sent as Basic authentication', async () => {
    const url = (password: string) => server.url('/private.jpg').replace('http://', `http://user:${password}@`);
    expect(await model.predict(url('hunter2'))).toEqual(await model.predict(IMAGES['rocket.jpg']));
    const refused = await expectError(model.predict(url('wrong')), ErrorCode.IMAGE, 'HTTP 401', server.url('/private.jpg'));
    expect(refused.message).not.toContain('wrong');
  });

  it('a string that is not a URL after its scheme is refused before anything is fetched', async () => {
    await expectError(model.predict('http://exa mple.com/x.jpg'), ErrorCode.INVALID_ARGUMENT, 'is not a valid URL');
  });

  it('a body over the limit with a true Content-Length is refused before it is read', async () => {
    process.env.VISIONTORCH_MAX_IMAGE_BYTES = '1M';
    await expectError(
      model.predict(server.url('/big')),
      ErrorCode.IMAGE,
      server.url('/big'),
      'larger than the limit of 1 MiB (VISIONTORCH_MAX_IMAGE_BYTES)',
    );
    await server.closed.get('/big');
  });

  it('a body of no declared length is cut off at the limit', async () => {
    process.env.VISIONTORCH_MAX_IMAGE_BYTES = String(MIB);
    await expectError(model.predict(server.url('/endless')), ErrorCode.IMAGE, server.url('/endless'), 'larger than the limit of 1 MiB');
    // The server sees the connection closed: nothing keeps streaming.
    await server.closed.get('/endless');
  });

  it('a server that never answers times out', async () => {
    process.env.VISIONTORCH_IMAGE_FETCH_TIMEOUT = '0.3';
    const started = Date.now();
    await expectError(model.predict(server.url('/silent')), ErrorCode.IMAGE, server.url('/silent'), 'no complete answer within 0.3 s');
    expect(Date.now() - started).toBeLessThan(5000);
    await server.closed.get('/silent');
  });

  it('one failing URL fails the call and stops the others', async () => {
    process.env.VISIONTORCH_IMAGE_FETCH_TIMEOUT = '10';
    const started = Date.now();
    await expectError(model.predict([server.url('/silent'), server.url('/missing.png')]), ErrorCode.IMAGE, 'HTTP 404');
    expect(Date.now() - started).toBeLessThan(5000);
    await server.closed.get('/silent');
  });

  it('a refused connection is an error naming the URL', async () => {
    const gone = await ImageServer.start();
    const url = gone.url('/rocket.jpg');
    await gone.stop();
    await expectError(model.predict(url), ErrorCode.IMAGE, url, /ECONNREFUSED/);
  });

  it('bad limits in the environment are named', async () => {
    process.env.VISIONTORCH_MAX_IMAGE_BYTES = 'lots';
    await expectError(model.predict(server.url('/rocket.jpg')), ErrorCode.CONFIG, 'VISIONTORCH_MAX_IMAGE_BYTES', '"lots"');
    delete process.env.VISIONTORCH_MAX_IMAGE_BYTES;
    process.env.VISIONTORCH_IMAGE_FETCH_TIMEOUT = '-1';
    await expectError(model.predict(server.url('/rocket.jpg')), ErrorCode.CONFIG, 'VISIONTORCH_IMAGE_FETCH_TIMEOUT');
  });
});

describe('other schemes', () => {
  it('a file:// URL is its path', async () => {
    expect(await model.predict(pathToFileURL(IMAGES['chelsea.png']).href)).toEqual(await model.predict(IMAGES['chelsea.png']));
  });

  it.each(['ftp://127.0.0.1/rocket.jpg', 'data:image/png;base64,iVBORw0KGgo=', 'S3://bucket/rocket.jpg'])(
    '%s is refused, naming what is accepted',
    async (url) => {
      await expectError(model.predict(url), ErrorCode.INVALID_ARGUMENT, 'unsupported image URL scheme', 'an http:// or https:// URL');
      // Before anything is fetched: the valid URL beside it is not requested.
      const before = server.paths.length;
      await expectError(model.predict([server.url('/rocket.jpg'), url]), ErrorCode.INVALID_ARGUMENT);
      expect(server.paths.length).toBe(before);
    },
  );
});

describe('batching', () => {
  it('reads a URL image size from its bytes, so detection merges it with the same image by path', async () => {
    const detr = await HuggingFaceModelLoader.loadModel({ modelName: fixture('detr-tiny-random'), modelType: 'object_detection' });
    try {
      const alone = await detr.predict(IMAGES['rocket.jpg'], { threshold: 0 });
      detr.setBatching({ maxBatchSize: 2, maxWaitMs: 60_000 });
      const [fromUrl, fromPath] = await Promise.all([
        detr.predict(server.url('/rocket.jpg'), { threshold: 0 }),
        detr.predict(IMAGES['rocket.jpg'], { threshold: 0 }),
      ]);
      expect(detr.batchingStats).toMatchObject({ requests: 2, batches: 1, largestBatch: 2 });
      expect(fromUrl).toEqual(fromPath);
      // Batched as alone, up to float rounding.
      expect(fromUrl[0]!.map((d) => d.label)).toEqual(alone[0]!.map((d) => d.label));
    } finally {
      detr.dispose();
    }
  });
});

describe('the CLI', () => {
  it('predicts an image URL', async () => {
    const url = server.url('/rocket.jpg');
    const cli = join(repoRoot, 'dist', 'cli', 'main.js');
    // Asynchronously: this process's event loop serves the image.
    const { stdout } = await promisify(execFile)(process.execPath, [cli, 'predict', '--model', fixture('vit-tiny-random'), url, '--json'], {
      encoding: 'utf8',
    });
    const output = JSON.parse(stdout) as { image: string; predictions: unknown }[];
    expect(output).toEqual([{ image: url, predictions: (await model.predict(IMAGES['rocket.jpg']))[0] }]);
  });
});
