// Training images/s of the detection and segmentation fine-tuning jobs the tests run (the tiny
// random DETR on COCO images, the tiny random SegFormer on image/mask pairs), through
// BaseTrainer.train: data loading, augmentation and the optimizer steps together.
//   node bench/fine-tuning.mjs [--images 16] [--steps 48] [--batch 2] [--rounds 3]
//                              [--package dist/index.js] [--json results.json]
// `--package` names another build's dist/index.js, to compare two versions of visiontorch on one
// machine in one run: the rounds alternate between them when both are given
// (`--package a/dist/index.js,b/dist/index.js`).
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median, option } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, '..', 'test', 'fixtures');
const args = process.argv.slice(2);
const imageCount = Number(option(args, 'images', '16'));
const steps = Number(option(args, 'steps', '48'));
const batchSize = Number(option(args, 'batch', '2'));
const rounds = Number(option(args, 'rounds', '3'));
const jsonPath = option(args, 'json', undefined);
const packages = option(args, 'package', join(here, '..', 'dist', 'index.js')).split(',');

const work = mkdtempSync(join(tmpdir(), 'visiontorch-fine-tuning-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

// COCO: the sample photo under `imageCount` names, each with the photo's annotations.
function cocoDataset() {
  const source = join(fixtures, 'coco-sample');
  const instances = JSON.parse(readFileSync(join(source, 'instances.json'), 'utf8'));
  const [image] = instances.images;
  const annotations = instances.annotations.filter((a) => a.image_id === image.id);
  const root = join(work, 'coco');
  mkdirSync(root, { recursive: true });
  const images = [];
  const copies = [];
  for (let i = 0; i < imageCount; i++) {
    const fileName = `${i}.jpg`;
    copyFileSync(join(source, image.file_name), join(root, fileName));
    images.push({ ...image, id: i + 1, file_name: fileName });
    for (const a of annotations) copies.push({ ...a, id: copies.length + 1, image_id: i + 1 });
  }
  writeFileSync(join(root, 'instances.json'), JSON.stringify({ ...instances, images, annotations: copies }));
  return { format: 'coco', annotations: join(root, 'instances.json'), images: root, validationSplit: 0, augment: { horizontalFlip: true } };
}

// Segmentation: the photo and its semantic mask (COCO category ids, 0 to 75), under `imageCount` names.
function maskDataset() {
  const source = join(fixtures, 'coco-sample');
  const root = join(work, 'masks');
  mkdirSync(join(root, 'images'), { recursive: true });
  mkdirSync(join(root, 'masks'), { recursive: true });
  for (let i = 0; i < imageCount; i++) {
    copyFileSync(join(source, '000000039769.jpg'), join(root, 'images', `${i}.jpg`));
    copyFileSync(join(source, '000000039769_mask.png'), join(root, 'masks', `${i}.png`));
  }
  return { format: 'masks', images: join(root, 'images'), masks: join(root, 'masks'), validationSplit: 0, augment: { horizontalFlip: true } };
}

const jobs = [
  {
    name: 'DETR (detr-tiny-random), COCO',
    model: join(fixtures, 'detr-tiny-random'),
    modelType: 'object_detection',
    numClasses: 4,
    dataset: () => cocoDataset(),
  },
  {
    name: 'SegFormer (segformer-tiny-random), masks',
    model: join(fixtures, 'segformer-tiny-random'),
    modelType: 'segmentation',
    numClasses: 76,
    dataset: maskDataset,
  },
];

async function imagesPerSecond(visiontorch, job, dataset) {
  const { BaseTrainer, HuggingFaceModelLoader } = visiontorch;
  const modelConfig = { modelName: job.model, modelType: job.modelType, numClasses: job.numClasses, ignoreMismatchedSizes: true };
  const model = await HuggingFaceModelLoader.loadModel(modelConfig);
  const trainer = new BaseTrainer({ model, modelConfig });
  /** @type {{ imagesPerSecond: number } | undefined} */
  let last;
  await trainer.train(
    { maxSteps: steps, batchSize, learningRate: 1e-4, lrScheduler: 'constant', outputDir: join(work, 'run'), dataset, seed: 0 },
    {
      onProgress: (e) => {
        if (e.kind === 'step') last = e;
      },
    },
  );
  model.dispose();
  if (!last) throw new Error(`${job.name}: the run reported no step`);
  return last.imagesPerSecond;
}

const builds = [];
for (const path of packages) builds.push({ path, visiontorch: await import(pathToFileURL(resolve(path)).href) });
const results = [];
for (const job of jobs) {
  const dataset = job.dataset();
  const samples = builds.map(() => []);
  for (let round = 0; round < rounds; round++) {
    for (const [i, build] of builds.entries()) samples[i].push(await imagesPerSecond(build.visiontorch, job, dataset));
  }
  const row = {
    job: job.name,
    steps,
    batchSize,
    builds: builds.map((b, i) => ({ package: b.path, imagesPerSecond: median(samples[i]), samples: samples[i] })),
  };
  results.push(row);
  const figures = row.builds.map((b) => `${b.imagesPerSecond.toFixed(1)} images/s (${b.package})`).join('  vs  ');
  const ratio = row.builds.length > 1 ? `  ratio ${(row.builds[0].imagesPerSecond / row.builds[1].imagesPerSecond).toFixed(2)}x` : '';
  console.log(`${job.name}: ${figures}${ratio}`);
}
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(results, null, 2)}\n`);
