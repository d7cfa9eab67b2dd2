// Makes the prebuilt addon the package ships: prebuilds/<platform>-<arch>/node.napi.<libc>.node,
// the name node-gyp-build looks for (N-API 8, so one file serves every Node >= 20). The addon is
// built with cmake-js in a temporary folder (no tests, Release), stripped, checked by loading it in
// a fresh Node with PREBUILDS_ONLY=1, and only then moved into place.
//
//   npm run build:prebuild              build from source, then install the prebuild
//   node scripts/prebuild.mjs --from-build  use the addon `npm run build:native` already made
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (message) => console.log(`visiontorch prebuild: ${message}`);
const fail = (message) => {
  console.error(`visiontorch prebuild: ${message}`);
  process.exit(1);
};

const options = process.argv.slice(2);
for (const option of options) {
  if (option !== '--from-build') fail(`unknown option ${option} (the one option is --from-build)`);
}
if (process.platform !== 'linux') fail(`prebuilds are made on Linux only (this is ${process.platform})`);

// node-gyp-build's tuple and tags: the libc tag keeps a glibc build away from musl systems.
const libc = existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
const targetDir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const target = join(targetDir, `node.napi.${libc}.node`);

const workDir = mkdtempSync(join(tmpdir(), 'visiontorch-prebuild-'));
try {
  let built = join(root, 'build', 'Release', 'visiontorch.node');
  if (options.includes('--from-build')) {
    if (!existsSync(built)) fail(`${relative(root, built)} does not exist: run "npm run build:native" first, or drop --from-build`);
  } else {
    say('building the addon (cmake-js, Release, without the core tests)');
    const build = spawnSync(
      'npx',
      ['--no-install', 'cmake-js', 'build', '--out', join(workDir, 'build'), '--CDVISIONTORCH_BUILD_TESTS=OFF', '--parallel', '2'],
      { cwd: root, stdio: 'inherit' },
    );
    if (build.status !== 0) fail('the build failed (output above)');
    built = join(workDir, 'build', 'Release', 'visiontorch.node');
  }

  // Stripped in the work folder, then checked there, so a bad file never reaches prebuilds/.
  const candidate = join(workDir, 'node.napi.node');
  copyFileSync(built, candidate);
  const strip = spawnSync('strip', ['--strip-unneeded', candidate], { encoding: 'utf8' });
  if (strip.status !== 0) fail(`strip failed: ${strip.stderr || strip.error?.message}`);

  const check = spawnSync(
    process.execPath,
    ['-e', 'const b = require(process.argv[1]); if (b.architectures().length === 0) process.exit(3); b.prepareExit();', candidate],
    { encoding: 'utf8' },
  );
  if (check.status !== 0) fail(`the stripped addon does not load: ${check.stderr.trim() || `exit ${check.status}`}`);

  mkdirSync(targetDir, { recursive: true });
  const staged = join(targetDir, `.node.napi.${libc}.node.${process.pid}.tmp`);
  copyFileSync(candidate, staged);
  renameSync(staged, target);
  say(`${relative(root, target)} (${(statSync(target).size / 2 ** 20).toFixed(1)} MiB, stripped)`);
} finally {
  rmSync(workDir, { recursive: true, force: true });
}
