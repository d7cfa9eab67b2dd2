// Runs every test: the code checks (Biome's lint and format, tsc over the tests and the
// benchmarks, clang-format over native/), a short fuzzing run of each libFuzzer target, the native
// core's GoogleTest suite, then vitest. Ends with one line, "N passed, N failed", counting them all
// (also written to build/test-summary.txt for CI); each code check and each fuzz target counts as
// one test.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(root, 'build');
mkdirSync(buildDir, { recursive: true });

function run(command, args) {
  return spawnSync(command, args, { cwd: root, stdio: 'inherit' }).status ?? 1;
}

let passed = 0;
let failed = 0;
let skipped = 0;
// Seconds each phase took, printed at the end (where CI time goes).
const phaseSeconds = [];
let phaseStarted = Date.now();
function endPhase(name) {
  phaseSeconds.push(`${name} ${Math.round((Date.now() - phaseStarted) / 1000)} s`);
  phaseStarted = Date.now();
}

// Code checks: one test each; their output is shown only when they fail.
const checks = [
  // Lint rules and import order (the formatter is the next check).
  ['biome lint (rules, import order)', ['--no-install', 'biome', 'check', '--formatter-enabled=false', '--error-on-warnings']],
  ['biome format', ['--no-install', 'biome', 'format']],
  ['tsc -p tsconfig.test.json', ['--no-install', 'tsc', '-p', 'tsconfig.test.json', '--noEmit']],
  // The benchmarks against the built package's declarations (dist/, which setup builds first).
  ['tsc -p tsconfig.bench.json', ['--no-install', 'tsc', '-p', 'tsconfig.bench.json']],
];
// The C++ sources git knows of (a clean checkout holds no others), against .clang-format.
const nativeSources = spawnSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', 'native'], { cwd: root, encoding: 'utf8' })
  .stdout.split('\n')
  .filter((file) => /\.(h|cpp|cc)$/.test(file) && existsSync(join(root, file)));
