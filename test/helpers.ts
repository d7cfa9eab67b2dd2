/** Shared by the tests: fixture locations, reference tensors, tolerance checks and error assertions. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { type ErrorCode, loadSafetensors, type Tensor, toFloat32 } from '../src/index.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
export const fixturesDir = join(repoRoot, 'test', 'fixtures');

/** What the fixtures' training steps did: plain AdamW on every parameter, constant rate, no clipping. */
export const FIXTURE_OPTIMIZER = {
  learningRate: 1e-3,
  weightDecay: 0.01,
  optimizer: 'adamw',
  lrScheduler: 'constant',
  maxGradNorm: 0,
  decayBiasAndNorm: true,
} as const;
export const fixture = (...parts: string[]): string => join(fixturesDir, ...parts);

/** Fashion-MNIST (Debian's dataset-fashion-mnist) as an IDX dataset of `limit` samples per split. */
const FASHION_MNIST = '/usr/share/datasets/fashion-mnist';
export const fashionDataset = (limit: number) => ({
  format: 'idx' as const,
  images: join(FASHION_MNIST, 'train-images-idx3-ubyte.gz'),
  labels: join(FASHION_MNIST, 'train-labels-idx1-ubyte.gz'),
  validationImages: join(FASHION_MNIST, 't10k-images-idx3-ubyte.gz'),
  validationLabels: join(FASHION_MNIST, 't10k-labels-idx1-ubyte.gz'),
  classNames: ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'],
  limit,
});

export function tempDir(prefix = 'visiontorch-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface Tolerance {
  atol: number;
  rtol: number;
}

export interface Reference {
  tensors: Record<string, Tensor>;
  json: { suggested_tolerances: Record<string, Tolerance>; [key: string]: unknown };
  tolerance(kind: string): Tolerance;
}

const references = new Map<string, Promise<Reference>>();

/** reference.safetensors and reference.json of a fixture, loaded once per test file. */
export function reference(name: string): Promise<Reference> {
  let loaded = references.get(name);
  if (!loaded) {
    loaded = (async () => {
      const json = JSON.parse(readFileSync(fixture(name, 'reference.json'), 'utf8')) as Reference['json'];
      const tensors = await loadSafetensors(fixture(name, 'reference.safetensors'));
      return {
        tensors,
        json,
        tolerance(kind: string): Tolerance {
          const tolerance = json.suggested_tolerances[kind];
          if (!tolerance) throw new Error(`${name}/reference.json has no suggested tolerance for ${kind}`);
          return tolerance;
        },
      };
    })();
    references.set(name, loaded);
  }
  return loaded;
}

/** Largest |actual - expected| - rtol*|expected| over all elements; <= atol means close. */
export function maxExcess(actual: Tensor, expected: Tensor, rtol: number): { worst: number; index: number } {
  const a = toFloat32(actual);
  const e = toFloat32(expected);
  let worst = 0;
  let index = -1;
  for (let i = 0; i < e.length; i++) {
    const excess = Math.abs((a[i] ?? Number.NaN) - (e[i] ?? 0)) - rtol * Math.abs(e[i] ?? 0);
    if (!(excess <= worst)) {
      worst = Number.isNaN(excess) ? Number.POSITIVE_INFINITY : excess;
      index = i;
    }
  }
  return { worst, index };
}

export function expectClose(actual: Tensor | undefined, expected: Tensor | undefined, tolerance: Tolerance, what: string): void {
  expect(actual, `${what}: missing`).toBeDefined();
  expect(expected, `${what}: no reference`).toBeDefined();
  if (!actual || !expected) return;
  expect(actual.shape, `${what}: shape`).toEqual(expected.shape);
  const { worst, index } = maxExcess(actual, expected, tolerance.rtol);
  const a = toFloat32(actual)[index];
  const e = toFloat32(expected)[index];
  expect(worst, `${what}: element ${index} is ${a}, expected ${e} (atol ${tolerance.atol}, rtol ${tolerance.rtol})`).toBeLessThanOrEqual(
    tolerance.atol,
  );
}

/** An error as visiontorch raises it: an Error with a stable `code`. */
export type CodedError = Error & { code: ErrorCode };

/** Asserts that `error` (a caught error or rejection reason) has `code` and that its message names each of `named`. */
export function expectCode(error: unknown, code: ErrorCode, ...named: (string | RegExp)[]): CodedError {
  expect(error, 'expected an Error').toBeInstanceOf(Error);
  const { message } = error as Error;
  // Soft: a test goes on after a wrong code or name, so one run reports every mismatch.
  expect.soft((error as { code?: unknown }).code, `code of: ${message}`).toBe(code);
  for (const part of named) {
    if (typeof part === 'string') expect.soft(message, 'the message names it').toContain(part);
    else expect.soft(message, 'the message names it').toMatch(part);
  }
  return error as CodedError;
}

/**
 * Asserts that `attempt` fails with `code` and that its message names each of `named` (a file, key,
 * field or value; a RegExp where the name varies). A function is called here and must throw
 * synchronously; a promise must reject, and the result must be awaited. Returns the error.
 */
export function expectError(attempt: () => unknown, code: ErrorCode, ...named: (string | RegExp)[]): CodedError;
export function expectError(attempt: PromiseLike<unknown>, code: ErrorCode, ...named: (string | RegExp)[]): Promise<CodedError>;
export function expectError(
  attempt: (() => unknown) | PromiseLike<unknown>,
  code: ErrorCode,
  ...named: (string | RegExp)[]
): CodedError | Promise<CodedError> {
  if (typeof attempt === 'function') {
    let result: unknown;
    try {
      result = attempt();
    } catch (error) {
      return expectCode(error, code, ...named);
    }
    const what = result instanceof Promise ? 'returned a promise: pass the promise itself' : 'did not throw';
    throw new Error(`expected an error with code ${code}, but the function ${what}`);
  }
  return Promise.resolve(attempt).then(
    () => {
      throw new Error(`expected a rejection with code ${code}, but the promise resolved`);
    },
    (error: unknown) => expectCode(error, code, ...named),
  );
}

/**
 * Type-checks `files` of `project` as a strict consumer would (NodeNext modules, our own
 * declarations checked too: skipLibCheck off) with this checkout's TypeScript, writing the
 * project's tsconfig.json first; `compilerOptions` adds or overrides options. Returns tsc's exit
 * status and output.
 */
export function typeCheckConsumer(
  project: string,
  files: string[],
  compilerOptions: Record<string, unknown> = {},
): { status: number; output: string } {
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: ['node'],
        ...compilerOptions,
      },
      files,
    }),
  );
  const tsc = spawnSync(process.execPath, [join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', project], {
    cwd: project,
    encoding: 'utf8',
  });
  return { status: tsc.status ?? 1, output: `${tsc.stdout}${tsc.stderr}${tsc.error?.message ?? ''}` };
}
