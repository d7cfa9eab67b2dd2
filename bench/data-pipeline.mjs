// The data pipeline's throughput: real JPEG and PNG photos (test/fixtures) decoded, resized and
// normalised into batches as ViTImageProcessor specifies (224x224, bilinear, mean/std 0.5),
// against PIL + torchvision.transforms (Debian's python3-pil, python3-torchvision), alternately:
//   node bench/data-pipeline.mjs [--batch 32] [--rounds 5] [--loader-images 256] [--workers 2] [--json results.json]
// Three measurements, images/s for each side:
//   decode      decoding to RGB alone (decodeImage / PIL), one image after another, 1 thread;
//   preprocess  model.preprocess(batch of files) against torch.stack([transform(PIL image)...]),
//               one image after another, 1 thread, as inference preprocesses;
//   loader      the training data loader BaseTrainer uses (--workers threads), driven through
//               trainer.evaluate with a ViT so small that its forward pass costs next to nothing,
//               against torch's DataLoader over torchvision's ImageFolder (--workers processes).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseTrainer, decodeImage, HuggingFaceModelLoader, setNumThreads } from '../dist/index.js';
import { machineCpuTimes, median, option, otherCpuFraction, quietSamples, startPeer, timedWithLoad, warnIfMachineBusy } from './lib.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, '..', 'test', 'fixtures');
const args = process.argv.slice(2);
const batch = Number(option(args, 'batch', '32'));
const rounds = Number(option(args, 'rounds', '5'));
const loaderImages = Number(option(args, 'loader-images', '256'));
const workers = Number(option(args, 'workers', '2'));
const jsonPath = option(args, 'json', undefined);
for (const [name, value] of Object.entries({ batch, rounds, 'loader-images': loaderImages, workers })) {
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a positive integer, got ${value}`);
}

// Real photos: two JPEGs (640x427, 640x480) and a PNG (451x300), cycled to fill a batch.
const photos = ['images/rocket.jpg', 'coco-sample/000000039769.jpg', 'images/chelsea.png'].map((p) => join(fixtures, p));
const images = Array.from({ length: batch }, (_, i) => photos[i % photos.length]);

const machineLoad = await warnIfMachineBusy();
const vitBaseDir = join(fixtures, 'configs', 'vit-base-patch16-224');
const processor = JSON.parse(readFileSync(join(vitBaseDir, 'preprocessor_config.json'), 'utf8'));
// preprocess() needs the model's image processor only; random weights load fastest.
const model = await HuggingFaceModelLoader.loadModel({ modelName: vitBaseDir, modelType: 'classification', pretrained: false }, { seed: 0 });

const peer = startPeer(join(here, 'peers', 'torch_data.py'));
try {
  await peer.request({
    op: 'setup',
    images,
    size: [processor.size.height, processor.size.width],
    resample: processor.resample,
    mean: processor.image_mean,
    std: processor.image_std,
  });
} catch (error) {
  throw new Error(
    `the PIL + torchvision peer did not start (${error.message}); it needs Debian's python3-torch, python3-pil and python3-torchvision (or VISIONTORCH_BENCH_PYTHON naming a python3 that has them)`,
  );
}

/** One round of the peer: its seconds, and the share of the CPU others took (the peer's own CPU time is its). */
async function peerRound(message) {
  const machineBefore = machineCpuTimes();
  const cpuBefore = process.cpuUsage();
  const reply = await peer.request(message);
  const cpu = process.cpuUsage(cpuBefore);
  const own = reply.cpuSeconds[0] + (cpu.user + cpu.system) / 1e6;
  return { seconds: reply.seconds[0], otherCpuFraction: otherCpuFraction(machineBefore, machineCpuTimes(), own), result: reply };
}

const ours = {
  decode: () =>
    timedWithLoad(async () => {
      for (const image of images) await decodeImage(image);
    }),
  preprocess: () => timedWithLoad(() => model.preprocess(images)),
};

// Decoding and preprocessing one image at a time on one thread on both sides (see the peer).
setNumThreads(1);
const samples = {};
for (const stage of ['decode', 'preprocess']) {
  samples[stage] = { ours: [], theirs: [] };
  await ours[stage](); // warm-up: page cache, allocator, lazy initialisation on both sides
  await peerRound({ op: stage, rounds: 1 });
  for (let round = 0; round < rounds; round++) {
    samples[stage].ours.push(await ours[stage]());
    samples[stage].theirs.push(await peerRound({ op: stage, rounds: 1 }));
  }
}
setNumThreads(0); // back to the default
const { pixelValues } = await model.preprocess(images.slice(0, 1));
if (pixelValues.shape.join('x') !== `1x3x${processor.size.height}x${processor.size.width}`) {
  throw new Error(
    `preprocess gave pixelValues of shape ${pixelValues.shape.join('x')}, expected 1x3x${processor.size.height}x${processor.size.width}`,
  );
}
model.dispose();

