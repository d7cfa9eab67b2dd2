// Data-parallel training on torch.distributed. Equivalence: 2 workers with half the batch each
// give one process's losses at every step and its final weights (ViT, ConvNeXt, DETR; ResNet and
// SegFormer with synchronised BatchNorm). The group is torch.distributed's own (a Python rank
// joins it; torchrun launches it), across "nodes", and it fails, restarts and stops as torchrun's.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BaseTrainer,
  DistributedTrainer,
  decodeImage,
  ErrorCode,
  HuggingFaceModelLoader,
  loadSafetensors,
  type ModelConfig,
  setNumThreads,
  type Tensor,
  type TrainingConfigInput,
  toFloat32,
  type VisionModel,
} from '../src/index.js';
import { encodePng } from '../src/render/canvas.js';
import { expectClose, expectError, FIXTURE_OPTIMIZER, fashionDataset, fixture, reference, repoRoot, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

const CLI = join(repoRoot, 'dist', 'cli', 'main.js');
// Debian's python3-torch (scripts/setup.sh installs it): the peer.
const PYTHON = '/usr/bin/python3';
const TORCHRUN = '/usr/bin/torchrun';

async function load(config: Partial<ModelConfig> & { modelName: string; modelType?: ModelConfig['modelType'] }) {
  const modelConfig = { modelType: 'classification', pretrained: true, ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 3 });
  models.push(model);
  return { model, modelConfig };
}

const fashion = fashionDataset;
const smallVit = join(repoRoot, 'config', 'models', 'vit-fashion-mnist');

// Sixteen 320x240 crops of the COCO photo: one size (no padding differences between batches),
// and 12 to train on after the validation split, so that each rank's batches hold 2 images. (A
// batch of one image takes other convolution kernels in libtorch, whose last bits differ.)
const COCO = fixture('coco-sample');
const CROPS = [0, 10, 53, 106, 160, 213, 266, 320].flatMap((x) => [0, 240].map((y) => ({ x, y, width: 320, height: 240 })));

async function cropped(path: string): Promise<{ width: number; height: number; channels: number; data: Uint8Array }> {
  return decodeImage(path);
}

function crop(image: { width: number; channels: number; data: Uint8Array }, box: (typeof CROPS)[number]): Uint8Array {
  const rgb = new Uint8Array(box.width * box.height * 3);
  for (let y = 0; y < box.height; y++) {
    for (let x = 0; x < box.width; x++) {
      const from = ((box.y + y) * image.width + box.x + x) * image.channels;
      for (let c = 0; c < 3; c++) rgb[(y * box.width + x) * 3 + c] = image.data[from + Math.min(c, image.channels - 1)]!;
    }
  }
  return rgb;
}

/**
 * 64 crops of the COCO photo in 5 classes, an ImageFolder with a quarter held out. Natural
 * images: Fashion-MNIST's flat backgrounds give exact ties in max pooling and ReLU, where the
 * smallest difference in rounding sends a gradient another way.
 */
async function classificationCrops(): Promise<{ format: 'imagefolder'; root: string; validationSplit: number }> {
  const root = tempDir();
  const photo = await cropped(join(COCO, '000000039769.jpg'));
  for (let i = 0; i < 64; i++) {
    const box = { x: (i * 37) % (photo.width - 96), y: (i * 53) % (photo.height - 96), width: 96, height: 96 };
    mkdirSync(join(root, `class${i % 5}`), { recursive: true });
    writeFileSync(join(root, `class${i % 5}`, `crop${i}.png`), encodePng(96, 96, crop(photo, box)));
  }
  return { format: 'imagefolder', root, validationSplit: 0.25 };
}

