/**
 * The package as users get it: packed (prepack builds dist/ afresh), installed from the tarball
 * into a new project with the prebuilt addon, then used from strict TypeScript (ES module and
 * CommonJS) and from plain CommonJS. Also what the tarball holds, and the addon's load errors.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HuggingFaceModelLoader } from '../src/index.js';
import { loadFailureMessage } from '../src/native.js';
import { fixture, repoRoot, tempDir, typeCheckConsumer } from './helpers.js';

const npm = (args: string[], cwd: string) =>
  spawnSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, npm_config_update_notifier: 'false' },
  });
const packageJson = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
  debian: { runtime: string[]; build: string[]; libraries: Record<string, string> };
};
const prebuild = join(repoRoot, 'prebuilds', `linux-x64`, 'node.napi.glibc.node');
const model = fixture('vit-tiny-random');
const photo = fixture('images', 'rocket.jpg');

let work: string;
let tarball: string;
let packedFiles: string[];

/** The files npm would pack, copied without the tests and benchmarks (prepack must not touch the checkout's dist/). */
function copyPackageSources(destination: string): void {
  const listed = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z'], { cwd: repoRoot, encoding: 'utf8' })
    .split('\0')
    .filter((file) => file !== '' && !/^(test|bench|docs)\//.test(file) && existsSync(join(repoRoot, file)));
  for (const file of listed) {
    mkdirSync(dirname(join(destination, file)), { recursive: true });
    cpSync(join(repoRoot, file), join(destination, file));
  }
  cpSync(join(repoRoot, 'prebuilds'), join(destination, 'prebuilds'), { recursive: true });
  symlinkSync(join(repoRoot, 'node_modules'), join(destination, 'node_modules'));
}

beforeAll(() => {
  // The prebuild from the addon setup built (stripped and load-checked by the script).
  const made = spawnSync(process.execPath, [join(repoRoot, 'scripts', 'prebuild.mjs'), '--from-build'], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`scripts/prebuild.mjs failed:\n${made.stdout}${made.stderr}`);
  work = tempDir('visiontorch-package-');
  const source = join(work, 'source');
  copyPackageSources(source);
  const packed = npm(['pack', '--json', '--pack-destination', work], source);
  if (packed.status !== 0) throw new Error(`npm pack failed:\n${packed.stdout}${packed.stderr}`);
  const [report] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  if (report === undefined) throw new Error(`npm pack printed no report:\n${packed.stdout}`);
  tarball = join(work, report.filename);
  packedFiles = report.files.map((file) => file.path).sort();
}, 240_000);

afterAll(() => {
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

describe('the packed package', () => {
  it('holds what users run and nothing else', () => {
    for (const needed of [
      'package.json',
      'dist/index.js',
      'dist/index.d.ts',
      'dist/cli/main.js',
      'binding.d.ts',
      'prebuilds/linux-x64/node.napi.glibc.node',
      'scripts/install-native.mjs',
      'CMakeLists.txt',
      'native/core/CMakeLists.txt',
      'config/model_config.yaml',
    ]) {
      expect(packedFiles).toContain(needed);
    }
    const unwanted = packedFiles.filter(
      (file) =>
        /^(test|bench|docs|build|native\/core\/(tests|fuzz))\//.test(file) ||
        /\.(tsbuildinfo|map|o|gch|pch)$/.test(file) ||
        /^src\//.test(file) ||
        file.startsWith('tsconfig'),
    );
    expect(unwanted).toEqual([]);
    // Declarations carry no @internal members (stripInternal).
    const declarations = packedFiles.filter((file) => file.endsWith('.d.ts') && file.startsWith('dist/'));
    expect(declarations.length).toBeGreaterThan(10);
  });

  it('keeps the build tools out of its runtime dependencies', () => {
    expect(Object.keys(packageJson.dependencies).sort()).toEqual(['node-gyp-build', 'yaml', 'zod']);
  });

  it('installs from the tarball without compiling, and a strict TypeScript consumer type-checks and predicts', () => {
    const app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    const started = Date.now();
    const installed = npm(['install', '--prefer-offline', tarball], app);
    const seconds = (Date.now() - started) / 1000;
    expect(installed.status, `${installed.stdout}${installed.stderr}`).toBe(0);
    console.log(`npm install of the packed tarball: ${seconds.toFixed(1)} s`);

    const installedPackage = join(app, 'node_modules', 'visiontorch');
    expect(existsSync(join(installedPackage, 'build')), 'the install step built from source').toBe(false);
    expect(`${installed.stdout}${installed.stderr}`).not.toMatch(/cmake|building from source/i);
    for (const tool of ['cmake-js', 'node-addon-api', 'node-api-headers']) {
      expect(existsSync(join(app, 'node_modules', tool)), `${tool} installed`).toBe(false);
    }
    expect(directoryBytes(installedPackage)).toBeLessThan(50 * 2 ** 20);

    writeFileSync(
      join(app, 'consumer.mts'),
      `import { HuggingFaceModelLoader, ModelType } from 'visiontorch';

const model = await HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(model)}, modelType: ModelType.CLASSIFICATION });
const [top] = await model.predict(${JSON.stringify(photo)}, { topK: 3 });
const best: { label: string; score: number; index: number } | undefined = top?.[0];
console.log(JSON.stringify({ architecture: model.architecture, best }));
model.dispose();
`,
    );
    writeFileSync(
      join(app, 'consumer.cts'),
      `import visiontorch = require('visiontorch');

async function main(): Promise<void> {
  const model = await visiontorch.HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(model)} });
  console.log(model.architecture);
  model.dispose();
}
void main();
`,
    );
    const checked = typeCheckConsumer(app, ['consumer.mts', 'consumer.cts'], {
      noEmit: false,
      outDir: 'out',
      noUncheckedIndexedAccess: true,
      exactOptionalPropertyTypes: true,
      typeRoots: [join(repoRoot, 'node_modules', '@types')],
    });
    expect(checked.status, checked.output).toBe(0);

    const run = (file: string) => execFileSync(process.execPath, [join(app, 'out', file)], { cwd: app, encoding: 'utf8' }).trim();
    const fromModule = JSON.parse(run('consumer.mjs')) as { architecture: string; best: { label: string; score: number } };
    expect(fromModule.architecture).toBe('ViTForImageClassification');
    expect(run('consumer.cjs')).toBe('ViTForImageClassification');

    // Plain CommonJS from the installed package, and the CLI it installs.
    const fromRequire = execFileSync(
      process.execPath,
      [
        '-e',
        `require('visiontorch').HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(model)} }).then((m) => m.predict(${JSON.stringify(photo)}, { topK: 3 })).then(([top]) => console.log(JSON.stringify(top[0])))`,
      ],
      { cwd: app, encoding: 'utf8' },
    );
    expect(JSON.parse(fromRequire)).toEqual(fromModule.best);
    const version = execFileSync(join(app, 'node_modules', '.bin', 'visiontorch'), ['--version'], { encoding: 'utf8' });
    expect(version).toContain(packageJson.version);
  }, 180_000);

  it('predicts the same as the checkout', async () => {
    const checkout = await HuggingFaceModelLoader.loadModel({ modelName: model });
    const [top] = await checkout.predict(photo, { topK: 3 });
    checkout.dispose();
    const installed = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { HuggingFaceModelLoader } from 'visiontorch'; const m = await HuggingFaceModelLoader.loadModel({ modelName: ${JSON.stringify(model)} }); console.log(JSON.stringify((await m.predict(${JSON.stringify(photo)}, { topK: 3 }))[0]));`,
      ],
      { cwd: join(work, 'app'), encoding: 'utf8' },
    );
    expect(JSON.parse(installed)).toEqual(JSON.parse(JSON.stringify(top)));
  });

  it('installs with --ignore-scripts when the prebuild matches', () => {
    const app = join(work, 'app-ignore-scripts');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
    const installed = npm(['install', '--prefer-offline', '--ignore-scripts', tarball], app);
    expect(installed.status, `${installed.stdout}${installed.stderr}`).toBe(0);
    const count = execFileSync(
      process.execPath,
      [
        '-e',
        "console.log(require('visiontorch').HuggingFaceModelLoader.getAvailableModels().length > 0 && require('node-gyp-build').path(require('path').dirname(require.resolve('visiontorch/package.json'))))",
      ],
      { cwd: app, encoding: 'utf8' },
    );
    expect(relative(app, count.trim())).toBe(join('node_modules', 'visiontorch', 'prebuilds', 'linux-x64', 'node.napi.glibc.node'));
  }, 120_000);
});

describe('the prebuilt addon', () => {
  it('is stripped and needs only the documented Debian runtime libraries', () => {
    const symbols = spawnSync('readelf', ['--section-headers', prebuild], { encoding: 'utf8' });
    expect(symbols.stdout).not.toContain('.debug_info');
    expect(symbols.stdout).not.toContain(' .symtab');
    const needed = [...spawnSync('readelf', ['--dynamic', prebuild], { encoding: 'utf8' }).stdout.matchAll(/Shared library: \[([^\]]+)\]/g)].map(
      (match) => match[1] as string,
    );
    // The C and C++ runtimes and zlib come with every Debian system.
    const base = /^(libc|libm|libstdc\+\+|libgcc_s|ld-linux-x86-64|libz|libpthread|libdl)\.so/;
    const undocumented = needed.filter((library) => !base.test(library) && packageJson.debian.libraries[library] === undefined);
    expect(undocumented).toEqual([]);
    for (const library of needed) {
      const owner = packageJson.debian.libraries[library];
      if (owner !== undefined) expect(packageJson.debian.runtime).toContain(owner);
    }
    // The README's apt-get line is the same list.
    const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
    expect(readme).toContain(`apt-get install ${packageJson.debian.runtime.join(' ')}`);
  });
});

describe('the install step without a prebuild', () => {
  it('says what to install to build from source instead of failing inside CMake', () => {
    // A package with neither a prebuild nor a build, whose project lacks the build tools.
    const dir = tempDir('visiontorch-install-');
    try {
      mkdirSync(join(dir, 'scripts'));
      mkdirSync(join(dir, 'node_modules'));
      cpSync(join(repoRoot, 'scripts', 'install-native.mjs'), join(dir, 'scripts', 'install-native.mjs'));
      cpSync(join(repoRoot, 'package.json'), join(dir, 'package.json'));
      symlinkSync(join(repoRoot, 'node_modules', 'node-gyp-build'), join(dir, 'node_modules', 'node-gyp-build'));
      const install = spawnSync(process.execPath, [join(dir, 'scripts', 'install-native.mjs')], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, VISIONTORCH_SKIP_INSTALL_BUILD: '' },
      });
      expect(install.status).toBe(1);
      expect(install.stderr).toContain('no prebuilt addon matches linux-x64');
      expect(install.stderr).toContain(`sudo apt-get install ${packageJson.debian.build.join(' ')}`);
      expect(install.stderr).toContain('npm install --save-dev cmake-js node-addon-api node-api-headers');
      expect(install.stderr).toContain('missing npm packages: cmake-js, node-addon-api, node-api-headers');
      expect(install.stderr).not.toMatch(/CMake Error/);
      expect(existsSync(join(dir, 'build'))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a failed source build by its first errors and its log, and leaves no build folder', () => {
    // The build tools are there, but CMake cannot find a package the project asks for.
    const dir = tempDir('visiontorch-install-');
    const workDirs = () => readdirSync(tmpdir()).filter((name) => name.startsWith('visiontorch-build-') && !name.endsWith('.log'));
    const before = new Set(workDirs());
    try {
      mkdirSync(join(dir, 'scripts'));
      mkdirSync(join(dir, 'node_modules'));
      cpSync(join(repoRoot, 'scripts', 'install-native.mjs'), join(dir, 'scripts', 'install-native.mjs'));
      cpSync(join(repoRoot, 'package.json'), join(dir, 'package.json'));
      for (const name of ['node-gyp-build', 'cmake-js', 'node-addon-api', 'node-api-headers']) {
        symlinkSync(join(repoRoot, 'node_modules', name), join(dir, 'node_modules', name));
      }
      writeFileSync(
        join(dir, 'CMakeLists.txt'),
        'cmake_minimum_required(VERSION 3.18)\nproject(visiontorch LANGUAGES CXX)\nfind_package(VisiontorchMissingDependency REQUIRED)\n',
      );
      const install = spawnSync(process.execPath, [join(dir, 'scripts', 'install-native.mjs')], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, VISIONTORCH_SKIP_INSTALL_BUILD: '' },
      });
      expect(install.status, install.stderr).toBe(1);
      expect(install.stderr).toContain('the source build failed');
      expect(install.stderr).toContain('VisiontorchMissingDependency');
      const log = /the whole log: (\S+)/.exec(install.stderr)?.[1];
      expect(log).toBeDefined();
      expect(readFileSync(log as string, 'utf8')).toContain('VisiontorchMissingDependency');
      rmSync(log as string, { force: true });
      expect(install.stderr).toContain(`sudo apt-get install ${packageJson.debian.build.join(' ')}`);
      expect(existsSync(join(dir, 'build'))).toBe(false);
      expect(workDirs().filter((name) => !before.has(name))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('when the addon cannot load', () => {
  it('names a missing shared library and the Debian package that holds it', () => {
    const reason =
      '/app/node_modules/visiontorch/prebuilds/linux-x64/node.napi.glibc.node: libtorch_cpu.so.1.13: cannot open shared object file: No such file or directory';
    const message = loadFailureMessage(reason, repoRoot);
    expect(message).toContain('libtorch_cpu.so.1.13 is missing');
    expect(message).toContain('sudo apt-get install libtorch1.13');
  });

  it('gives the whole runtime line for a library it does not know, from a real loader error', () => {
    // A real dlopen failure: an addon linked against a library that is then removed.
    const dir = tempDir('visiontorch-dlopen-');
    try {
      writeFileSync(join(dir, 'stub.c'), 'int visiontorch_stub(void) { return 1; }\n');
      writeFileSync(join(dir, 'addon.c'), 'int visiontorch_stub(void);\nint call_stub(void) { return visiontorch_stub(); }\n');
      execFileSync('cc', [
        '-shared',
        '-fPIC',
        '-o',
        join(dir, 'libvisiontorch_gone.so.1'),
        '-Wl,-soname,libvisiontorch_gone.so.1',
        join(dir, 'stub.c'),
      ]);
      execFileSync('cc', ['-shared', '-fPIC', '-o', join(dir, 'addon.node'), join(dir, 'addon.c'), join(dir, 'libvisiontorch_gone.so.1')]);
      rmSync(join(dir, 'libvisiontorch_gone.so.1'));
      let reason = '';
      try {
        process.dlopen({ exports: {} } as NodeJS.Module, join(dir, 'addon.node'));
      } catch (error) {
        reason = (error as Error).message;
      }
      const message = loadFailureMessage(reason, repoRoot);
      expect(message).toContain('libvisiontorch_gone.so.1 is missing');
      expect(message).toContain(`sudo apt-get install ${packageJson.debian.runtime.join(' ')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says how to build when no addon exists for the platform', () => {
    const message = loadFailureMessage('No native build was found for platform=linux arch=riscv64 runtime=node abi=115', repoRoot);
    expect(message).toContain('no native addon for this platform');
    expect(message).toContain('libtorch-dev');
    expect(message).toContain('npm rebuild visiontorch');
  });
});

function directoryBytes(path: string): number {
  const stats = statSync(path);
  if (!stats.isDirectory()) return stats.size;
  return readdirSync(path).reduce((sum, entry) => sum + directoryBytes(join(path, entry)), 0);
}
