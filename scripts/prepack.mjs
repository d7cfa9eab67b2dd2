// npm's prepack step (npm pack, npm publish): a fresh dist/ built for publishing, so the tarball
// never carries stale files, source maps without their sources or build info. The prebuilt addon
// is made separately (npm run build:prebuild) because building it takes minutes; a package packed
// without one builds from source when installed.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
rmSync(join(root, 'dist'), { recursive: true, force: true });
const tsc = spawnSync('npx', ['--no-install', 'tsc', '-p', 'tsconfig.publish.json'], { cwd: root, stdio: 'inherit' });
if (tsc.status !== 0) {
  console.error('visiontorch prepack: the TypeScript build failed (output above)');
  process.exit(1);
}
const prebuilds = join(root, 'prebuilds');
const platforms = existsSync(prebuilds) ? readdirSync(prebuilds) : [];
console.error(
  platforms.length > 0
    ? `visiontorch prepack: prebuilt addons for ${platforms.join(', ')}`
    : 'visiontorch prepack: no prebuilt addon (npm run build:prebuild makes one); installs will build from source',
);