/** Semantic masks of the crops: classes 0 background, 1 cat, 2 couch, 3 bed, 4 remote. */
async function segmentationCrops(): Promise<{ format: 'masks'; images: string; masks: string; validationSplit: number }> {
  const root = tempDir();
  mkdirSync(join(root, 'images'));
  mkdirSync(join(root, 'masks'));
  const photo = await cropped(join(COCO, '000000039769.jpg'));
  const mask = await cropped(join(COCO, '000000039769_mask.png'));
  const ids = [0, 17, 63, 65, 75];
  const classes = { ...mask, data: mask.data.map((v) => Math.max(0, ids.indexOf(v))) };
  CROPS.forEach((box, i) => {
    writeFileSync(join(root, 'images', `crop${i}.png`), encodePng(box.width, box.height, crop(photo, box)));
    writeFileSync(join(root, 'masks', `crop${i}.png`), encodePng(box.width, box.height, crop(classes, box)));
  });
  return { format: 'masks', images: join(root, 'images'), masks: join(root, 'masks'), validationSplit: 0.25 };
}

/**
 * COCO instances of the crops: the annotated boxes clipped to each crop, its three largest kept.
 * As many boxes in every image: DETR's class loss is a mean weighted by matches and no-object
 * slots over each rank's images, as in transformers, so only then is two ranks' mean the mean of
 * one process over all of them.
 */
async function detectionCrops(): Promise<{ format: 'coco'; annotations: string; images: string; validationSplit: number }> {
  const root = tempDir();
  const source = JSON.parse(readFileSync(join(COCO, 'instances.json'), 'utf8')) as {
    annotations: { category_id: number; bbox: number[] }[];
    categories: unknown[];
  };
  const photo = await cropped(join(COCO, '000000039769.jpg'));
  const images: unknown[] = [];
  const annotations: unknown[] = [];
  CROPS.forEach((box, i) => {
    writeFileSync(join(root, `crop${i}.png`), encodePng(box.width, box.height, crop(photo, box)));
    images.push({ id: i + 1, file_name: `crop${i}.png`, width: box.width, height: box.height });
    const clipped = source.annotations
      .map((a) => {
        const [x, y, w, h] = a.bbox as [number, number, number, number];
        const x0 = Math.max(x, box.x);
        const y0 = Math.max(y, box.y);
        const bbox = [x0 - box.x, y0 - box.y, Math.min(x + w, box.x + box.width) - x0, Math.min(y + h, box.y + box.height) - y0];
        const [bx, by, bw, bh] = bbox as [number, number, number, number];
        // The clipped box as a polygon too: instance masks for Mask2Former.
        const segmentation = [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]];
        return { category_id: a.category_id, bbox, segmentation, area: Math.max(0, bw) * Math.max(0, bh) };
      })
      .sort((a, b) => b.area - a.area)
      .slice(0, 3);
    for (const a of clipped) annotations.push({ id: annotations.length + 1, image_id: i + 1, ...a, iscrowd: 0 });
  });
  writeFileSync(join(root, 'instances.json'), JSON.stringify({ images, annotations, categories: source.categories }));
  return { format: 'coco', annotations: join(root, 'instances.json'), images: root, validationSplit: 0.25 };
}

interface Run {
  losses: number[];
  weights: Record<string, Tensor>;
  metrics: Record<string, number>;
}

/** The same seeded model trained by one process with batch 2B, and by 2 workers with batch B each (one thread each). */
async function oneAndTwo(
  modelConfig: Partial<ModelConfig> & { modelName: string },
  training: TrainingConfigInput,
  distributed: { syncBatchNorm?: boolean } = {},
): Promise<{ one: Run; two: Run; digests: (string | undefined)[] }> {
  const run = async (workers: number): Promise<Run & { digests: (string | undefined)[] }> => {
    const { model, modelConfig: config } = await load(modelConfig);
    const outputDir = join(tempDir(), 'run');
    const losses: number[] = [];
    const batchSize = (training.batchSize ?? 8) / workers;
    const trainer = new BaseTrainer({ model, modelConfig: config });
    const options = { onProgress: (e: { kind: string; loss?: number }) => e.kind === 'step' && losses.push(e.loss!) };
    const config2 = { ...FIXTURE_OPTIMIZER, seed: 0, ...training, batchSize, outputDir };
    // One thread per process on both sides: libtorch's kernels split their sums by thread, and
    // that alone moves a small model's losses by 1e-4 within a few steps.
    setNumThreads(1);
    const result =
      workers === 1
        ? { ...(await trainer.train(config2, options).finally(() => setNumThreads(0))), workers: [] }
        : await new DistributedTrainer(trainer, { numWorkers: workers, threadsPerWorker: 1, ...distributed }).train(config2, options);
    return {
      losses,
      weights: await loadSafetensors(join(outputDir, 'model.safetensors')),
      metrics: result.metrics,
      digests: result.workers.map((w) => w.stateDigest),
    };
  };
  const one = await run(1);
  const two = await run(2);
  return { one, two, digests: two.digests };
}

