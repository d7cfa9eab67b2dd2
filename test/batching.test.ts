import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import {
  type BatchingOptions,
  type ClassificationPrediction,
  type DetectionPrediction,
  decodeImage,
  ErrorCode,
  HuggingFaceModelLoader,
  type ImageInput,
  type ModelType,
  type Prediction,
  type SegmentationPrediction,
  type VisionModel,
} from '../src/index.js';
import { headerDimensions, imageDimensions } from '../src/models/image-dimensions.js';
import { expectCode, expectError, fixture, repoRoot, tempDir } from './helpers.js';

const loaded: VisionModel[] = [];
afterAll(() => {
  for (const model of loaded) model.dispose();
});
afterEach(() => {
  vi.useRealTimers();
});

async function load(name: string, modelType: ModelType, batching?: BatchingOptions | boolean): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName: fixture(name), modelType }, { batching });
  loaded.push(model);
  return model;
}

/** Raw RGB pixels from a seeded generator: distinct images of any size, no files needed. */
function syntheticImage(seed: number, width: number, height: number): ImageInput {
  const data = new Uint8Array(width * height * 3);
  let state = seed * 2654435761 + 1;
  for (let i = 0; i < data.length; i++) {
    state = (state * 1103515245 + 12345) % 2147483648;
    data[i] = state >> 23;
  }
  return { data, width, height, channels: 3 };
}

const photos = {
  rocket: fixture('images', 'rocket.jpg'),
  chelsea: fixture('images', 'chelsea.png'),
  coco: fixture('coco-sample', '000000039769.jpg'),
};

/** 64 different images: synthetic pixels of several sizes, and the photos as paths and as bytes. */
function sixtyFourImages(): ImageInput[] {
  const encoded = [photos.rocket, photos.chelsea, photos.coco, readFileSync(photos.rocket), readFileSync(photos.chelsea)];
  return Array.from({ length: 64 }, (_, i) =>
    i % 8 === 0 ? encoded[(i / 8) % encoded.length]! : syntheticImage(i, 20 + (i % 5) * 7, 24 + (i % 3) * 9),
  );
}

/** Each image predicted alone, one call after another, with batching off. */
async function oneByOne(model: VisionModel, calls: ImageInput[][], options: { topK?: number; threshold?: number } = {}): Promise<Prediction[][]> {
  const settings = model.batching;
  model.setBatching(false);
  const results: Prediction[][] = [];
  for (const images of calls) results.push(await model.predict(images, options));
  if (settings) model.setBatching(settings);
  return results;
}

// Merged calls run the same computation on a larger batch: float rounding may differ in the last bits.
function expectSameClassification(actual: Prediction[], expected: Prediction[], what: string): void {
  expect(actual.length, `${what}: image count`).toBe(expected.length);
  expected.forEach((ranked, i) => {
    const got = actual[i] as ClassificationPrediction[];
    const want = ranked as ClassificationPrediction[];
    expect(
      got.map((p) => [p.index, p.label]),
      `${what}, image ${i}: labels`,
    ).toEqual(want.map((p) => [p.index, p.label]));
    for (const [j, p] of got.entries()) expect(Math.abs(p.score - want[j]!.score), `${what}, image ${i}: score ${j}`).toBeLessThan(1e-6);
  });
}

function expectSameDetections(actual: Prediction[], expected: Prediction[], what: string): void {
  expect(actual.length, `${what}: image count`).toBe(expected.length);
  expected.forEach((objects, i) => {
    const got = actual[i] as DetectionPrediction[];
    const want = objects as DetectionPrediction[];
    expect(
      got.map((d) => d.label),
      `${what}, image ${i}: labels`,
    ).toEqual(want.map((d) => d.label));
    got.forEach((d, j) => {
      const w = want[j]!;
      expect(Math.abs(d.score - w.score), `${what}, image ${i}, object ${j}: score`).toBeLessThan(1e-5);
      // Pixels of images hundreds wide: float32 rounding alone stays below 1e-4.
      for (const side of ['xmin', 'ymin', 'xmax', 'ymax'] as const) {
        expect(Math.abs(d.box[side] - w.box[side]), `${what}, image ${i}, object ${j}: ${side}`).toBeLessThan(1e-3);
      }
    });
  });
}

