/**
 * The published types: what a TypeScript caller gets from loadModel and predict (checked when
 * tsc type-checks this file: `npm run typecheck:tests`), and the declarations in dist/ that
 * users compile against (no @internal member left in them, a strict consumer compiles).
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  type ClassificationPrediction,
  type DetectionPrediction,
  HuggingFaceModelLoader,
  type Prediction,
  type PredictionFor,
  type SegmentationPrediction,
  type SegmentPrediction,
  type VisionModel,
} from '../src/index.js';
import { fixture, repoRoot, typeCheckConsumer } from './helpers.js';

const PHOTO = fixture('images', 'rocket.jpg');

describe('loadModel and predict types', () => {
  it("give the task's prediction type when modelType is named", async () => {
    const classifier = await HuggingFaceModelLoader.loadModel({ modelName: fixture('vit-tiny-random'), modelType: 'classification' });
    const detector = await HuggingFaceModelLoader.loadModel({ modelName: fixture('detr-tiny-random'), modelType: 'object_detection' });
    try {
      expectTypeOf(classifier).toEqualTypeOf<VisionModel<'classification'>>();
      expectTypeOf(detector).toEqualTypeOf<VisionModel<'object_detection'>>();
      const [top] = await classifier.predict(PHOTO, { topK: 2 });
      expectTypeOf(top).toEqualTypeOf<ClassificationPrediction[] | undefined>();
      expect(top?.[0]?.label).toBeTypeOf('string');
      const [objects] = await detector.predict([PHOTO], { threshold: 0 });
      expectTypeOf(objects).toEqualTypeOf<DetectionPrediction[] | undefined>();
      expect(objects?.[0]?.box.xmax).toBeTypeOf('number');
    } finally {
      classifier.dispose();
      detector.dispose();
    }
  });

  it('give the union without modelType, which isTask narrows', async () => {
    const model = await HuggingFaceModelLoader.loadModel({ modelName: fixture('detr-tiny-random') });
    try {
      expectTypeOf(model).toEqualTypeOf<VisionModel>();
      expectTypeOf(await model.predict(PHOTO)).toEqualTypeOf<PredictionFor[]>();
      expect(model.isTask('classification')).toBe(false);
      if (!model.isTask('object_detection')) throw new Error(`expected a detection model, got ${model.modelType}`);
      expectTypeOf(model.modelType).toEqualTypeOf<'object_detection'>();
      const [objects] = await model.predict(PHOTO, { threshold: 0 });
      expectTypeOf(objects).toEqualTypeOf<DetectionPrediction[] | undefined>();
      expect(objects!.length).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
  });

  it("follow Mask2Former's task option", () => {
    // Compile-time only: which overload each call picks.
    type Segmenter = VisionModel<'segmentation'>;
    type Result<F extends (...args: never[]) => Promise<unknown>> = Awaited<ReturnType<F>>;
    const semantic = (m: Segmenter) => m.predict(PHOTO);
    const explicitSemantic = (m: Segmenter) => m.predict(PHOTO, { task: 'semantic' });
    const instance = (m: Segmenter) => m.predict(PHOTO, { task: 'instance', threshold: 0.5 });
    const panoptic = (m: Segmenter) => m.predict(PHOTO, { task: 'panoptic', labelIdsToFuse: [0] });
    const chosenLater = (m: Segmenter, task: 'semantic' | 'instance' | 'panoptic') => m.predict(PHOTO, { task });
    expectTypeOf<Result<typeof semantic>>().toEqualTypeOf<SegmentationPrediction[]>();
    expectTypeOf<Result<typeof explicitSemantic>>().toEqualTypeOf<SegmentationPrediction[]>();
    expectTypeOf<Result<typeof instance>>().toEqualTypeOf<SegmentPrediction[]>();
    expectTypeOf<Result<typeof panoptic>>().toEqualTypeOf<SegmentPrediction[]>();
    expectTypeOf<Result<typeof chosenLater>>().toEqualTypeOf<(SegmentationPrediction | SegmentPrediction)[]>();
    // A task other than segmentation ignores the option: its own type stays.
    const classify = (m: VisionModel<'classification'>) => m.predict(PHOTO, { task: 'instance' });
    expectTypeOf<Result<typeof classify>>().toEqualTypeOf<ClassificationPrediction[][]>();
    // Any model, any options: the compatibility type.
    const anything = (m: VisionModel, task: 'semantic' | 'instance' | 'panoptic') => m.predict(PHOTO, { task });
    expectTypeOf<Result<typeof anything>>().toEqualTypeOf<Prediction[]>();
  });

  it('refuse a misspelt key or a wrong value when compiling, and at run time', async () => {
    const modelName = fixture('vit-tiny-random');
    // @ts-expect-error: numClass is not a key (numClasses is)
    await expect(HuggingFaceModelLoader.loadModel({ modelName, numClass: 3 })).rejects.toThrow(/numClass/);
    // @ts-expect-error: pretrained is a boolean
    await expect(HuggingFaceModelLoader.loadModel({ modelName, pretrained: 'yes' })).rejects.toThrow(/pretrained/);
    // @ts-expect-error: no such task
    await expect(HuggingFaceModelLoader.loadModel({ modelName, modelType: 'detection' })).rejects.toThrow(/modelType/);
    // @ts-expect-error: no such predict option either
    const typo = (m: VisionModel<'classification'>) => m.predict(PHOTO, { topk: 3 });
    void typo;
  });
});

/** Every .d.ts file under `dir`. */
function declarations(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.d.ts'))
    .map((f) => join(dir, f));
}

describe('the published declarations (dist/, built by tsc -p tsconfig.json)', () => {
  it('hold no @internal member', () => {
    const files = declarations(join(repoRoot, 'dist'));
    expect(files.length).toBeGreaterThan(10);
    const tagged = files.filter((f) => readFileSync(f, 'utf8').includes('@internal'));
    expect(tagged).toEqual([]);
  });

  it('type-check a strict consumer that uses them without casts', () => {
    // Inside the checkout (no package.json of its own), so that 'visiontorch' resolves to this
    // package as from node_modules, and consumer.ts is an ES module (top-level await).
    const project = join(repoRoot, 'build', `types-consumer-${process.pid}`);
    mkdirSync(project, { recursive: true });
    writeFileSync(
      join(project, 'consumer.ts'),
      `import { HuggingFaceModelLoader, type DetectionPrediction, type SegmentPrediction } from 'visiontorch';

const detector = await HuggingFaceModelLoader.loadModel({ modelName: 'facebook/detr-resnet-50', modelType: 'object_detection' });
const objects: DetectionPrediction[][] = await detector.predict('street.jpg');
const any = await HuggingFaceModelLoader.loadModel({ modelName: 'some/model' });
if (any.isTask('segmentation')) {
  const segments: SegmentPrediction[] = await any.predict('street.jpg', { task: 'panoptic' });
  console.log(segments[0]?.segments.length);
}
console.log(objects[0]?.[0]?.box.xmin);
`,
    );
    try {
      const { status, output } = typeCheckConsumer(project, ['consumer.ts'], { noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true });
      if (status !== 0) throw new Error(`the consumer does not type-check:\n${output}`);
    } finally {
      rmSync(project, { recursive: true, force: true });
    }
  });
});