samples.loader = await measureLoaders();
peer.close();

const result = {
  benchmark: 'data pipeline: decode, resize 224x224 bilinear, normalize, batch',
  images: photos.map((p) => p.slice(fixtures.length + 1)),
  batch,
  rounds,
  workers,
  loaderImages,
  machineLoadBefore: machineLoad,
};
let contended = 0;
for (const [stage, count] of /** @type {[string, number][]} */ ([
  ['decode', batch],
  ['preprocess', batch],
  ['loader', loaderImages],
])) {
  // Rounds during which other processes took over 10% of the CPU are left out when 3 are quiet.
  const rate = (list) => count / median(quietSamples(list).map((s) => s.seconds));
  const { ours: mine, theirs } = samples[stage];
  contended += [...mine, ...theirs].filter((s) => s.otherCpuFraction > 0.1).length;
  result[stage] = {
    visiontorchImagesPerSecond: rate(mine),
    pytorchImagesPerSecond: rate(theirs),
    ratio: rate(mine) / rate(theirs),
    rounds: {
      ours: mine.map(({ seconds, otherCpuFraction }) => ({ seconds, otherCpuFraction })),
      theirs: theirs.map(({ seconds, otherCpuFraction }) => ({ seconds, otherCpuFraction })),
    },
  };
}
if (contended > 0)
  console.warn(
    `warning: other processes used over 10% of the CPU during ${contended} rounds; those are left out of the medians when at least 3 are quiet`,
  );

const line = (name, r, peerName) =>
  `${name}: visiontorch ${r.visiontorchImagesPerSecond.toFixed(0)} images/s, ${peerName} ${r.pytorchImagesPerSecond.toFixed(0)} images/s, ratio ${r.ratio.toFixed(2)}x`;
console.log(line('decode (JPEG+PNG to RGB, 1 thread)', result.decode, 'PIL'));
console.log(line(`preprocess (decode+resize+normalize, batch ${batch}, 1 thread)`, result.preprocess, 'PIL+torchvision'));
console.log(
  line(`training loader (${workers} workers, batch ${batch}, ${loaderImages} images)`, result.loader, `torch DataLoader (${workers} workers)`),
);
if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);

/**
 * The training loader against torch's DataLoader, on an image folder of `loaderImages` links to
 * the photos in a temporary directory. Ours runs through trainer.evaluate with a 2-layer,
 * 32-wide ViT (7x7 patches of 32 pixels), whose forward pass is a rounding error next to decoding.
 */
async function measureLoaders() {
  const scratch = mkdtempSync(join(tmpdir(), 'visiontorch-bench-data-'));
  try {
    const root = join(scratch, 'images');
    for (let i = 0; i < loaderImages; i++) {
      const photo = photos[i % photos.length];
      const classDir = join(root, i % 2 ? 'odd' : 'even');
      mkdirSync(classDir, { recursive: true });
      symlinkSync(photo, join(classDir, `${String(i).padStart(5, '0')}${extname(photo)}`));
    }
    const tinyDir = join(scratch, 'tiny-vit');
    mkdirSync(tinyDir);
    const tinyConfig = JSON.parse(readFileSync(join(fixtures, 'vit-tiny-random', 'config.json'), 'utf8'));
    Object.assign(tinyConfig, { image_size: processor.size.height, patch_size: 32 });
    writeFileSync(join(tinyDir, 'config.json'), JSON.stringify(tinyConfig));
    writeFileSync(join(tinyDir, 'preprocessor_config.json'), JSON.stringify(processor));
    const modelConfig = { modelName: tinyDir, modelType: /** @type {const} */ ('classification'), pretrained: false, numClasses: 2 };
    const tiny = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 0 });
    const trainer = new BaseTrainer({ model: tiny, modelConfig, batchSize: batch, numWorkers: workers, lrScheduler: 'constant' });
    // The validation set is the whole folder, so evaluate() reads every image once.
    const dataset = { format: /** @type {const} */ ('imagefolder'), root, validationRoot: root };
    const loaderRequest = { op: 'loader', root, batch, workers };
    const evaluate = () => timedWithLoad(() => trainer.evaluate(dataset));
    await evaluate(); // warm-up
    await peerRound(loaderRequest);
    const mine = [];
    const theirs = [];
    for (let round = 0; round < rounds; round++) {
      mine.push(await evaluate());
      const sample = await peerRound(loaderRequest);
      if (sample.result.images !== loaderImages) throw new Error(`torch DataLoader read ${sample.result.images} images, expected ${loaderImages}`);
      theirs.push(sample);
    }
    tiny.dispose();
    return { ours: mine, theirs };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
