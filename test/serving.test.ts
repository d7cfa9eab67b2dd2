import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BaseTrainer, HuggingFaceModelLoader, type ModelConfig, type VisionModel } from '../src/index.js';
import { fashionDataset, fixture, repoRoot, tempDir } from './helpers.js';

// Serving while training: a train() run lends the compute thread out between its steps, so calls
// on other models interleave with it; calls on the model it trains wait for the run to end.

const models: VisionModel[] = [];
afterAll(() => {
  for (const m of models) m.dispose();
});

async function load(config: Partial<ModelConfig> & { modelName: string }): Promise<VisionModel> {
  const modelConfig = { modelType: 'classification', pretrained: true, ...config } as ModelConfig;
  const model = await HuggingFaceModelLoader.loadModel(modelConfig, { seed: 7 });
  models.push(model);
  return model;
}

const FASHION = fashionDataset(0).images;
const image = fixture('images', 'chelsea.png');
const STEPS = 10;

// The small Fashion-MNIST ViT with dropout: its run draws from the global generator every step,
// which a seeded load between its steps would reseed.
function vitWithDropout(): string {
  const directory = join(tempDir(), 'vit-dropout');
  cpSync(join(repoRoot, 'config', 'models', 'vit-fashion-mnist'), directory, { recursive: true });
  const configPath = join(directory, 'config.json');
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  writeFileSync(configPath, JSON.stringify({ ...config, hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1 }));
  return directory;
}

describe.skipIf(!existsSync(FASHION))('serving while training', () => {
  it('a predict on another model resolves between steps; calls on the trained model wait; the run is unchanged', async () => {
    const modelName = vitWithDropout();
    const config = {
      maxSteps: STEPS,
      batchSize: 16,
      learningRate: 1e-3,
      evalEvery: 0,
      dataset: { ...fashionDataset(160), augment: { horizontalFlip: true } },
      seed: 5,
    };
    const train = async (onStep?: (step: number, model: VisionModel, steps: number[]) => void) => {
      const model = await load({ modelName, pretrained: false, numClasses: 10 });
      const steps: number[] = [];
      const losses: number[] = [];
      const result = await new BaseTrainer({ model, modelConfig: { modelType: 'classification', modelName } as ModelConfig }).train(
        { ...config, outputDir: join(tempDir(), 'run') },
        {
          onProgress: (e) => {
            if (e.kind !== 'step') return;
            steps.push(e.step);
            losses.push(e.loss);
            onStep?.(e.step, model, steps);
          },
        },
      );
      return { model, result, steps, losses, state: await model.stateDict() };
    };

    const served = await load({ modelName: fixture('vit-tiny-random') });
    const idle = await served.predict(image);
    const plain = await train();

    const order: string[] = [];
    let stepsWhenServed = -1;
    let servedResult: unknown;
    let loaded: Promise<VisionModel> | undefined;
    let sameModel: Promise<unknown> | undefined;
    const interleaved = await train((step, model, steps) => {
      if (step !== 1) return;
      void served.predict(image).then((result) => {
        stepsWhenServed = steps.length;
        servedResult = result;
        order.push('predict');
      });
      // Seeded: it reseeds the global generator, between two steps of a run that draws from it.
      loaded = load({ modelName: fixture('vit-tiny-random') });
      sameModel = model.predict(image);
    }).then((run) => {
      order.push('train');
      return run;
    });
    expect(order).toEqual(['predict', 'train']);
    expect(stepsWhenServed).toBeLessThan(STEPS);
    expect(servedResult).toEqual(idle);
    await loaded;

    // The call on the trained model waited for the run: it saw the final weights.
    expect(await sameModel).toEqual(await interleaved.model.predict(image));
    // The run did not notice: same losses, same weights, bit for bit.
    expect(interleaved.steps).toEqual(plain.steps);
    expect(interleaved.losses).toEqual(plain.losses);
    for (const [key, value] of Object.entries(plain.state)) expect(interleaved.state[key]!.data, key).toEqual(value.data);
  });
});