checks.push(['clang-format native/', ['clang-format', '--dry-run', '--Werror', '--style=file', ...nativeSources], 'direct']);
for (const [name, args, how] of checks) {
  const [command, commandArgs] = how === 'direct' ? [args[0], args.slice(1)] : ['npx', args];
  const check = spawnSync(command, commandArgs, { cwd: root, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  if (check.status === 0) {
    passed++;
    console.log(`check passed: ${name}`);
  } else {
    failed++;
    process.stdout.write(`${check.stdout ?? ''}${check.stderr ?? ''}${check.error ? `${check.error.message}\n` : ''}`);
    console.log(`check FAILED: ${name} (${how === 'direct' ? '' : 'npx '}${args.slice(0, 6).join(' ')}${args.length > 6 ? ' ...' : ''})`);
  }
}
endPhase('code checks');

// Fuzzing: a short libFuzzer run of each target in native/core/fuzz (scripts/fuzz.sh builds them
// with clang into build-fuzz/), two at a time. Each target is one test, passed when its run ends
// without a crash, leak, timeout or out-of-memory; its log is shown only when it fails.
const fuzzSeconds = process.env.VISIONTORCH_FUZZ_SECONDS ?? '10';
const fuzz = spawnSync('bash', ['scripts/fuzz.sh', '--seconds', fuzzSeconds, '--jobs', '2'], { cwd: root, encoding: 'utf8' });
const fuzzResults = join(root, 'build-fuzz', 'results.tsv');
const fuzzRows = existsSync(fuzzResults)
  ? readFileSync(fuzzResults, 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => line.split('\t'))
  : [];
for (const [target, result, seconds, runs, coverage, , crashes, artifacts] of fuzzRows) {
  if (result === 'ok') {
    passed++;
    console.log(`fuzz passed: ${target} (${seconds} s, ${runs} inputs, coverage ${coverage})`);
  } else {
    failed++;
    const log = join(root, 'build-fuzz', `${target}.log`);
    if (existsSync(log)) process.stdout.write(readFileSync(log, 'utf8').split('\n').slice(-60).join('\n'));
    const what =
      crashes === '0' ? 'the run failed, log above' : `${crashes} finding(s): ${artifacts}; replay one with build-fuzz/${target}_fuzzer <file>`;
    console.log(`fuzz FAILED: ${target} (${what})`);
  }
}
if (fuzzRows.length === 0 || (fuzz.status !== 0 && fuzzRows.every(([, result]) => result === 'ok'))) {
  failed++; // the build, or the script itself, failed
  process.stdout.write(`${fuzz.stdout ?? ''}${fuzz.stderr ?? ''}${fuzz.error ? `${fuzz.error.message}\n` : ''}`);
  console.log('fuzz FAILED: scripts/fuzz.sh did not run the targets (output above)');
}
endPhase('fuzzing (build and runs)');

// The core's GoogleTest suite, in two shards run side by side (GTEST_TOTAL_SHARDS), each one
// process. ctest runs a process per test (`ctest --test-dir build` still works), and starting
// libtorch with its hundreds of shared libraries took most of that time: 264 tests took minutes
// under ctest, 25 s here. Each test case is one test; a shard that crashes or hangs counts as a
// failure of its own (its remaining cases never ran). A failing case's output is shown.
const coreTests = join(buildDir, 'native', 'core', 'visiontorch_core_tests');
const coreShards = 2;
// The environment and folder ctest gives the tests (native/core/CMakeLists.txt).
const coreTestDir = join(buildDir, 'native', 'core');
const coreShardRuns = Array.from({ length: coreShards }, (_, index) => {
  const xml = join(buildDir, `core-tests-${index}.xml`);
  const log = join(buildDir, `core-tests-${index}.log`);
  rmSync(xml, { force: true });
  return new Promise((resolve) => {
    const child = spawn(coreTests, [`--gtest_output=xml:${xml}`], {
      cwd: coreTestDir,
      env: {
        ...process.env,
        GTEST_TOTAL_SHARDS: String(coreShards),
        GTEST_SHARD_INDEX: String(index),
        VISIONTORCH_TEST_TMP: join(coreTestDir, 'test-tmp'),
      },
      stdio: ['ignore', openSync(log, 'w'), 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    // Far above the suite's time; a hang must not hold CI until its own limit.
    const timer = setTimeout(() => child.kill('SIGKILL'), 900_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      resolve({ index, xml, log, status: null, signal: null, error, stderr });
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ index, xml, log, status, signal, stderr });
    });
  });
});
let coreStatus = 0;
for (const shard of await Promise.all(coreShardRuns)) {
  const output = existsSync(shard.log) ? readFileSync(shard.log, 'utf8') : '';
  if (!existsSync(shard.xml)) {
    failed++;
    coreStatus = 1;
    process.stdout.write(`${output.split('\n').slice(-60).join('\n')}${shard.stderr}`);
    const why = shard.error ? shard.error.message : shard.signal ? `killed by ${shard.signal}` : `exit status ${shard.status}`;
    console.log(`core tests FAILED: shard ${shard.index + 1} of ${coreShards} did not finish (${why}); output above`);
    continue;
  }
  for (const [, attributes, body] of readFileSync(shard.xml, 'utf8').matchAll(/<testcase\b([^>]*?)(?:\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const name = `${/classname="([^"]*)"/.exec(attributes)?.[1]}.${/name="([^"]*)"/.exec(attributes)?.[1]}`;
    if (/result="skipped"/.test(attributes) || /<skipped/.test(body ?? '')) {
      skipped++;
    } else if (/<failure/.test(body ?? '')) {
      failed++;
      coreStatus = 1;
      const started = output.indexOf(`[ RUN      ] ${name}`);
      const ended = output.indexOf(`[  FAILED  ] ${name}`, started);
      process.stdout.write(started >= 0 && ended > started ? `${output.slice(started, ended)}\n` : `${body}\n`);
      console.log(`core test FAILED: ${name}`);
    } else {
      passed++;
    }
  }
  if (shard.status !== 0 && coreStatus === 0) {
    failed++;
    coreStatus = 1;
    console.log(`core tests FAILED: shard ${shard.index + 1} exited with status ${shard.status} (${shard.log})`);
  }
}
console.log(`core tests: shards of build/native/core/visiontorch_core_tests done (logs in build/core-tests-*.log)`);
endPhase('core tests');

// vitest: the JSON reporter's totals.
const vitestJson = join(buildDir, 'vitest-results.json');
const vitestStatus = run('npx', ['--no-install', 'vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${vitestJson}`]);
if (existsSync(vitestJson)) {
  const report = JSON.parse(readFileSync(vitestJson, 'utf8'));
  passed += report.numPassedTests;
  failed += report.numFailedTests;
  skipped += report.numPendingTests + (report.numTodoTests ?? 0);
  // A file that fails to load has no tests to count: count the file.
  for (const file of report.testResults ?? []) {
    if (file.status === 'failed' && (file.assertionResults ?? []).length === 0) failed++;
  }
} else if (vitestStatus !== 0) {
  failed++;
}
endPhase('vitest');

const summary = `${passed} passed, ${failed} failed`;
writeFileSync(join(buildDir, 'test-summary.txt'), `${summary}\n`);
if (skipped > 0) console.log(`(${skipped} skipped, not counted as passed)`);
console.log(`time: ${phaseSeconds.join(', ')}`);
console.log(summary);
process.exit(failed > 0 || coreStatus !== 0 || vitestStatus !== 0 ? 1 : 0);
