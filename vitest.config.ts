import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native forward passes and training steps take seconds on 2 cores, minutes on a busy machine.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // One file at a time: each native call already uses every core.
    fileParallelism: false,
    // Every pass on the full team, so that a file's outputs do not depend on the team a pass got
    // (DETR's differ in the 7th digit); test/inference-threads.test.ts turns it on for itself.
    env: { VISIONTORCH_ADAPTIVE_THREADS: '0' },
  },
});
