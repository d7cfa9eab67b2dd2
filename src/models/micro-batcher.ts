import { ErrorCode, invalidArgument, withCode } from '../errors.js';
/**
 * Micro-batching: requests that arrive close together and can share a native call (the same key)
 * are gathered into one batch, run as one call over their concatenated inputs, and each request
 * gets back exactly its own slice of the outputs.
 */

/** How concurrent `predict` calls are gathered into batches (see VisionModel.setBatching). */
export interface BatchingOptions {
  /** Most images in one batch (default 16). A call with more images than this runs alone, as one batch. */
  maxBatchSize?: number;
  /** Longest a batch waits for more requests, in milliseconds from its first request (default 5; 0: the calls of the same tick only). */
  maxWaitMs?: number;
}

/** BatchingOptions with the defaults applied. */
export type BatchingSettings = Readonly<Required<BatchingOptions>>;

/** What batching has done since the model was loaded. */
export interface BatchingStats {
  /** predict calls that went through batching. */
  requests: number;
  /** Images in those calls. */
  images: number;
  /** Batches started: one native call each, unless it failed and was split. */
  batches: number;
  /** Most images in one batch. */
  largestBatch: number;
  /** Batches that failed and were split in halves, retried apart, until the caller at fault was alone. */
  splitBatches: number;
  /** Requests now waiting for their batch to start. */
  pending: number;
}

export const DEFAULT_BATCHING: BatchingSettings = Object.freeze({ maxBatchSize: 16, maxWaitMs: 5 });

// setTimeout fires at once for longer delays (with a warning), so a longer wait cannot be honoured.
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/**
 * Checks `value` (true: the defaults; false: off) and fills in the defaults. `prefix` starts each
 * message (`loadModel: batching.`, `setBatching: `) so that it names the option at fault.
 */
export function batchingSettings(value: BatchingOptions | boolean, prefix: string): BatchingSettings | false {
  if (value === false) return false;
  if (value === true) return DEFAULT_BATCHING;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    // The prefix ends as it leads into an option's name (`batching.`, `setBatching: `); here it names the whole value.
    throw invalidArgument(
      TypeError,
      `${prefix.replace(/(\.|: )$/, '')}: expected true, false or { maxBatchSize?, maxWaitMs? }, got ${describe(value)}`,
    );
  }
  for (const key of Object.keys(value)) {
    if (key !== 'maxBatchSize' && key !== 'maxWaitMs') {
      throw invalidArgument(TypeError, `${prefix}${key}: unknown batching option (expected maxBatchSize, maxWaitMs)`);
    }
  }
  const { maxBatchSize = DEFAULT_BATCHING.maxBatchSize, maxWaitMs = DEFAULT_BATCHING.maxWaitMs } = value;
  if (typeof maxBatchSize !== 'number' || !Number.isSafeInteger(maxBatchSize) || maxBatchSize < 1) {
    throw invalidArgument(RangeError, `${prefix}maxBatchSize must be a positive integer, got ${describe(maxBatchSize)}`);
  }
  if (typeof maxWaitMs !== 'number' || !(maxWaitMs >= 0 && maxWaitMs <= LONGEST_TIMER_MS)) {
    throw invalidArgument(
      RangeError,
      `${prefix}maxWaitMs must be a number of milliseconds from 0 to ${LONGEST_TIMER_MS}, got ${describe(maxWaitMs)}`,
    );
  }
  return Object.freeze({ maxBatchSize, maxWaitMs });
}

