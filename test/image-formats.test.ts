// WebP and GIF inputs end to end: decoded as Pillow decodes them, then preprocessed and predicted
// like any other image.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClassificationPrediction, decodeImage, HuggingFaceModelLoader, type VisionModel } from '../src/index.js';
import { fixture } from './helpers.js';

describe('WebP and GIF images', () => {
  let model: VisionModel;
  beforeAll(async () => {
    model = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' });
  });
  afterAll(() => model?.dispose());

  it('a lossless WebP of chelsea.png gives the PNG pixels, preprocessing and predictions exactly', async () => {
    const png = fixture('images', 'chelsea.png');
    const webp = fixture('images', 'chelsea-lossless.webp');
    const [fromPng, fromWebp] = [await decodeImage(png), await decodeImage(webp)];
    expect([fromWebp.width, fromWebp.height, fromWebp.channels]).toEqual([451, 300, 3]);
    expect(Buffer.from(fromWebp.data).equals(Buffer.from(fromPng.data))).toBe(true);

    const want = (await model.preprocess([png])).pixelValues;
    const got = (await model.preprocess([webp, readFileSync(webp)])).pixelValues;
    expect(got.shape).toEqual([2, ...want.shape.slice(1)]);
    const wantBytes = Buffer.from(want.data.buffer, want.data.byteOffset, want.data.byteLength);
    const gotBytes = Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength);
    expect(gotBytes.subarray(0, wantBytes.length).equals(wantBytes)).toBe(true);
    expect(gotBytes.subarray(wantBytes.length).equals(wantBytes)).toBe(true);

    expect(await model.predict(webp, { topK: 3 })).toEqual(await model.predict(png, { topK: 3 }));
  });

  it('an animated GIF predicts from its first frame', async () => {
    const gif = fixture('images', 'chelsea-animated.gif');
    const image = await decodeImage(gif);
    expect([image.width, image.height, image.channels]).toEqual([226, 150, 3]);
    const [prediction] = (await model.predict(gif)) as ClassificationPrediction[][];
    expect(prediction?.length).toBeGreaterThan(0);
    expect(await model.predict(readFileSync(gif))).toEqual([prediction]);
  });
});
