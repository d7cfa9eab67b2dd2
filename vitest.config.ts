import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native forward passes and training steps take seconds on 2 cores, minutes on a busy machine.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // One file at a time: each native call already uses every core.
    fileParallelism: false,
  },
});
