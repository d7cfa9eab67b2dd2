import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native forward passes and training steps can take seconds on 2 cores.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // One file at a time: each native call already uses every core.
    fileParallelism: false,
  },
});