function describe(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/** Runs one native call over the inputs of a batch; one output per input, in order. */
export type BatchRunner<Input, Output> = (inputs: Input[]) => Promise<Output[]>;

interface Request<Input, Output> {
  inputs: Input[];
  resolve: (outputs: Output[]) => void;
  reject: (error: unknown) => void;
}

interface Batch<Input, Output> {
  /** Requests with the same key share batches; undefined: this request shares with none. */
  key: string | undefined;
  run: BatchRunner<Input, Output>;
  requests: Request<Input, Output>[];
  size: number;
  /** Full, or its wait is over: it starts as soon as the model's previous batch has finished. */
  due: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/**
 * The batches of one model. One batch runs at a time: the addon computes on a single thread, so
 * starting a second would only queue it there, whereas a batch kept here while another runs can
 * still take requests (up to maxBatchSize) and run fuller.
 */
export class MicroBatcher<Input, Output> {
  #settings: BatchingSettings;
  /** Batches not started yet, oldest first. */
  #waiting: Batch<Input, Output>[] = [];
  #running = false;
  #closedWith: Error | undefined;
  #stats = { requests: 0, images: 0, batches: 0, largestBatch: 0, splitBatches: 0 };

  constructor(settings: BatchingSettings) {
    this.#settings = settings;
  }

  get stats(): BatchingStats {
    const pending = this.#waiting.reduce((count, batch) => count + batch.requests.length, 0);
    return { ...this.#stats, pending };
  }

  /**
   * Queues `inputs` for a batch with the other requests of `key` (undefined: a batch of its own,
   * started without waiting) and resolves with their outputs, in order. Every request of one key
   * must be answered alike by its `run`: the batch uses the run of its first request.
   */
  submit(key: string | undefined, inputs: Input[], run: BatchRunner<Input, Output>): Promise<Output[]> {
    if (this.#closedWith) return Promise.reject(this.#closedWith);
    return new Promise<Output[]>((resolve, reject) => {
      this.#stats.requests += 1;
      this.#stats.images += inputs.length;
      const { maxBatchSize } = this.#settings;
      let batch = key === undefined ? undefined : this.#newestWaiting(key);
      if (batch && batch.size + inputs.length > maxBatchSize) {
        this.#markDue(batch); // as full as it gets for this request
        batch = undefined;
      }
      if (!batch) {
        batch = { key, run, requests: [], size: 0, due: false, timer: undefined };
        this.#waiting.push(batch);
        const started = batch;
        if (key !== undefined && inputs.length < maxBatchSize) {
          started.timer = setTimeout(() => {
            started.timer = undefined;
            this.#markDue(started);
            this.#pump();
          }, this.#settings.maxWaitMs);
        }
      }
      batch.requests.push({ inputs, resolve, reject });
      batch.size += inputs.length;
      if (key === undefined || batch.size >= maxBatchSize) this.#markDue(batch);
      this.#pump();
    });
  }

  /** New settings for the batches formed from now on; those waiting start as they are. */
  configure(settings: BatchingSettings): void {
    this.flush();
    this.#settings = settings;
  }

  /** Starts every waiting batch without waiting for more requests (one after another). */
  flush(): void {
    for (const batch of this.#waiting) this.#markDue(batch);
    this.#pump();
  }

  /** Rejects every request not started yet with `error`, and any later one. A batch already running finishes. */
  close(error: Error): void {
    this.#closedWith = error;
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const batch of waiting) {
      if (batch.timer) clearTimeout(batch.timer);
      for (const request of batch.requests) request.reject(error);
    }
  }

  #newestWaiting(key: string): Batch<Input, Output> | undefined {
    for (let i = this.#waiting.length - 1; i >= 0; i--) {
      const batch = this.#waiting[i];
      if (batch?.key === key) return batch;
    }
    return undefined;
  }

  #markDue(batch: Batch<Input, Output>): void {
    batch.due = true;
    if (batch.timer) clearTimeout(batch.timer);
    batch.timer = undefined;
  }

  #pump(): void {
    if (this.#running) return;
    const index = this.#waiting.findIndex((batch) => batch.due);
    if (index < 0) return;
    const [batch] = this.#waiting.splice(index, 1);
    if (!batch) return;
    this.#running = true;
    this.#stats.batches += 1;
    this.#stats.largestBatch = Math.max(this.#stats.largestBatch, batch.size);
    void this.#runIsolatingFailures(batch.run, batch.requests).finally(() => {
      this.#running = false;
      this.#pump();
    });
  }

  /**
   * Runs the requests as one call. When it fails and holds several requests, one bad input must
   * not fail the others: it is split in halves, each retried apart, until every request has its
   * own outputs or the error of its own call, as a call without batching would give.
   */
  async #runIsolatingFailures(run: BatchRunner<Input, Output>, requests: Request<Input, Output>[]): Promise<void> {
    const inputs = requests.flatMap((request) => request.inputs);
    let outputs: Output[];
    try {
      outputs = await run(inputs);
    } catch (error) {
      if (requests.length === 1) {
        requests[0]?.reject(error);
        return;
      }
      this.#stats.splitBatches += 1;
      const half = Math.ceil(requests.length / 2);
      await this.#runIsolatingFailures(run, requests.slice(0, half));
      await this.#runIsolatingFailures(run, requests.slice(half));
      return;
    }
    if (outputs.length !== inputs.length) {
      const error = withCode(new Error(`batched predict: ${inputs.length} inputs gave ${outputs.length} outputs`), ErrorCode.TORCH);
      for (const request of requests) request.reject(error);
      return;
    }
    let offset = 0;
    for (const request of requests) {
      request.resolve(outputs.slice(offset, offset + request.inputs.length));
      offset += request.inputs.length;
    }
  }
}
