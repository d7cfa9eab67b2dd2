import { type ChildProcess, spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HuggingFaceModelLoader, runtimeInfo, tensor, type VisionModel } from '../src/index.js';
import { fixture, repoRoot } from './helpers.js';

// The adaptive inference team (native/core/runtime/inference_team.h). The other test files run
// with it off (vitest.config.ts) so that their outputs do not depend on the team a pass got; it
// is read on the first pass, so setting it here, before any, turns it on for this file.
process.env.VISIONTORCH_ADAPTIVE_THREADS = '1';

const models: VisionModel[] = [];
const burners: ChildProcess[] = [];
afterAll(() => {
  for (const child of burners) child.kill('SIGKILL');
  for (const m of models) m.dispose();
});

async function load(modelName: string): Promise<VisionModel> {
  const model = await HuggingFaceModelLoader.loadModel({ modelName, modelType: 'classification', pretrained: false }, { seed: 3 });
  models.push(model);
  return model;
}

function pixels(batch: number, channels: number, size: number) {
  const input = tensor('float32', [batch, channels, size, size]);
  for (let i = 0; i < input.data.length; i++) input.data[i] = Math.sin(i * 0.37);
  return input;
}

const multiCore = runtimeInfo().computeThreads > 1;

describe.skipIf(!multiCore)('adaptive inference threads', () => {
  it('a tiny model moves to one thread after its timed passes, with the same logits', async () => {
    const model = await load(fixture('vit-tiny-random'));
    const input = pixels(1, 3, 32);
    const first = await model.forward({ pixelValues: input });
    expect(runtimeInfo().lastInferenceThreads).toBe(runtimeInfo().computeThreads);
    for (let pass = 0; pass < 6; pass++) {
      const out = await model.forward({ pixelValues: input });
      expect(out.logits?.data).toEqual(first.logits?.data);
    }
    // Its passes take a fraction of a millisecond, far under the 1 ms at which one thread takes over.
    expect(runtimeInfo().lastInferenceThreads).toBe(1);
  });

  it('other processes busy on every core shrink the team; it grows back when they stop', async () => {
    const model = await load(join(repoRoot, 'config', 'models', 'vit-fashion-mnist'));
    const input = pixels(64, 1, 28);
    // Busy loops, one per logical CPU: some of the team's threads must wait for a core.
    for (let i = 0; i < cpus().length; i++) {
      burners.push(spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
    }
    let passes = 0;
    while (!runtimeInfo().cpuContended && passes < 40) {
      await model.forward({ pixelValues: input });
      passes++;
    }
    expect(runtimeInfo().cpuContended).toBe(true);
    await model.forward({ pixelValues: input });
    expect(runtimeInfo().lastInferenceThreads).toBeLessThan(runtimeInfo().computeThreads);

    for (const child of burners) child.kill('SIGKILL');
    await Promise.all(
      burners.map(
        (child) => new Promise((resolve) => (child.exitCode !== null || child.signalCode ? resolve(undefined) : child.once('exit', resolve))),
      ),
    );
    passes = 0;
    // Contention ends when a pass ends with the cores free; the pass after it gets the full team.
    while ((runtimeInfo().cpuContended || runtimeInfo().lastInferenceThreads < runtimeInfo().computeThreads) && passes < 200) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      await model.forward({ pixelValues: input });
      passes++;
    }
    expect(runtimeInfo().lastInferenceThreads).toBe(runtimeInfo().computeThreads);
    expect(runtimeInfo().cpuContended).toBe(false);
  });
});

describe('VISIONTORCH_ADAPTIVE_THREADS=0', () => {
  it('keeps every pass on the full team', async () => {
    const { spawnSync } = await import('node:child_process');
    const script = `
      import { HuggingFaceModelLoader, runtimeInfo, tensor } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};
      const model = await HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(fixture('vit-tiny-random'))}, modelType: 'classification', pretrained: false });
      const teams = [];
      for (let i = 0; i < 8; i++) { await model.forward({ pixelValues: tensor('float32', [1, 3, 32, 32]) }); teams.push(runtimeInfo().lastInferenceThreads); }
      console.log(JSON.stringify({ teams, computeThreads: runtimeInfo().computeThreads }));
      model.dispose();`;
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, VISIONTORCH_ADAPTIVE_THREADS: '0' },
      encoding: 'utf8',
    });
    expect(result.status, result.stderr).toBe(0);
    const { teams, computeThreads } = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}');
    expect(teams).toEqual(Array(8).fill(computeThreads));
  });
});
