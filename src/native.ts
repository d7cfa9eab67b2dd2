/**
 * Loads the native addon (a source build in build/Release, else the prebuilt one in prebuilds/,
 * both found by node-gyp-build) on first use, so that importing the package for its schemas
 * alone needs no native build.
 */

import { readFileSync } from 'node:fs';
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
      throw withCode(new Error(loadFailureMessage(reason)), ErrorCode.NATIVE_ADDON);
    }
  }
  return binding;
}

interface DebianPackages {
  runtime: string[];
  build: string[];
  libraries: Record<string, string>;
}

/**
 * Says why the addon did not load and what to do: for a missing shared library (the dynamic
 * loader's message names it), the Debian package holding it; without any addon for this
 * platform, how to build one.
 * @internal
 */
export function loadFailureMessage(reason: string, root = packageRoot): string {
  let debian: DebianPackages | undefined;
  try {
    debian = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { debian?: DebianPackages }).debian;
  } catch {
    // A package.json that cannot be read changes nothing about the reason itself.
  }
  const missingLibrary = /([\w.+-]+\.so(?:\.[\d.]+)?): cannot open shared object file/.exec(reason)?.[1];
  if (missingLibrary !== undefined) {
    const owner = debian?.libraries[missingLibrary];
    const packages = owner !== undefined ? [owner] : (debian?.runtime ?? []);
    return (
      `visiontorch: the native addon cannot load: the shared library ${missingLibrary} is missing. ` +
      (owner !== undefined ? `Debian 12 ships it in ${owner}: ` : "Debian 12's runtime libraries for visiontorch: ") +
      `sudo apt-get install ${packages.join(' ')} (loader message: ${reason.trim()})`
    );
  }
  if (/No native build was found/.test(reason)) {
    return (
      `visiontorch: no native addon for this platform (prebuilt ones exist for linux-x64 with glibc) and none built from source. ` +
      `To build one: sudo apt-get install ${(debian?.build ?? ['libtorch-dev']).join(' ')}; ` +
      'npm install --save-dev cmake-js node-addon-api node-api-headers; npm rebuild visiontorch. ' +
      `(${reason.trim().split('\n')[0]})`
    );
  }
  return `visiontorch: the native addon could not be loaded (${reason.trim()}). Reinstall the package, or build it with "npm rebuild visiontorch".`;
}
