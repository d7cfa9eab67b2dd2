/** Shared by the tests: fixture locations, reference tensors and tolerance checks. */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { loadSafetensors, type Tensor, toFloat32 } from '../src/index.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
export const fixturesDir = join(repoRoot, 'test', 'fixtures');
export const fixture = (...parts: string[]): string => join(fixturesDir, ...parts);

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
