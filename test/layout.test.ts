// The native core's layering (CONTRIBUTING.md): every include names a folder of native/core, and
// no folder reaches one that depends on it. A include running the wrong way fails here.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers.js';

const core = join(repoRoot, 'native', 'core');

function sources(directory: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(directory, { withFileTypes: true })) {
    const path = join(directory, entry.name);
    if (entry.isDirectory()) found.push(...sources(path));
    else if (/\.(h|cpp)$/.test(entry.name)) found.push(path);
  }
  return found;
}

/** `"folder/file.h"` includes of every core source, by the source's folder. */
function includesByFolder(): Map<string, { file: string; include: string }[]> {
  const byFolder = new Map<string, { file: string; include: string }[]>();
  for (const file of sources(core)) {
    const folder = relative(core, file).split('/')[0]!;
    for (const match of readFileSync(file, 'utf8').matchAll(/^#include "([^"]+)"/gm)) {
      const list = byFolder.get(folder) ?? [];
      list.push({ file: relative(core, file), include: match[1]! });
      byFolder.set(folder, list);
    }
  }
  return byFolder;
}

// What each folder may include besides itself; tests/ may include anything in the core.
const allowed: Record<string, string[]> = {
  common: [],
  runtime: ['common'],
  io: ['common'],
  kernels: ['common', 'runtime'],
  nn: ['common', 'kernels'],
  losses: ['common', 'nn'],
  models: ['common', 'nn', 'losses', 'io'],
  tasks: ['common', 'nn', 'data'],
  data: ['common', 'io', 'nn', 'runtime'],
  eval: ['common', 'io'],
  pretrained: ['common', 'io', 'nn', 'kernels', 'models', 'losses', 'tasks', 'data', 'runtime'],
  distributed: ['common'],
  train: ['common', 'io', 'nn', 'losses', 'tasks', 'data', 'eval', 'pretrained', 'runtime', 'distributed'],
  // The libFuzzer targets: the readers of files a user may be handed, nothing above them.
  fuzz: ['common', 'io', 'data'],
};

describe('native/core layering', () => {
  const byFolder = includesByFolder();

  it('includes only folders of the core, never a path above it', () => {
    const folders = new Set(
      readdirSync(core, { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name),
    );
    // An include without a folder names a file beside the includer (the tests' helpers).
    const outside = [...byFolder.values()]
      .flat()
      .filter(({ include }) => include.includes('..') || (include.includes('/') && !folders.has(include.split('/')[0]!)));
    expect(outside).toEqual([]);
  });

  it('has every folder include only the folders below it', () => {
    expect([...byFolder.keys()].filter((folder) => folder !== 'tests' && !(folder in allowed))).toEqual([]);
    const upward = [...byFolder.entries()]
      .filter(([folder]) => folder !== 'tests')
      .flatMap(([folder, includes]) =>
        includes.filter(({ include }) => include.split('/')[0] !== folder && !allowed[folder]!.includes(include.split('/')[0]!)),
      );
    expect(upward).toEqual([]);
  });

  it('keeps kernels out of the model files: models reach them through layers::', () => {
    const files = sources(join(core, 'models'));
    const kernelUse = files.filter((file) => /\bkernels::/.test(readFileSync(file, 'utf8'))).map((file) => relative(core, file));
    expect(kernelUse).toEqual([]);
  });

  it('defines tasks in native/core/tasks alone', () => {
    const definitions = sources(core)
      .filter((file) => /TaskDefinition \w+_task\(\) \{/.test(readFileSync(file, 'utf8')))
      .map((file) => relative(core, file).split('/')[0]);
    expect(new Set(definitions)).toEqual(new Set(['tasks']));
  });
});
