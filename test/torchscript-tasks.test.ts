import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BaseTrainer,
  type DetectionPrediction,
  ErrorCode,
  HuggingFaceModelLoader,
  type ModelConfig,
  type SegmentationPrediction,
  type Tensor,
  type VisionModel,
} from '../src/index.js';
import { expectError, fixture, tempDir } from './helpers.js';

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

async function load(config: Partial<ModelConfig> & { modelName: string }): Promise<{ model: VisionModel; modelConfig: ModelConfig }> {
  const modelConfig = config as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig);
  models.push(model);
  return { model, modelConfig };
}

// Debian's python3-torch (scripts/setup.sh installs it) writes the scripted models, as a user would.
function script(directory: string, source: string): void {
  // From a file: torch.jit.script reads the classes' source code.
  const file = join(directory, 'make_model.py');
  writeFileSync(file, `import torch\nfrom torch import nn\nfrom typing import Dict\ntorch.manual_seed(0)\n${source}`);
  execFileSync('/usr/bin/python3', [file], { cwd: directory, stdio: 'pipe' });
}

const DETECTOR = `
class TinyDetector(nn.Module):
    """DETR's output convention: logits [B, queries, classes + 1] and pred_boxes [B, queries, 4]."""
    def __init__(self, classes: int = 2, queries: int = 5):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.queries = queries
        self.class_head = nn.Linear(16 * 16, queries * (classes + 1))
        self.box_head = nn.Linear(16 * 16, queries * 4)

    def forward(self, pixel_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.backbone(pixel_values).flatten(1)
        batch = pixel_values.shape[0]
        return {"logits": self.class_head(features).view(batch, self.queries, -1),
                "pred_boxes": self.box_head(features).view(batch, self.queries, 4).sigmoid()}

torch.jit.script(TinyDetector()).save("model.pt")
`;

const SEGMENTER = `
class TinySegmenter(nn.Module):
    """Per-pixel class logits at half the input's resolution."""
    def __init__(self, classes: int = 3):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)

torch.jit.script(TinySegmenter()).save("model.pt")
`;

const PHOTOS = [fixture('images', 'chelsea.png'), fixture('images', 'rocket.jpg')];
const int64 = (shape: number[], values: number[]): Tensor => ({ dtype: 'int64', shape, data: BigInt64Array.from(values.map(BigInt)) });
const float32 = (shape: number[], values: number[]): Tensor => ({ dtype: 'float32', shape, data: Float32Array.from(values) });

describe('custom TorchScript detection and segmentation models', () => {
  it('a detector returning {logits, pred_boxes} predicts boxes, trains with the Hungarian loss, and saves', async () => {
    const dir = tempDir();
    script(dir, DETECTOR);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ id2label: { 0: 'cat', 1: 'rocket' }, eos_coefficient: 0.2 }));
    writeFileSync(
      join(dir, 'preprocessor_config.json'),
      JSON.stringify({ image_processor_type: 'DetrImageProcessor', size: { shortest_edge: 64, longest_edge: 96 }, do_normalize: true }),
    );
    const { model, modelConfig } = await load({ modelName: dir, modelType: 'object_detection' });
    expect(model.architecture).toBe('TorchScriptModule');
    expect(model.labels).toEqual(['cat', 'rocket']);
    const predictions = (await model.predict(PHOTOS, { threshold: 0 })) as DetectionPrediction[][];
    expect(predictions[0]!.length).toBe(5);
    for (const { box } of predictions[1]!) expect(box.xmax).toBeLessThanOrEqual(640 + 1e-3);

    const { pixelValues, pixelMask } = await model.preprocess(PHOTOS);
    const labels = [
      { classLabels: int64([1], [0]), boxes: float32([1, 4], [0.5, 0.5, 0.6, 0.8]) },
      { classLabels: int64([2], [1, 1]), boxes: float32([2, 4], [0.3, 0.4, 0.2, 0.3, 0.7, 0.6, 0.2, 0.2]) },
    ];
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 1e-2, lrScheduler: 'constant', seed: 0 });
    const losses: number[] = [];
    let parts: Record<string, number> | undefined;
    for (let i = 0; i < 30; i++) {
      const step = await trainer.trainingStep({ pixelValues, pixelMask, labels });
      losses.push(step.loss);
      parts = step.lossDict;
    }
    expect(Object.keys(parts!)).toEqual(expect.arrayContaining(['loss_ce', 'loss_bbox', 'loss_giou']));
    expect(losses[29]).toBeLessThan(losses[0]! * 0.7);

    const saved = join(dir, 'saved');
    await model.save(saved);
    const { model: reloaded } = await load({ modelName: saved, modelType: 'object_detection' });
    const [a, b] = [await model.forward({ pixelValues }), await reloaded.forward({ pixelValues })];
    expect(b.predBoxes!.data).toEqual(a.predBoxes!.data);
    expect(b.logits!.data).toEqual(a.logits!.data);
  });

  it('a segmenter returning [B, classes, h, w] predicts label maps at the original size and trains on label maps', async () => {
    const dir = tempDir();
    script(dir, SEGMENTER);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ id2label: { 0: 'background', 1: 'cat', 2: 'rocket' } }));
    writeFileSync(
      join(dir, 'preprocessor_config.json'),
      JSON.stringify({ image_processor_type: 'SegformerImageProcessor', size: { height: 32, width: 32 }, do_normalize: true }),
    );
    const { model, modelConfig } = await load({ modelName: dir, modelType: 'segmentation' });
    const [prediction] = (await model.predict(PHOTOS[0]!)) as SegmentationPrediction[];
    expect([prediction!.width, prediction!.height]).toEqual([451, 300]);
    expect(prediction!.labelMap.length).toBe(451 * 300);

    const { pixelValues } = await model.preprocess(PHOTOS);
    // Left half class 1, right half class 2, the top row ignored (255).
    const map = Array.from({ length: 2 * 32 * 32 }, (_, i) => (i % (32 * 32) < 32 ? 255 : i % 32 < 16 ? 1 : 2));
    const labels = int64([2, 32, 32], map);
    const trainer = new BaseTrainer({ model, modelConfig, learningRate: 1e-2, lrScheduler: 'constant', seed: 0 });
    const losses: number[] = [];
    for (let i = 0; i < 20; i++) losses.push((await trainer.trainingStep({ pixelValues, labels })).loss);
    expect(losses[19]).toBeLessThan(losses[0]! * 0.7);
  });

  it('outputs that do not follow the convention are named', async () => {
    const dir = tempDir();
    script(dir, SEGMENTER);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ id2label: { 0: 'a', 1: 'b', 2: 'c' } }));
    // A segmenter's 4-D logits are no detector's.
    const { model } = await load({ modelName: dir, modelType: 'object_detection' });
    await expectError(model.predict(PHOTOS[0]!), ErrorCode.INVALID_ARGUMENT, 'logits', 'pred_boxes');
  });
});
