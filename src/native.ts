/**
 * Loads the native addon (prebuilds/ first, then build/Release, via node-gyp-build) on first use,
 * so that importing the package for its schemas alone needs no native build.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import type { Binding } from '../binding.js';
import { ErrorCode, withCode } from './errors.js';

const require = createRequire(import.meta.url);
// src/native.ts and dist/native.js both sit one level below the package root.
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

let binding: Binding | undefined;

export function native(): Binding {
  if (binding === undefined) {
    const load = require('node-gyp-build') as (dir: string) => Binding;
    try {
      binding = load(packageRoot);
      // exit() destroys libtorch's and oneDNN's static objects: the native job still running must
      // end first (process.exit() with calls in flight would otherwise crash). Worker threads
      // leave the shared compute thread to the others.
      if (isMainThread) {
        const loaded = binding;
        process.once('exit', () => loaded.prepareExit());
      }
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw withCode(
        new Error(
          `visiontorch: the native addon could not be loaded (${reason}). ` +
            'Build it with "npm run build:native" (needs libtorch-dev; "npm run setup" installs everything).',
        ),
        ErrorCode.NATIVE_ADDON,
      );
    }
  }
  return binding;
}
