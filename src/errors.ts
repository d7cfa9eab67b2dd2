/**
 * The stable `code` of every error visiontorch raises, in JavaScript or in the native core (the
 * README lists what each means). Branch on these, not on messages.
 */
export const ErrorCode = {
  INVALID_ARGUMENT: 'ERR_VISIONTORCH_INVALID_ARGUMENT',
  CONFIG: 'ERR_VISIONTORCH_CONFIG',
  CHECKPOINT: 'ERR_VISIONTORCH_CHECKPOINT',
  IMAGE: 'ERR_VISIONTORCH_IMAGE',
  DATASET: 'ERR_VISIONTORCH_DATASET',
  DISPOSED: 'ERR_VISIONTORCH_DISPOSED',
  ABORTED: 'ERR_VISIONTORCH_ABORTED',
  UNSUPPORTED: 'ERR_VISIONTORCH_UNSUPPORTED',
  OUT_OF_MEMORY: 'ERR_VISIONTORCH_OUT_OF_MEMORY',
  IO: 'ERR_VISIONTORCH_IO',
  TORCH: 'ERR_VISIONTORCH_TORCH',
  DISTRIBUTED: 'ERR_VISIONTORCH_DISTRIBUTED',
  MODEL_NOT_FOUND: 'ERR_VISIONTORCH_MODEL_NOT_FOUND',
  HUB: 'ERR_VISIONTORCH_HUB',
  NATIVE_ADDON: 'ERR_VISIONTORCH_NATIVE_ADDON',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** `error` with its `code` set, for throwing: `throw withCode(new Error('...'), ErrorCode.DISPOSED)`. */
export function withCode<E extends Error>(error: E, code: ErrorCode): E & { code: ErrorCode } {
  return Object.assign(error, { code });
}

/** A TypeError or RangeError for a bad argument, with ERR_VISIONTORCH_INVALID_ARGUMENT. */
export function invalidArgument(kind: typeof TypeError | typeof RangeError, message: string): Error & { code: ErrorCode } {
  return withCode(new kind(message), ErrorCode.INVALID_ARGUMENT);
}

/** One problem in a configuration: `path` is dotted, in the spelling the user wrote (`model.num_classes`). */
export interface ConfigIssue {
  path: string;
  message: string;
}

/**
 * A configuration that cannot be used. The message lists every problem, one per line, so a user
 * fixes a file in one pass instead of one error per run.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = ErrorCode.CONFIG;
  readonly issues: ConfigIssue[];
  /** The file (or other origin) the configuration came from, as the caller named it. */
  readonly source: string | undefined;

  /** `heading` replaces the default first line, `Invalid configuration[ in <source>]`. */
  constructor(issues: ConfigIssue[], options: { source?: string; heading?: string } = {}) {
    super(formatMessage(issues, options.source, options.heading));
    this.issues = issues;
    this.source = options.source;
  }
}

function formatMessage(issues: ConfigIssue[], source?: string, heading?: string): string {
  const only = issues.length === 1 ? issues[0] : undefined;
  // A single whole-file problem ("config file not found: x") reads best as one line.
  if (only && !only.path && heading === undefined) {
    return source ? `${source}: ${only.message}` : only.message;
  }
  const head = heading ?? `Invalid configuration${source ? ` in ${source}` : ''}`;
  const lines = issues.map((i) => `  ${i.path ? `${i.path}: ` : ''}${i.message}`);
  return [`${head}:`, ...lines].join('\n');
}

/** No model directory was found for a modelName; `searched` lists every place looked at. */
export class ModelNotFoundError extends Error {
  override readonly name = 'ModelNotFoundError';
  readonly code = ErrorCode.MODEL_NOT_FOUND;
  constructor(
    readonly modelName: string,
    readonly searched: string[],
    readonly hint?: string,
  ) {
    super(`model "${modelName}" was not found. Looked in:\n${searched.map((s) => `  - ${s}`).join('\n')}${hint ? `\n${hint}` : ''}`);
  }
}

/**
 * The hub could not deliver a model that may well exist: access refused (401/403), the server
 * or the network failing after retries, a download that does not match its checksum, or an
 * answer that would write outside the cache. `url` is the request that failed.
 */
export class HubError extends Error {
  override readonly name = 'HubError';
  readonly code = ErrorCode.HUB;
  constructor(
    message: string,
    readonly url?: string,
    readonly status?: number,
  ) {
    super(message);
  }
}
