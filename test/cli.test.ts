/**
 * The `visiontorch` command as a user runs it (dist/cli/main.js, built by `tsc -p tsconfig.json`):
 * exit codes, --json for every command and its errors, `init`, `train` without a job file, and an
 * interrupted `train` that reports the checkpoint it saved.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/index.js';
import { fashionDataset, fixture, repoRoot, tempDir } from './helpers.js';

const CLI = join(repoRoot, 'dist', 'cli', 'main.js');
const PHOTO = fixture('images', 'rocket.jpg');

function cli(args: string[], cwd = repoRoot) {
  return spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', timeout: 120_000 });
}

/** stdout as the one JSON document --json promises. */
function json(child: { stdout: string }): unknown {
  return JSON.parse(child.stdout);
}

describe('exit codes and --json', () => {
  it('usage and configuration errors exit with 2, with a JSON error document under --json', () => {
    const cases: [string[], RegExp][] = [
      [['predict', '--model', fixture('vit-tiny-random'), '--top-k', '0', PHOTO], /--top-k must be a positive integer/],
      [['models', '--type', 'detection'], /--type must be one of/],
      [['bench'], /bench needs --model/],
      [['train', 'no-such-job.yaml'], /config file not found: no-such-job\.yaml/],
      [['no-such-command'], /unknown command "no-such-command"/],
    ];
    for (const [args, message] of cases) {
      const plain = cli(args);
      expect(plain.status, `${args.join(' ')}: ${plain.stderr}`).toBe(2);
      expect(plain.stderr).toMatch(message);
      expect(plain.stdout).toBe('');
      const structured = cli([...args, '--json']);
      expect(structured.status, args.join(' ')).toBe(2);
      const { error } = json(structured) as { error: { code: string; message: string } };
      expect(error.message).toMatch(message);
      expect(error.code).toMatch(/^ERR_VISIONTORCH_(USAGE|CONFIG)$/);
    }
    const config = json(cli(['train', 'no-such-job.yaml', '--json'])) as { error: { code: string; issues: unknown[] } };
    expect(config.error.code).toBe('ERR_VISIONTORCH_CONFIG');
    expect(config.error.issues).toHaveLength(1);
  });

  it('a job that fails exits with 1, its error coded', () => {
    const missing = join(tempDir(), 'nothing-here');
    const child = cli(['predict', '--model', missing, PHOTO, '--json']);
    expect(child.status, child.stderr).toBe(1);
    expect(json(child)).toEqual({ error: { code: 'ERR_VISIONTORCH_MODEL_NOT_FOUND', message: expect.stringContaining('nothing-here') } });
    const plain = cli(['predict', '--model', missing, PHOTO]);
    expect(plain.status).toBe(1);
    expect(plain.stderr).toMatch(/^visiontorch predict: model ".*nothing-here" was not found/);
  });

  it('models, bench and predict print one JSON document', () => {
    const models = json(cli(['models', '--json'])) as { architecture: string }[];
    expect(models.map((m) => m.architecture)).toContain('ViTForImageClassification');
    const bench = json(cli(['bench', '--model', fixture('vit-tiny-random'), '--iterations', '1', '--json'])) as Record<string, unknown>;
    expect(bench).toMatchObject({ architecture: 'ViTForImageClassification', batch: 1, iterations: 1 });
    const [prediction] = json(cli(['predict', '--model', fixture('vit-tiny-random'), '--top-k', '1', PHOTO, '--json'])) as {
      predictions: unknown[];
    }[];
    expect(prediction?.predictions).toHaveLength(1);
  });

  it('--help lists every command, --json and the exit codes', () => {
    const help = cli(['--help']);
    expect(help.status).toBe(0);
    for (const command of ['train', 'predict', 'models', 'bench', 'init']) {
      expect(help.stdout).toMatch(new RegExp(`^ {2}visiontorch ${command} `, 'm'));
      expect(cli([command, '--help']).stdout, command).toContain('[--json]');
    }
    expect(help.stdout).toMatch(/exit codes: 0 done; 1 the job failed; 2 a usage or configuration error/);
    expect(help.stdout).toMatch(/130 \(SIGINT, Ctrl-C\) or 143 \(SIGTERM\)/);
    expect(cli(['init', '--help']).stdout).toMatch(/^usage:\n {2}visiontorch init \[path\] \[--force\] \[--json\]/);
  });
});