describe('micro-batching of classification predict calls', () => {
  it('is off by default', async () => {
    const model = await load('vit-tiny-random', 'classification');
    expect(model.batching).toBe(false);
    await Promise.all([model.predict(photos.rocket), model.predict(photos.chelsea)]);
    expect(model.batchingStats).toEqual({ requests: 0, images: 0, batches: 0, largestBatch: 0, splitBatches: 0, pending: 0 });
  });

  it('64 concurrent calls run in 4 batches of 16 and get the results of one-by-one calls, each its own', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 16, maxWaitMs: 5 });
    expect(model.batching).toEqual({ maxBatchSize: 16, maxWaitMs: 5 });
    const images = sixtyFourImages();
    const expected = await oneByOne(
      model,
      images.map((image) => [image]),
    );
    // The images give different answers, so a result handed to the wrong caller would show.
    expect(new Set(expected.map(([ranked]) => (ranked as ClassificationPrediction[])[0]!.score)).size).toBeGreaterThan(40);

    const results = await Promise.all(images.map((image) => model.predict(image)));
    for (const [i, result] of results.entries()) expectSameClassification(result, expected[i]!, `caller ${i}`);
    expect(model.batchingStats).toEqual({ requests: 64, images: 64, batches: 4, largestBatch: 16, splitBatches: 0, pending: 0 });
  });

  it('merges only calls with the same options, and keeps the images of a call together and in order', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 8, maxWaitMs: 60_000 });
    const images = sixtyFourImages();
    // topK 2: calls of 1, 3, 1 and 3 images; topK 5: four calls of 2. Each key fills one batch of 8.
    const calls = [
      { topK: 2, images: images.slice(0, 1) },
      { topK: 5, images: images.slice(1, 3) },
      { topK: 2, images: images.slice(3, 6) },
      { topK: 5, images: images.slice(6, 8) },
      { topK: 2, images: images.slice(8, 9) },
      { topK: 5, images: images.slice(9, 11) },
      { topK: 2, images: images.slice(11, 14) },
      { topK: 5, images: images.slice(14, 16) },
    ];
    const expected: Prediction[][] = [];
    for (const call of calls) expected.push((await oneByOne(model, [call.images], { topK: call.topK }))[0]!);
    const results = await Promise.all(calls.map((call) => model.predict(call.images, { topK: call.topK })));
    results.forEach((result, i) => {
      expect((result[0] as ClassificationPrediction[]).length).toBe(calls[i]!.topK);
      expectSameClassification(result, expected[i]!, `call ${i}`);
    });
    expect(model.batchingStats).toMatchObject({ requests: 8, images: 16, batches: 2, largestBatch: 8 });
  });

  it('the wait timer starts a partial batch maxWaitMs after its first call', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 16, maxWaitMs: 50 });
    const images = sixtyFourImages().slice(0, 3);
    const expected = await oneByOne(
      model,
      images.map((image) => [image]),
    );
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const calls = [model.predict(images[0]!)];
    vi.advanceTimersByTime(20);
    calls.push(model.predict(images[1]!), model.predict(images[2]!));
    vi.advanceTimersByTime(29);
    expect(model.batchingStats).toMatchObject({ batches: 0, pending: 3 });
    vi.advanceTimersByTime(1); // 50 ms after the first call
    expect(model.batchingStats).toMatchObject({ batches: 1, largestBatch: 3, pending: 0 });
    vi.useRealTimers();
    const results = await Promise.all(calls);
    for (const [i, result] of results.entries()) expectSameClassification(result, expected[i]!, `caller ${i}`);
  });

  it('a full batch starts at once; the next waits for it, taking calls until full', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 4, maxWaitMs: 60_000 });
    const images = sixtyFourImages().slice(0, 8);
    const first = images.slice(0, 4).map((image) => model.predict(image));
    expect(model.batchingStats).toMatchObject({ batches: 1, largestBatch: 4, pending: 0 });
    const second = images.slice(4).map((image) => model.predict(image));
    // Full, so due, but one batch runs at a time.
    expect(model.batchingStats).toMatchObject({ batches: 1, pending: 4 });
    await Promise.all([...first, ...second]);
    expect(model.batchingStats).toMatchObject({ requests: 8, batches: 2, largestBatch: 4, pending: 0 });
  });

  it('a bad image fails its own call only, with the error it gives alone', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 16, maxWaitMs: 5 });
    const good = sixtyFourImages()
      .slice(0, 12)
      .map((image) => [image]);
    const truncated = readFileSync(photos.rocket).subarray(0, 5000);
    const calls: ImageInput[][] = [...good];
    calls.splice(3, 0, [new Uint8Array([1, 2, 3, 4])]);
    calls.splice(8, 0, ['/nonexistent/cat.png']);
    calls.splice(11, 0, [photos.chelsea, truncated]); // a call of two images, the second bad
    const bad = new Set([3, 8, 11]);

    model.setBatching(false);
    const alone = await Promise.allSettled(calls.map((images) => model.predict(images)));
    model.setBatching({ maxBatchSize: 16, maxWaitMs: 5 });
    const merged = await Promise.allSettled(calls.map((images) => model.predict(images)));

    merged.forEach((outcome, i) => {
      const solo = alone[i]!;
      expect(outcome.status, `call ${i}`).toBe(bad.has(i) ? 'rejected' : 'fulfilled');
      expect(solo.status, `call ${i} alone`).toBe(outcome.status);
      if (outcome.status === 'rejected' && solo.status === 'rejected') {
        expect(outcome.reason, `call ${i}`).toMatchObject({ code: solo.reason.code, message: (solo.reason as Error).message });
      } else if (outcome.status === 'fulfilled' && solo.status === 'fulfilled') {
        expectSameClassification(outcome.value, solo.value, `call ${i}`);
      }
    });
    const reason = (i: number) => (alone[i] as PromiseRejectedResult).reason;
    expectCode(reason(3), ErrorCode.IMAGE, 'image 0');
    expectCode(reason(8), ErrorCode.IMAGE, '/nonexistent/cat.png');
    expectCode(reason(11), ErrorCode.IMAGE, 'image 1');
    expect(model.batchingStats.batches).toBe(1);
    // The 15 calls in one batch, bad ones at 3, 8 and 11, halved until each bad call is alone:
    // 0-14, 0-7, 0-3, 2-3, 8-14, 8-11, 8-9 and 10-11 fail and are split; the rest succeed.
    expect(model.batchingStats.splitBatches).toBe(8);
  });

  it('dispose rejects the calls waiting for a batch, lets the running batch finish, and refuses later calls', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 2, maxWaitMs: 60_000 });
    const images = sixtyFourImages();
    const running = [model.predict(images[0]!), model.predict(images[1]!)];
    const waiting = model.predict(images[2]!);
    expect(model.batchingStats).toMatchObject({ batches: 1, pending: 1 });
    model.dispose();
    await expectError(waiting, ErrorCode.DISPOSED, 'ViTForImageClassification', 'predict');
    const results = await Promise.all(running);
    expect(results.map((result) => (result[0] as ClassificationPrediction[]).length)).toEqual([5, 5]);
    await expectError(model.predict(images[3]!), ErrorCode.DISPOSED);
    expectError(() => model.setBatching(true), ErrorCode.DISPOSED);
  });

  it('setBatching(false) starts the waiting batches at once; later calls run one by one', async () => {
    const model = await load('vit-tiny-random', 'classification', { maxBatchSize: 16, maxWaitMs: 60_000 });
    const images = sixtyFourImages().slice(0, 3);
    const calls = images.map((image) => model.predict(image));
    expect(model.batchingStats).toMatchObject({ batches: 0, pending: 3 });
    model.setBatching(false);
    expect(model.batching).toBe(false);
    expect(model.batchingStats).toMatchObject({ batches: 1, pending: 0 });
    await Promise.all(calls);
    await Promise.all(images.map((image) => model.predict(image)));
    expect(model.batchingStats).toMatchObject({ requests: 3, batches: 1 });
  });

  it('rejects bad settings naming the option', async () => {
    const config = { modelName: fixture('vit-tiny-random'), modelType: 'classification' } as const;
    const zero = await expectError(
      HuggingFaceModelLoader.loadModel(config, { batching: { maxBatchSize: 0 } }),
      ErrorCode.INVALID_ARGUMENT,
      'batching.maxBatchSize',
      'got 0',
    );
    expect(zero).toBeInstanceOf(RangeError);
    const negative = await expectError(
      HuggingFaceModelLoader.loadModel(config, { batching: { maxWaitMs: -1 } }),
      ErrorCode.INVALID_ARGUMENT,
      'batching.maxWaitMs',
    );
    expect(negative).toBeInstanceOf(RangeError);
    const model = await load('vit-tiny-random', 'classification', true);
    expect(model.batching).toEqual({ maxBatchSize: 16, maxWaitMs: 5 });
    for (const maxBatchSize of [1.5, -2, Number.NaN, Number.POSITIVE_INFINITY, '8' as unknown as number]) {
      expect(
        expectError(() => model.setBatching({ maxBatchSize }), ErrorCode.INVALID_ARGUMENT, 'maxBatchSize'),
        String(maxBatchSize),
      ).toBeInstanceOf(RangeError);
    }
    expectError(() => model.setBatching({ maxBatchSize: 2.5 }), ErrorCode.INVALID_ARGUMENT, 'setBatching', 'maxBatchSize', 'got 2.5');
    for (const maxWaitMs of [-0.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, null as unknown as number]) {
      expectError(() => model.setBatching({ maxWaitMs }), ErrorCode.INVALID_ARGUMENT, 'setBatching', 'maxWaitMs');
    }
    const unknown = expectError(
      () => model.setBatching({ maxBatch: 8 } as BatchingOptions),
      ErrorCode.INVALID_ARGUMENT,
      'maxBatch:',
      'maxBatchSize, maxWaitMs',
    );
    expect(unknown).toBeInstanceOf(TypeError);
    expect(expectError(() => model.setBatching(8 as unknown as boolean), ErrorCode.INVALID_ARGUMENT)).toBeInstanceOf(TypeError);
    // A rejected setting leaves the one in force.
    expect(model.batching).toEqual({ maxBatchSize: 16, maxWaitMs: 5 });
    model.setBatching({ maxWaitMs: 0 });
    expect(model.batching).toEqual({ maxBatchSize: 16, maxWaitMs: 0 });
  });
});

