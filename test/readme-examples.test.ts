/**
 * The README's TypeScript examples compile under `strict` against the published declarations
 * (dist/, built by `tsc -p tsconfig.json`), as a user's project would compile them. A block whose
 * info string says `no-check` (```ts no-check) is left out.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { repoRoot, typeCheckConsumer } from './helpers.js';

interface Example {
  /** 1-based README line of the block's first line of code. */
  line: number;
  code: string;
}

/** Every ```ts and ```typescript block of `markdown`, but those marked no-check. */
function typescriptBlocks(markdown: string): Example[] {
  const examples: Example[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*(ts|typescript)\b(.*)$/.exec(lines[i]!);
    if (!open) continue;
    const [, indent, fence, , info] = open;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !lines[j]!.trimStart().startsWith(fence!)) body.push(lines[j++]!.slice(indent!.length));
    if (!/\bno-check\b/.test(info!)) examples.push({ line: i + 2, code: body.join('\n') });
    i = j;
  }
  return examples;
}

it("the README's TypeScript examples type-check under strict", () => {
  const examples = typescriptBlocks(readFileSync(join(repoRoot, 'README.md'), 'utf8'));
  expect(examples.length).toBeGreaterThan(0);
  // Inside the checkout (build/ is ignored), without a package.json of its own: 'visiontorch'
  // resolves to this package by its self-reference, as from a user's node_modules, and the files
  // are ES modules (the examples use top-level await).
  const project = join(repoRoot, 'build', `readme-examples-${process.pid}`);
  mkdirSync(project, { recursive: true });
  const files = examples.map(({ line, code }) => {
    const file = `readme-line-${line}.ts`;
    // A block without import or export would be a script, where top-level await is an error.
    writeFileSync(join(project, file), /^\s*(import|export)\s/m.test(code) ? `${code}\n` : `${code}\nexport {};\n`);
    return file;
  });
  try {
    // Our own declarations are checked too, not only the examples' use of them (skipLibCheck off).
    const { status, output } = typeCheckConsumer(project, files);
    // readme-line-L.ts(l,c): README.md line L + l - 1.
    const located = output.replace(
      /(?:\S*\/)?readme-line-(\d+)\.ts\((\d+),(\d+)\)/g,
      (_, start, l, c) => `README.md:${Number(start) + Number(l) - 1}:${c}`,
    );
    if (status !== 0) throw new Error(`README examples do not type-check:\n${located}`);
  } finally {
    rmSync(project, { recursive: true, force: true });
  }
}, 120_000);
