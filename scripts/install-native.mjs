// npm's install step. With a prebuilt addon for this platform (prebuilds/, found by
// node-gyp-build) it only checks that the addon loads, in well under a second, and warns with the
// apt-get line when a shared library is missing. Without one it builds from source with cmake-js
// in a temporary folder and keeps only the addon (build/Release/visiontorch.node), so no object
// files or precompiled headers stay in node_modules. When that build cannot run or fails, it says
// what to install instead of showing CMake's output (kept in a log file).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The repository's own setup (scripts/setup.sh) builds the addon itself.
if (process.env.VISIONTORCH_SKIP_INSTALL_BUILD === '1') process.exit(0);

const require = createRequire(import.meta.url);
const { debian } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const say = (message) => console.error(`visiontorch: ${message}`);
const aptLine = (packages) => `sudo apt-get install ${packages.join(' ')}`;

let found;
try {
  found = require('node-gyp-build').path(root);
} catch {
  // No prebuild for this platform and no earlier build.
}

if (found !== undefined) {
  const check = spawnSync(process.execPath, ['-e', 'require(process.argv[1])', found], { encoding: 'utf8' });
  if (check.status !== 0) {
    const reason = check.stderr.split('\n').find((line) => line.includes('.so')) ?? check.stderr.trim().split('\n')[0];
    say(`the prebuilt addon is installed but does not load yet: ${reason}`);
    say(`it needs Debian 12's runtime libraries: ${aptLine(debian.runtime)}`);
  }
  process.exit(0);
}

const buildTools = ['cmake-js', 'node-addon-api', 'node-api-headers'];
const missingTools = buildTools.filter((name) => {
  try {
    require.resolve(`${name}/package.json`, { paths: [root] });
    return false;
  } catch {
    return true;
  }
});
const missingPackages = debian.build.filter((name) => {
  const query = spawnSync('dpkg-query', ['--status', name], { encoding: 'utf8' });
  // Without dpkg (not Debian) CMake's own checks decide.
  return query.error === undefined && !query.stdout.includes('Status: install ok installed');
});
const howToBuild = () => {
  say(`no prebuilt addon matches ${process.platform}-${process.arch}; building from source needs:`);
  say(`  Debian packages: ${aptLine(debian.build)}`);
  say(`  npm packages:    npm install --save-dev ${buildTools.join(' ')}`);
  say('then run "npm rebuild visiontorch".');
};
if (missingTools.length > 0 || missingPackages.length > 0) {
  howToBuild();
  if (missingTools.length > 0) say(`missing npm packages: ${missingTools.join(', ')}`);
  if (missingPackages.length > 0) say(`missing Debian packages: ${missingPackages.join(', ')}`);
  process.exit(1);
}

say('no prebuilt addon for this platform: building from source (a few minutes)');
const workDir = mkdtempSync(join(tmpdir(), 'visiontorch-build-'));
const log = join(tmpdir(), `visiontorch-build-${process.pid}.log`);
const cmakeJs = join(dirname(require.resolve('cmake-js/package.json', { paths: [root] })), 'bin', 'cmake-js');
const build = spawnSync(
  process.execPath,
  [cmakeJs, 'build', '--out', workDir, '--CDVISIONTORCH_BUILD_TESTS=OFF', '--parallel', String(availableParallelism())],
  { cwd: root, encoding: 'utf8', maxBuffer: 256 * 2 ** 20 },
);
// process.exit() skips finally blocks: the build folder is removed before any exit.
const built = join(workDir, 'Release', 'visiontorch.node');
if (build.status === 0) {
  const release = join(root, 'build', 'Release');
  mkdirSync(release, { recursive: true });
  const staged = join(release, `.visiontorch.node.${process.pid}.tmp`);
  copyFileSync(built, staged);
  spawnSync('strip', ['--strip-unneeded', staged]);
  renameSync(staged, join(release, 'visiontorch.node'));
  rmSync(workDir, { recursive: true, force: true });
  say('built build/Release/visiontorch.node');
} else {
  rmSync(workDir, { recursive: true, force: true });
  writeFileSync(log, `${build.stdout ?? ''}${build.stderr ?? ''}`);
  say('the source build failed. The first errors:');
  for (const line of firstErrors(`${build.stdout ?? ''}\n${build.stderr ?? ''}`)) say(`  ${line}`);
  say(`the whole log: ${log}`);
  howToBuild();
  process.exit(1);
}

/** CMake's error paragraphs and the compiler's error lines, at most 12 lines: what to act on. */
function firstErrors(output) {
  const lines = output.split('\n');
  const picked = [];
  for (let i = 0; i < lines.length && picked.length < 12; i++) {
    if (/^CMake Error/.test(lines[i])) {
      // CMake's message is the paragraph below its heading.
      for (let j = i; j < lines.length && lines[j].trim() !== '' && picked.length < 12; j++) picked.push(lines[j].trim());
    } else if (/:\d+:\d+: (fatal )?error:|Could NOT find/.test(lines[i])) {
      picked.push(lines[i].trim());
    }
  }
  return picked.length > 0 ? picked : lines.filter((line) => /error/i.test(line)).slice(0, 12);
}