describe('init, and train without a job file', () => {
  it('train in a project without config/model_config.yaml says how to start, with exit code 2', () => {
    const project = tempDir();
    const child = cli(['train'], project);
    expect(child.status).toBe(2);
    expect(child.stderr).toMatch(/config\/model_config\.yaml does not exist/);
    expect(child.stderr).toMatch(/visiontorch init/);
  });

  it('writes a commented job file that loadConfig reads, and refuses to overwrite it without --force', async () => {
    const project = tempDir();
    const first = cli(['init'], project);
    expect(first.status, first.stderr).toBe(0);
    const path = join(project, 'config', 'model_config.yaml');
    const text = readFileSync(path, 'utf8');
    const job = await loadConfig(path);
    expect(job.model).toMatchObject({ modelName: 'google/vit-base-patch16-224', pretrained: true });
    expect(job.data).toMatchObject({ format: 'imagefolder', root: join(project, 'data', 'train') });
    // Every key is explained: a comment on its line or on the line above.
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      if (/^\s*[a-z_]+:\s*\S/.test(line) && !line.includes('#')) expect(lines[i - 1], line).toMatch(/^\s*#/);
    });
    // The keys shown commented out are valid too.
    const uncommented = join(project, 'all-keys.yaml');
    writeFileSync(uncommented, text.replace(/^(\s*)# ([a-z_]+: )/gm, '$1$2').replace(/^(\s*)warmup_ratio: .*$/m, '$1warmup_steps: 0'));
    await expect(loadConfig(uncommented)).resolves.toMatchObject({ training: { resumeFrom: 'runs/latest' } });

    writeFileSync(path, `${text}# my edits\n`);
    const again = cli(['init'], project);
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/config\/model_config\.yaml already exists; give --force to replace it/);
    expect(readFileSync(path, 'utf8')).toBe(`${text}# my edits\n`);
    const forced = json(cli(['init', '--force', '--json'], project));
    expect(forced).toEqual({ path, replaced: true });
    expect(readFileSync(path, 'utf8')).toBe(text);
    // No temporary file left beside it.
    expect(
      spawnSync('ls', ['-a', join(project, 'config')], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter(Boolean),
    ).toEqual(['.', '..', 'model_config.yaml']);
  });
});

/** A small job: the repository's small ViT from random initialisation on a slice of Fashion-MNIST, long enough to interrupt. */
function tinyJob(outputDir: string, extra = ''): string {
  const fashion = fashionDataset(256);
  const path = join(tempDir(), 'job.yaml');
  writeFileSync(
    path,
    `model:
  name: ${join(repoRoot, 'config', 'models', 'vit-fashion-mnist')}
  pretrained: false
  num_classes: 10
training:
  epochs: 200
  batch_size: 8
  learning_rate: 1.0e-3
  log_every: 1
  num_workers: 1
  output_dir: ${outputDir}
${extra}data:
  format: idx
  images: ${fashion.images}
  labels: ${fashion.labels}
  validation_images: ${fashion.validationImages}
  validation_labels: ${fashion.validationLabels}
  limit: 256
`,
  );
  return path;
}

/** Runs `visiontorch train` and sends `signal` once `ready(stderr, outputDir)` holds; resolves when it exits. */
function interruptTraining(
  args: string[],
  signal: NodeJS.Signals,
  ready: (stderr: string) => boolean,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [CLI, 'train', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    const check = (): void => {
      if (!sent && ready(stderr)) {
        sent = true;
        child.kill(signal);
      }
    };
    child.stdout!.on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr!.on('data', (chunk) => {
      stderr += chunk;
      check();
    });
    const poll = setInterval(check, 100);
    const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearInterval(poll);
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe.skipIf(!existsSync(fashionDataset(0).images))('train', () => {
  it('--json at the end of a finished run: status, the final model and the last checkpoint', () => {
    const outputDir = join(tempDir(), 'run');
    const child = cli(['train', tinyJob(outputDir, '  max_steps: 2\n'), '--json']);
    expect(child.status, child.stderr).toBe(0);
    const result = json(child) as { status: string; model: string; checkpoint: { path: string; step: number }; metrics: Record<string, number> };
    expect(result).toMatchObject({ status: 'completed', model: outputDir, checkpoint: { path: join(outputDir, 'checkpoint-2'), step: 2 } });
    expect(result.metrics.eval_accuracy).toBeTypeOf('number');
    expect(existsSync(join(outputDir, 'model.safetensors'))).toBe(true);
  }, 240_000);

  it('SIGINT after the first progress line: exit 130, the checkpoint and its step reported, no final model claimed', async () => {
    const outputDir = join(tempDir(), 'run');
    const run = await interruptTraining([tinyJob(outputDir)], 'SIGINT', (stderr) => /^step \d+\/\d+/m.test(stderr));
    expect(run.code, run.stderr).toBe(130);
    const checkpoint = /^checkpoint: {2}(\S+) \(step (\d+)\)$/m.exec(run.stdout);
    expect(checkpoint, run.stdout).not.toBeNull();
    const [, path, step] = checkpoint!;
    expect(path).toBe(join(outputDir, `checkpoint-${step}`));
    expect(existsSync(join(path!, 'model.safetensors'))).toBe(true);
    expect(run.stdout).toMatch(/^model: {7}none: the run was interrupted at step \d+/m);
    expect(run.stdout).toContain(`resume with: resume_from: ${path}`);
    // What it says is true: the final model was never written.
    expect(existsSync(join(outputDir, 'model.safetensors'))).toBe(false);
  }, 240_000);

  it('SIGTERM with --json: exit 143 and one document with status, checkpoint and no model', async () => {
    const outputDir = join(tempDir(), 'run');
    const metrics = join(outputDir, 'metrics.jsonl');
    // --json prints no progress: the run's record shows that it has started stepping.
    const run = await interruptTraining(
      [tinyJob(outputDir), '--json'],
      'SIGTERM',
      () => existsSync(metrics) && readFileSync(metrics, 'utf8').includes('"step"'),
    );
    expect(run.code, run.stderr).toBe(143);
    const result = JSON.parse(run.stdout) as { status: string; model: string | null; checkpoint: { path: string; step: number }; globalStep: number };
    expect(result.status).toBe('interrupted');
    expect(result.model).toBeNull();
    expect(result.checkpoint.step).toBe(result.globalStep);
    expect(result.checkpoint.path).toBe(join(outputDir, `checkpoint-${result.checkpoint.step}`));
    expect(existsSync(result.checkpoint.path)).toBe(true);
    expect(existsSync(join(outputDir, 'model.safetensors'))).toBe(false);
  }, 240_000);
});