async function expectEquivalent(fixtureName: string, { one, two }: { one: Run; two: Run }, steps: number, metrics: string[]): Promise<void> {
  expect(one.losses).toHaveLength(steps);
  expect(two.losses).toHaveLength(steps);
  two.losses.forEach((loss, i) => {
    expect(Math.abs(loss - one.losses[i]!), `step ${i + 1}: ${loss} against ${one.losses[i]}`).toBeLessThanOrEqual(1e-5 * Math.abs(one.losses[i]!));
  });
  const tolerance = (await reference(fixtureName)).tolerance('after_step2');
  expect(Object.keys(two.weights).sort()).toEqual(Object.keys(one.weights).sort());
  for (const [key, value] of Object.entries(one.weights)) expectClose(two.weights[key], value, tolerance, key);
  // Evaluation over every rank's share: the metrics of the whole validation set.
  for (const name of metrics) {
    expect(two.metrics[name], name).toBeDefined();
    expect(Math.abs(two.metrics[name]! - one.metrics[name]!), name).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(one.metrics[name]!)));
  }
}

describe('DistributedTrainer: 2 workers with half the batch each equal one process', () => {
  it('ViT, and with gradient accumulation', async () => {
    const model = { modelName: fixture('vit-tiny-random') };
    const training = { maxSteps: 20, batchSize: 8, dataset: await classificationCrops() };
    await expectEquivalent('vit-tiny-random', await oneAndTwo(model, training), 20, ['eval_loss', 'eval_accuracy', 'eval_top5_accuracy']);
    const accumulated = await oneAndTwo(model, { ...training, maxSteps: 10, gradientAccumulationSteps: 2 });
    await expectEquivalent('vit-tiny-random', accumulated, 10, ['eval_loss', 'eval_accuracy']);
  });

  it('ConvNeXt', async () => {
    const model = { modelName: fixture('convnext-tiny-random') };
    await expectEquivalent('convnext-tiny-random', await oneAndTwo(model, { maxSteps: 20, batchSize: 8, dataset: await classificationCrops() }), 20, [
      'eval_loss',
      'eval_accuracy',
    ]);
  });

  it('DETR: the loss normalised by the number of boxes over all ranks', async () => {
    const dataset = await detectionCrops();
    const model = { modelName: fixture('detr-tiny-random'), modelType: 'object_detection' as const, numClasses: 4, ignoreMismatchedSizes: true };
    await expectEquivalent('detr-tiny-random', await oneAndTwo(model, { maxSteps: 20, batchSize: 4, dataset }), 20, ['eval_loss', 'eval_map']);
  });

  it('Mask2Former: 2 workers train on instance masks; mask mAP, mask IoU and mean IoU over both ranks equal one process evaluating the final model', async () => {
    const dataset = await detectionCrops();
    const modelConfig = {
      modelName: fixture('mask2former-tiny-random'),
      modelType: 'segmentation' as const,
      numClasses: 4,
      ignoreMismatchedSizes: true,
    };
    const { model, modelConfig: config } = await load(modelConfig);
    const outputDir = join(tempDir(), 'run');
    const losses: number[] = [];
    const trainer = new BaseTrainer({ model, modelConfig: config });
    const result = await new DistributedTrainer(trainer, { numWorkers: 2, threadsPerWorker: 1 }).train(
      // Evaluated at step 8, the last: the metrics are those of the final model.
      { ...FIXTURE_OPTIMIZER, seed: 0, maxSteps: 8, evalEvery: 4, batchSize: 2, outputDir, dataset },
      { onProgress: (e) => e.kind === 'step' && losses.push(e.loss) },
    );
    expect(losses).toHaveLength(8);
    expect(losses.every(Number.isFinite)).toBe(true);
    // Rank 0's final model, evaluated by one process on the whole validation split. The loss
    // samples random points (each rank its own), so only the metrics of the predictions compare.
    const { model: trained, modelConfig: trainedConfig } = await load({ ...modelConfig, modelName: outputDir, numClasses: undefined });
    setNumThreads(1);
    const alone = await new BaseTrainer({ model: trained, modelConfig: trainedConfig, seed: 0, batchSize: 1 })
      .evaluate(dataset)
      .finally(() => setNumThreads(0));
    for (const name of ['eval_map', 'eval_map_50', 'eval_mask_iou', 'eval_mean_iou']) {
      expect(result.metrics[name], name).toBeDefined();
      expect(Math.abs(result.metrics[name]! - alone[name]!), name).toBeLessThanOrEqual(1e-6);
    }
  });

  it('ResNet and SegFormer with syncBatchNorm: statistics over the whole batch', async () => {
    const resnet = { modelName: fixture('resnet-tiny-random'), numClasses: 5, ignoreMismatchedSizes: true };
    const crops = { maxSteps: 20, batchSize: 8, dataset: await classificationCrops() };
    await expectEquivalent('resnet-tiny-random', await oneAndTwo(resnet, crops, { syncBatchNorm: true }), 20, ['eval_loss', 'eval_accuracy']);
    const segformer = {
      modelName: fixture('segformer-tiny-random'),
      modelType: 'segmentation' as const,
      numClasses: 5,
      id2label: { 0: 'background', 1: 'cat', 2: 'couch', 3: 'bed', 4: 'remote' },
      ignoreMismatchedSizes: true,
    };
    const masks = await segmentationCrops();
    // The decode head's projection biases feed a BatchNorm that removes any constant: their
    // gradient is rounding noise, which AdamW at eps 1e-8 turns into steps of +-lr that differ
    // with the order of any sum. A larger eps leaves them still, and every other update alike.
    const training = { maxSteps: 20, batchSize: 4, adamEpsilon: 1e-6, dataset: masks };
    await expectEquivalent('segformer-tiny-random', await oneAndTwo(segformer, training, { syncBatchNorm: true }), 20, [
      'eval_loss',
      'eval_mean_iou',
    ]);
  });

  it('a checkpoint of 2 workers resumes in one process with the same global batch, and continues their losses', async () => {
    const dataset = await classificationCrops();
    const training = { ...FIXTURE_OPTIMIZER, seed: 0, maxSteps: 10, saveEvery: 5, dataset };
    const { model, modelConfig } = await load({ modelName: fixture('vit-tiny-random') });
    const outputDir = join(tempDir(), 'run');
    const parallel: number[] = [];
    setNumThreads(1);
    try {
      await new DistributedTrainer(new BaseTrainer({ model, modelConfig }), { numWorkers: 2, threadsPerWorker: 1 }).train(
        { ...training, batchSize: 4, outputDir },
        { onProgress: (e) => e.kind === 'step' && parallel.push(e.loss) },
      );
      const resumed = await load({ modelName: fixture('vit-tiny-random') });
      const alone: number[] = [];
      const trainer = new BaseTrainer(resumed);
      const checkpoint = join(outputDir, 'checkpoint-5');
      await trainer.train(
        { ...training, batchSize: 8, outputDir: join(tempDir(), 'run'), resumeFrom: checkpoint },
        { onProgress: (e) => e.kind === 'step' && alone.push(e.loss) },
      );
      expect(alone).toHaveLength(5);
      for (const [i, loss] of alone.entries()) expect(Math.abs(loss - parallel[i + 5]!)).toBeLessThanOrEqual(1e-5 * Math.abs(parallel[i + 5]!));
      // Another global batch would visit other samples at other steps: refused, naming both.
      await expectError(
        trainer.train({ ...training, batchSize: 4, outputDir: join(tempDir(), 'run'), resumeFrom: checkpoint }),
        ErrorCode.INVALID_ARGUMENT,
        'global batch of 8 (4 per rank x 2 ranks), this run has 4',
      );
    } finally {
      setNumThreads(0);
    }
  });

  it('per-worker BatchNorm statistics by default, broadcast from rank 0: every rank ends with the same state', async () => {
    const { model, modelConfig } = await load({ modelName: fixture('resnet-tiny-random'), numClasses: 10, ignoreMismatchedSizes: true });
    const outputDir = join(tempDir(), 'run');
    const result = await new DistributedTrainer(new BaseTrainer({ model, modelConfig }), { numWorkers: 2 }).train({
      ...FIXTURE_OPTIMIZER,
      maxSteps: 6,
      batchSize: 4,
      outputDir,
      dataset: fashion(32),
    });
    expect(result.workers.map((w) => w.rank)).toEqual([0, 1]);
    expect(result.workers[0]!.stateDigest).toMatch(/^[0-9a-f]{16}$/);
    // The trainer's own model is the trained one afterwards, as after BaseTrainer.train.
    const trained = await model.stateDict();
    for (const [key, value] of Object.entries(await loadSafetensors(join(outputDir, 'model.safetensors')))) {
      expect(Array.from(toFloat32(trained[key]!)), key).toEqual(Array.from(toFloat32(value)));
    }
    expect(model.labels).toEqual(fashion(32).classNames);
    expect(result.workers[1]!.stateDigest).toBe(result.workers[0]!.stateDigest);
    // The running statistics moved from their initial values: the forward passes updated them.
    const saved = await loadSafetensors(join(outputDir, 'model.safetensors'));
    const runningVar = Object.entries(saved).find(([key]) => key.endsWith('running_var'))![1];
    expect(Array.from(toFloat32(runningVar)).some((v) => v !== 1)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Processes: the CLI, torchrun, a Python rank.

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(command: string, args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; done: Promise<Finished> } {
  const child = spawn(command, args, { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => {
    stdout += chunk;
  });
  child.stderr!.on('data', (chunk) => {
    stderr += chunk;
  });
  const done = new Promise<Finished>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

/** A YAML job: the small ViT on Fashion-MNIST, with `extra` lines appended (a distributed: block). */
function job(steps: number, outputDir: string, extra = '', model = smallVit): string {
  const path = join(tempDir(), 'job.yaml');
  const data = fashion(512);
  writeFileSync(
    path,
    `model:\n  name: ${model}\n  type: classification\n  pretrained: false\n  num_classes: 10\n` +
      `training:\n  max_steps: ${steps}\n  batch_size: 8\n  learning_rate: 1.0e-3\n  save_every: 5\n  log_every: 1\n  seed: 1\n  output_dir: ${outputDir}\n` +
      `data:\n  format: idx\n  images: ${data.images}\n  labels: ${data.labels}\n  validation_images: ${data.validationImages}\n` +
      `  validation_labels: ${data.validationLabels}\n  limit: 64\n${extra}`,
  );
  return path;
}

/** Children of `pid` running the worker module. */
function workerPids(pid: number): number[] {
  const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(pid)], { encoding: 'utf8' }).trim();
  return out
    .split('\n')
    .filter((line) => line.includes('distributed-worker'))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 6000 && !condition(); i++) await new Promise((r) => setTimeout(r, 20));
  if (!condition()) throw new Error(`gave up waiting until ${what}`);
}

const stepsLogged = (outputDir: string): number =>
  existsSync(join(outputDir, 'metrics.jsonl')) ? (readFileSync(join(outputDir, 'metrics.jsonl'), 'utf8').match(/"kind":"step"/g) ?? []).length : 0;

describe('the group is torch.distributed own', () => {
  it('a Python process with torch.distributed joins visiontorch ranks, hosting the store or as a client', async () => {
    const node = `import { ProcessGroup, tensor } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
const g = await ProcessGroup.init();
const t = tensor('float32', [4]); t.data.fill(g.rank + 1);
const s = await g.allReduce(t);
const b = tensor('int64', [5]); for (let i = 0; i < 5; i++) b.data[i] = BigInt(i * (g.rank + 10));
const root = await g.broadcast(b, 2);
const mine = tensor('float32', [2]); mine.data.fill(g.rank);
const all = await g.allGather(mine);
await g.barrier();
console.log(JSON.stringify({ rank: g.rank, allreduce: Array.from(s.data), broadcast: Array.from(root.data, Number), allgather: all.map((x) => Array.from(x.data)) }));
g.destroy();`;
    const python = `import json, torch, torch.distributed as dist
from datetime import timedelta
dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
r, w = dist.get_rank(), dist.get_world_size()
t = torch.full((4,), float(r + 1)); dist.all_reduce(t)
b = torch.arange(5, dtype=torch.int64) * (r + 10); dist.broadcast(b, src=2)
g = [torch.zeros(2) for _ in range(w)]; dist.all_gather(g, torch.full((2,), float(r)))
dist.barrier()
print(json.dumps({"rank": r, "allreduce": t.tolist(), "broadcast": b.tolist(), "allgather": [x.tolist() for x in g]}))`;
    for (const pythonRank of [0, 2]) {
      const port = await freePort();
      const runs = [0, 1, 2].map((rank) => {
        const env = { RANK: String(rank), WORLD_SIZE: '3', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) };
        return rank === pythonRank ? start(PYTHON, ['-c', python], env) : start(process.execPath, ['--input-type=module', '-e', node], env);
      });
      const finished = await Promise.all(runs.map((r) => r.done));
      for (const f of finished) expect(f.code, f.stderr).toBe(0);
      for (const [rank, f] of finished.entries()) {
        const result = JSON.parse(f.stdout.trim().split('\n').at(-1)!);
        expect(result).toEqual({
          rank,
          allreduce: [6, 6, 6, 6],
          broadcast: [0, 12, 24, 36, 48],
          allgather: [
            [0, 0],
            [1, 1],
            [2, 2],
          ],
        });
      }
    }
  });

  it('torchrun --no_python --nproc_per_node 2 runs visiontorch train as its workers', async () => {
    const outputDir = join(tempDir(), 'run');
    const port = await freePort();
    // Debian's torchrun 1.13 on Python 3.11 cannot parse its own default --redirects/--tee (0).
    const { done } = start(TORCHRUN, [
      '--no_python',
      '--redirects',
      '1',
      '--tee',
      '1',
      '--nproc_per_node',
      '2',
      '--master_port',
      String(port),
      process.execPath,
      CLI,
      'train',
      job(6, outputDir),
    ]);
    const finished = await done;
    expect(finished.code, finished.stderr).toBe(0);
    expect(finished.stdout).toContain('Results');
    expect(stepsLogged(outputDir)).toBe(6);
    expect(existsSync(join(outputDir, 'model.safetensors'))).toBe(true);
    expect(existsSync(join(outputDir, 'checkpoint-5', 'trainer_state.json'))).toBe(true);
    const state = JSON.parse(readFileSync(join(outputDir, 'checkpoint-5', 'trainer_state.json'), 'utf8'));
    expect(state.options.world_size).toBe(2);
  });

  it('two nodes on 127.0.0.1, started separately, train as one group', async () => {
    const outputDir = join(tempDir(), 'run');
    const port = await freePort();
    const config = job(6, outputDir);
    const node = (rank: number) =>
      start(process.execPath, [
        CLI,
        'train',
        config,
        '--nproc-per-node',
        '1',
        '--nnodes',
        '2',
        '--node-rank',
        String(rank),
        '--master-addr',
        '127.0.0.1',
        '--master-port',
        String(port),
      ]);
    const [first, second] = [node(0), node(1)];
    const [zero, one] = await Promise.all([first.done, second.done]);
    expect(zero.code, zero.stderr).toBe(0);
    expect(one.code, one.stderr).toBe(0);
    expect(zero.stdout).toContain('Results');
    expect(one.stdout).not.toContain('Results');
    expect(stepsLogged(outputDir)).toBe(6);
    const state = JSON.parse(readFileSync(join(outputDir, 'checkpoint-6', 'trainer_state.json'), 'utf8'));
    expect(state.options.world_size).toBe(2);
  });
});

describe('faults', () => {
  it('kill -9 of one of two ranks: the survivor stops with an error naming it, and nothing is left running', async () => {
    const outputDir = join(tempDir(), 'run');
    const port = await freePort();
    const config = job(2000, outputDir, 'distributed:\n  num_workers: 1\n  timeout_seconds: 20\n');
    const ranks = [0, 1].map((rank) =>
      start(process.execPath, [CLI, 'train', config], { RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) }),
    );
    await until(() => stepsLogged(outputDir) >= 2, 'two steps are logged');
    ranks[1]!.child.kill('SIGKILL');
    const [survivor, killed] = (await Promise.all(ranks.map((r) => r.done))) as [Finished, Finished];
    expect(killed.signal).toBe('SIGKILL');
    expect(survivor.code).toBe(1);
    expect(survivor.stderr).toMatch(/rank 1 \(process \d+\) exited/);
    expect(stepsLogged(outputDir)).toBeLessThan(2000);
    for (const r of ranks) expect(alive(r.child.pid!)).toBe(false);
  });

  it('a rank that hangs (SIGSTOP) is named by the others once the timeout passes', async () => {
    const outputDir = join(tempDir(), 'run');
    const port = await freePort();
    const config = job(2000, outputDir, 'distributed:\n  num_workers: 1\n  timeout_seconds: 3\n');
    const ranks = [0, 1].map((rank) =>
      start(process.execPath, [CLI, 'train', config], { RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) }),
    );
    await until(() => stepsLogged(outputDir) >= 2, 'two steps are logged');
    ranks[1]!.child.kill('SIGSTOP');
    const survivor = await ranks[0]!.done;
    ranks[1]!.child.kill('SIGKILL');
    await ranks[1]!.done;
    expect(survivor.code).toBe(1);
    expect(survivor.stderr).toContain('rank 1 stopped responding');
  });

  it('maxRestarts: 1 restarts the group from its last checkpoint, and the weights equal an uninterrupted run bit for bit', async () => {
    const train = async (kill: boolean) => {
      const { model, modelConfig } = await load({ modelName: smallVit, pretrained: false, numClasses: 10 });
      const outputDir = join(tempDir(), 'run');
      const failures: string[] = [];
      let killed = false;
      const result = await new DistributedTrainer(new BaseTrainer({ model, modelConfig }), { numWorkers: 2, maxRestarts: 1 }).train(
        { maxSteps: 40, batchSize: 8, learningRate: 1e-3, saveEvery: 5, seed: 1, outputDir, dataset: { ...fashion(512), limit: 256 } },
        {
          onProgress: (e) => {
            if (kill && !killed && e.kind === 'step' && e.step >= 7) {
              killed = true;
              process.kill(workerPids(process.pid)[1]!, 'SIGKILL');
            }
          },
          onWorkerFailure: (failure, restarting) => failures.push(`${failure.how} ${restarting}`),
        },
      );
      return { result, failures, weights: await loadSafetensors(join(outputDir, 'model.safetensors')) };
    };
    const uninterrupted = await train(false);
    const restarted = await train(true);
    expect(uninterrupted.result.restarts).toBe(0);
    expect(restarted.result.restarts).toBe(1);
    expect(restarted.failures).toEqual(['was killed by SIGKILL true']);
    expect(restarted.result.globalStep).toBe(40);
    for (const [key, value] of Object.entries(uninterrupted.weights)) {
      const bytes = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      expect(bytes(restarted.weights[key]!).equals(bytes(value)), key).toBe(true);
    }
    expect(workerPids(process.pid)).toEqual([]);
  });

  it('an abort stops every worker at the same step after a checkpoint; a killed launcher leaves no worker behind', async () => {
    const { model, modelConfig } = await load({ modelName: smallVit, pretrained: false, numClasses: 10 });
    const outputDir = join(tempDir(), 'run');
    const controller = new AbortController();
    const result = await new DistributedTrainer(new BaseTrainer({ model, modelConfig }), { numWorkers: 2 }).train(
      { maxSteps: 2000, batchSize: 8, outputDir, dataset: fashion(512) },
      { signal: controller.signal, onProgress: (e) => e.kind === 'step' && e.step === 3 && controller.abort() },
    );
    expect(result.aborted).toBe(true);
    expect(result.globalStep).toBeLessThan(2000);
    expect(existsSync(join(outputDir, `checkpoint-${result.globalStep}`, 'trainer_state.json'))).toBe(true);
    expect(result.workers.map((w) => w.rank)).toEqual([0, 1]);
    expect(workerPids(process.pid)).toEqual([]);

    const launcherOutput = join(tempDir(), 'run');
    const launcher = start(process.execPath, [CLI, 'train', job(2000, launcherOutput), '--nproc-per-node', '2']);
    await until(() => stepsLogged(launcherOutput) >= 1, 'a step is logged');
    const workers = workerPids(launcher.child.pid!);
    expect(workers).toHaveLength(2);
    launcher.child.kill('SIGKILL');
    await launcher.done;
    await until(() => workers.every((pid) => !alive(pid)), 'the workers exit');
  });

  it('bad settings are named before any training', async () => {
    const { model, modelConfig } = await load({ modelName: smallVit, pretrained: false, numClasses: 10 });
    const trainer = new BaseTrainer({ model, modelConfig });
    expectError(() => new DistributedTrainer(trainer, { numWorkers: 0 }), ErrorCode.CONFIG, 'numWorkers');
    expectError(() => new DistributedTrainer(trainer, { numWorkers: 1, numNodes: 2, nodeRank: 2 }), ErrorCode.CONFIG, 'nodeRank');
    const outputDir = join(tempDir(), 'run');
    await expectError(
      new DistributedTrainer(trainer, { numWorkers: 2, useGpu: true }).train({ maxSteps: 1, outputDir, dataset: fashion(16) }),
      ErrorCode.UNSUPPORTED,
      'useGpu',
    );
    // A port in use.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      await expectError(
        new DistributedTrainer(trainer, { numWorkers: 2, masterPort: port }).train({ maxSteps: 1, outputDir, dataset: fashion(16) }),
        ErrorCode.DISTRIBUTED,
        `port ${port}`,
      );
    } finally {
      server.close();
    }
    expect(existsSync(outputDir)).toBe(false);
    // A rank outside the world, from the environment.
    const outside = await start(process.execPath, [CLI, 'train', job(1, outputDir)], {
      RANK: '2',
      WORLD_SIZE: '2',
      MASTER_ADDR: '127.0.0.1',
      MASTER_PORT: '1234',
    }).done;
    expect(outside.code).toBe(1);
    expect(outside.stderr).toContain('RANK=2 is not below WORLD_SIZE=2');
    // Two ranks given different models: each names the field.
    const other = join(tempDir(), 'vit');
    mkdirSync(other);
    const config = JSON.parse(readFileSync(join(smallVit, 'config.json'), 'utf8'));
    writeFileSync(join(other, 'config.json'), JSON.stringify({ ...config, layer_norm_eps: 1e-5 }));
    writeFileSync(join(other, 'preprocessor_config.json'), readFileSync(join(smallVit, 'preprocessor_config.json')));
    const mismatchPort = await freePort();
    const [zero, one] = (await Promise.all(
      [smallVit, other].map(
        (modelDir, rank) =>
          start(process.execPath, [CLI, 'train', job(4, join(tempDir(), 'run'), '', modelDir)], {
            RANK: String(rank),
            WORLD_SIZE: '2',
            MASTER_ADDR: '127.0.0.1',
            MASTER_PORT: String(mismatchPort),
          }).done,
      ),
    )) as [Finished, Finished];
    for (const f of [zero, one]) {
      expect(f.code).toBe(1);
      expect(f.stderr).toContain('model.config.layer_norm_eps is 1e-06 on rank 0 but 1e-05 on rank 1');
    }
    expect(zero.stderr).toContain('not given the same job');
  });
});
