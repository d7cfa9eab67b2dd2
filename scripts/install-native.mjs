// npm's install step for users of the package: use a prebuilt addon when one matches this
// platform, else build from source with cmake-js (needs libtorch-dev, see README).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (process.env.VISIONTORCH_SKIP_INSTALL_BUILD === '1') process.exit(0);

const require = createRequire(import.meta.url);
try {
  require('node-gyp-build').path(root);
  process.exit(0);
} catch {
  // No prebuild and no earlier build: compile.
}
const result = spawnSync('npx', ['--no-install', 'cmake-js', 'build', '--CDVISIONTORCH_BUILD_TESTS=OFF'], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