describe('micro-batching of detection and segmentation predict calls', () => {
  it('detection merges only calls whose images share one size, with the results of one-by-one calls', async () => {
    const model = await load('detr-tiny-random', 'object_detection', { maxBatchSize: 4, maxWaitMs: 60_000 });
    // Four calls for each of three sizes, as paths, bytes and raw pixels; one call of two sizes runs alone.
    const rocketPixels = await decodeImage(photos.rocket);
    const sizes: ImageInput[][] = [
      [photos.rocket, readFileSync(photos.rocket), { ...rocketPixels, channels: 3 }, photos.rocket],
      [photos.chelsea, readFileSync(photos.chelsea), photos.chelsea, readFileSync(photos.chelsea)],
      [photos.coco, readFileSync(photos.coco), photos.coco, photos.coco],
    ];
    const calls: ImageInput[][] = [0, 1, 2, 3].flatMap((i) => sizes.map((images) => [images[i]!]));
    calls.push([photos.chelsea, photos.rocket]);
    const expected = await oneByOne(model, calls, { threshold: 0 });
    const results = await Promise.all(calls.map((images) => model.predict(images, { threshold: 0 })));
    // threshold 0 keeps every query: all scores and boxes are compared.
    for (const [i, result] of results.entries()) expectSameDetections(result, expected[i]!, `call ${i}`);
    expect(model.batchingStats).toMatchObject({ requests: 13, batches: 4, largestBatch: 4, splitBatches: 0 });
  });

  it('segmentation gives the label maps of one-by-one calls', async () => {
    const model = await load('segformer-tiny-random', 'segmentation', { maxBatchSize: 8, maxWaitMs: 5 });
    const images = [photos.rocket, photos.chelsea, photos.coco, syntheticImage(1, 50, 30), syntheticImage(2, 17, 61), readFileSync(photos.rocket)];
    const expected = await oneByOne(
      model,
      images.map((image) => [image]),
    );
    const results = await Promise.all(images.map((image) => model.predict(image)));
    results.forEach((result, i) => {
      const got = result[0] as SegmentationPrediction;
      const want = expected[i]![0] as SegmentationPrediction;
      expect([got.width, got.height], `image ${i}`).toEqual([want.width, want.height]);
      expect(Buffer.from(got.labelMap.buffer).equals(Buffer.from(want.labelMap.buffer)), `image ${i}: label map`).toBe(true);
      expect(got.segments).toEqual(want.segments);
    });
    expect(model.batchingStats).toMatchObject({ requests: 6, batches: 1, largestBatch: 6 });
  });

  it('reads image sizes from JPEG and PNG headers as the decoder does', async () => {
    for (const path of Object.values(photos)) {
      const { width, height } = await decodeImage(path);
      expect(headerDimensions(readFileSync(path)), path).toEqual({ dimensions: { width, height }, truncated: false });
    }
    expect(headerDimensions(readFileSync(photos.rocket).subarray(0, 100)).truncated).toBe(true);
    expect(headerDimensions(new Uint8Array([1, 2, 3, 4]))).toEqual({ truncated: false });
    expect(await imageDimensions('/nonexistent/cat.png')).toBeUndefined();
  });

  it('reads WebP and GIF sizes as the decoder does (an offset or oversized first GIF frame included)', async () => {
    const dir = join(repoRoot, 'native', 'core', 'tests', 'data', 'images');
    const files = readdirSync(dir).filter((name) => name.endsWith('.webp') || name.endsWith('.gif'));
    expect(files.length).toBeGreaterThanOrEqual(15);
    for (const name of files) {
      const bytes = readFileSync(join(dir, name));
      const { width, height } = await decodeImage(bytes);
      expect(headerDimensions(bytes), name).toEqual({ dimensions: { width, height }, truncated: false });
      expect(headerDimensions(bytes.subarray(0, 16)).truncated, name).toBe(true);
    }
  });

  it('finds the frame header of a JPEG file behind 128 KiB of other segments', async () => {
    const jpeg = readFileSync(photos.rocket);
    // Two APP15 segments of the largest size, which decoders skip, between SOI and the rest.
    const filler = new Uint8Array(65537);
    filler.set([0xff, 0xef, 0xff, 0xff]);
    const path = join(tempDir(), 'padded.jpg');
    writeFileSync(path, Buffer.concat([jpeg.subarray(0, 2), filler, filler, jpeg.subarray(2)]));
    const { width, height } = await decodeImage(path);
    expect(await imageDimensions(path)).toEqual({ width, height });
  });
});
