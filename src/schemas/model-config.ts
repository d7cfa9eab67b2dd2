import { z } from 'zod';
import type { NativeTask } from '../../binding.js';
import { bool, nonEmptyString, oneOf, parseOrThrow, positiveInt, whenValid } from './common.js';

export const ModelType = {
  CLASSIFICATION: 'classification',
  OBJECT_DETECTION: 'object_detection',
  SEGMENTATION: 'segmentation',
} as const satisfies Record<string, NativeTask>;
/** The tasks of the native task table (binding.d.ts); ModelType names each one. */
export type ModelType = NativeTask;
// A task added to the table without its ModelType constant fails to compile here.
const everyTaskNamed: Record<Exclude<NativeTask, (typeof ModelType)[keyof typeof ModelType]>, never> = {};
void everyTaskNamed;

const MODEL_TYPES = Object.values(ModelType) as [ModelType, ...ModelType[]];

export type Device = 'auto' | 'cpu' | 'cuda' | `cuda:${number}`;

// A regex rather than z.templateLiteral: the latter's integer part also admits `cuda:-1`.
const DeviceSchema = z
  .string({ error: 'expected "auto", "cpu", "cuda" or "cuda:N"' })
  .regex(/^(auto|cpu|cuda(:(0|[1-9]\d*))?)$/, { error: 'expected "auto", "cpu", "cuda" or "cuda:N"' })
  .transform((s) => s as Device);

// JSON and YAML object keys are strings, so class indices arrive as "0", "1", ...
const Id2LabelSchema = z
  .record(z.string().regex(/^(0|[1-9]\d*)$/, { error: 'expected a class index 0, 1, 2, ...' }), nonEmptyString())
  .transform((r) => r as Record<number, string>);

export const ModelConfigSchema = z
  .strictObject({
    /** A hub id (`org/name`) or a local directory; the loader decides which. */
    modelName: nonEmptyString(),
    /** The task; default: the one config.json's architecture serves (its head's, or its family's for a base model). */
    modelType: oneOf(MODEL_TYPES).optional(),
    pretrained: bool().default(true),
    numClasses: positiveInt().optional(),
    id2label: Id2LabelSchema.optional(),
    imageSize: positiveInt().optional(),
    channels: positiveInt().optional(),
    revision: nonEmptyString().optional(),
    cacheDir: nonEmptyString().optional(),
    localFilesOnly: bool().optional(),
    ignoreMismatchedSizes: bool().optional(),
    dtype: oneOf(['float32', 'bfloat16', 'float16']).optional(),
    /** 'int8': linear layers run as dynamic int8 (weights per channel, activations per call); CPU float32 inference only. */
    quantization: oneOf(['none', 'int8']).optional(),
    device: DeviceSchema.optional(),
    gradientCheckpointing: bool().optional(),
  })
  .superRefine(
    (cfg, ctx) => {
      if (!cfg.id2label) return;
      // A head of n outputs needs a label for each index 0..n-1, nothing more, nothing less.
      const ids = Object.keys(cfg.id2label).map(Number);
      const n = cfg.numClasses ?? ids.length;
      const missing = Array.from({ length: n }, (_, i) => i).filter((i) => !ids.includes(i));
      const extra = ids.filter((i) => i >= n);
      if (cfg.numClasses !== undefined && ids.length !== n) {
        ctx.addIssue({ code: 'custom', path: ['id2label'], message: `has ${ids.length} entries but {numClasses} is ${n}` });
      } else if (missing.length > 0 || extra.length > 0) {
        const detail = missing.length > 0 ? `missing ${missing.join(', ')}` : `unexpected ${extra.join(', ')}`;
        ctx.addIssue({ code: 'custom', path: ['id2label'], message: `keys must be 0..${n - 1} without gaps (${detail})` });
      }
    },
    whenValid('numClasses', 'id2label'),
  );

/** What callers may pass (defaults not yet applied). */
export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type ModelConfig = z.output<typeof ModelConfigSchema>;

/** Validates a camelCase model configuration; throws ConfigError listing every problem. */
export function parseModelConfig(input: unknown): ModelConfig {
  return parseOrThrow(ModelConfigSchema, input, 'Invalid model configuration');
}
