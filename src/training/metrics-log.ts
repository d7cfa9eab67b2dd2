import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCode, withCode } from '../errors.js';
import type { TrainerEvent } from './events.js';

const KINDS = new Set<string>(['step', 'eval', 'save']);

// JSON has no NaN or Infinity (JSON.stringify writes null); a diverging loss is exactly what a
// log must keep, so non-finite numbers travel as the strings "NaN", "Infinity", "-Infinity".
const replacer = (_key: string, value: unknown) => (typeof value === 'number' && !Number.isFinite(value) ? String(value) : value);
const reviver = (key: string, value: unknown) =>
  key !== 'path' && (value === 'NaN' || value === 'Infinity' || value === '-Infinity') ? Number(value) : value;

/**
 * Appends one JSON line per TrainerEvent to `<outputDir>/metrics.jsonl`. Writes are synchronous:
 * events stay in order without a queue, and a ~200-byte append costs microseconds next to a step.
 * A resumed run appends to the same file.
 */
export class MetricsLog {
  readonly path: string;
  private fd: number | undefined;

  constructor(outputDir: string, fileName = 'metrics.jsonl') {
    this.path = join(outputDir, fileName);
    try {
      mkdirSync(outputDir, { recursive: true });
      // O_APPEND: each write lands at the end even if another process appends too.
      this.fd = openSync(this.path, 'a');
    } catch (error) {
      // A file where the directory should be, no permission, no space: named before the run starts.
      throw withCode(
        new Error(`cannot write the run's record ${this.path} (outputDir ${outputDir}): ${(error as Error).message}`, { cause: error }),
        ErrorCode.IO,
      );
    }
  }

  append(event: TrainerEvent): void {
    if (this.fd === undefined) throw withCode(new Error(`MetricsLog ${this.path} is closed`), ErrorCode.IO);
    // One write per line, so a reader never sees half a line unless the process dies mid-write.
    const line = Buffer.from(`${JSON.stringify(event, replacer)}\n`);
    let done = 0;
    while (done < line.length) done += writeSync(this.fd, line, done);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * The events of a metrics.jsonl file, in file order. A last line that does not parse is skipped
 * (the writer died mid-line); a bad line elsewhere is an error. Unknown event kinds are skipped
 * so that older readers keep working on newer logs.
 */
export async function readMetricsLog(path: string): Promise<TrainerEvent[]> {
  const lines = (await readFile(path, 'utf8')).split('\n');
  const events: TrainerEvent[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line, reviver);
    } catch (error) {
      if (i === lines.length - 1) return; // no trailing newline: a truncated final write
      throw withCode(new Error(`${path}:${i + 1}: not a JSON line (${(error as Error).message})`), ErrorCode.IO);
    }
    if (typeof value === 'object' && value !== null && KINDS.has((value as { kind?: unknown }).kind as string)) {
      events.push(value as TrainerEvent);
    }
  });
  return events;
}
