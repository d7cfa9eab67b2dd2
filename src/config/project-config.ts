/**
 * The YAML job file (`config/model_config.yaml`): snake_case keys on disk, the camelCase schemas
 * of src/schemas in memory. The key mapping is derived from those schemas (`yamlSpelling`), so
 * a field added to a schema is accepted in YAML, and named in errors, with no edit here.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parseDocument, type YAMLError } from 'yaml';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { check, describe, isMapping, keysOf, objectOptions, type Spelling, selectedOption, unknownKeyMessage, unwrap } from '../schemas/common.js';
import { type DatasetConfig, DatasetConfigSchema, resolveDatasetPaths } from '../schemas/dataset-config.js';
import { DistributedConfigSchema } from '../schemas/distributed-config.js';
import { ModelConfigSchema } from '../schemas/model-config.js';
import { TrainingConfigSchema } from '../schemas/training-config.js';

export const toSnakeCase = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

// The only YAML names that are not the snake_case of the field: the seed file's `model.name`
// and `model.type`, which read better than `model.model_name` inside a `model:` block.
const RENAMED = new Map<object, Record<string, string>>([[ModelConfigSchema, { modelName: 'name', modelType: 'type' }]]);

/** How the YAML file spells `key` of object schema `owner`. */
export const yamlSpelling: Spelling = (owner, key) => RENAMED.get(owner)?.[key] ?? toSnakeCase(key);

const ProjectConfigSchema = z.strictObject({
  model: ModelConfigSchema,
  // Every training field has a default, so a file for inference alone needs no training block.
  training: TrainingConfigSchema.prefault({}),
  data: DatasetConfigSchema.optional(),
  // Data-parallel training (DistributedTrainer's options); `visiontorch train --nproc-per-node` overrides.
  distributed: DistributedConfigSchema.optional(),
});

export type ProjectConfig = z.output<typeof ProjectConfigSchema> & {
  /** Absolute path of the file it was read from; '' when parsed from an object without a source. */
  path: string;
};

/**
 * Renames YAML keys to schema keys, following the schema down. Keys the schema does not know are
 * reported here, in the user's spelling, and dropped: passing them on would let a camelCase key
 * written in YAML (`numClasses`) slip through as valid.
 */
function renameKeys(schema: z.ZodType, value: unknown, path: readonly string[], issues: ConfigIssue[]): unknown {
  if (Array.isArray(value)) {
    const s = unwrap(schema);
    return s instanceof z.ZodArray ? value.map((v, i) => renameKeys(s.element as z.ZodType, v, [...path, String(i)], issues)) : value;
  }
  // Records (id2label) have no object options: their keys are data, left as they are.
  if (!isMapping(value) || objectOptions(schema).length === 0) return value;

  const picked = selectedOption(schema, value);
  const byYamlKey = new Map(keysOf(picked ?? schema, yamlSpelling));
  const out: Record<string, unknown> = {};
  for (const [yamlKey, v] of Object.entries(value)) {
    const key = byYamlKey.get(yamlKey);
    if (key === undefined) {
      issues.push({ path: [...path, yamlKey].join('.'), message: unknownKeyMessage(schema, value, yamlKey, yamlSpelling) });
      continue;
    }
    const child = objectOptions(picked ?? schema).find((o) => Object.hasOwn(o.shape, key))?.shape[key] as z.ZodType;
    out[key] = renameKeys(child, v, [...path, yamlKey], issues);
  }
  return out;
}

/** Sorts issues as their keys appear in the file (a missing key just after its parent), so the list reads top to bottom. */
function inDocumentOrder(issues: ConfigIssue[], obj: unknown): ConfigIssue[] {
  const rank = new Map<string, number>();
  const visit = (v: unknown, prefix: string): void => {
    if (!isMapping(v) && !Array.isArray(v)) return;
    for (const [k, child] of Object.entries(v)) {
      const p = prefix ? `${prefix}.${k}` : k;
      rank.set(p, rank.size);
      visit(child, p);
    }
  };
  visit(obj, '');
  const rankOf = (path: string): number => {
    for (let p = path; p; p = p.slice(0, Math.max(0, p.lastIndexOf('.')))) {
      const r = rank.get(p);
      if (r !== undefined) return r;
    }
    return -1;
  };
  return issues
    .map((i) => [rankOf(i.path), i] as const)
    .sort((a, b) => a[0] - b[0])
    .map(([, i]) => i);
}

/**
 * Validates an already-parsed YAML/JSON object in the file's snake_case shape. `source` names
 * the file in messages; relative dataset paths resolve against its directory (else the working
 * directory). Throws ConfigError listing every problem.
 */
export function parseProjectConfig(obj: unknown, source?: string): ProjectConfig {
  const opts = source === undefined ? {} : { source };
  if (!isMapping(obj)) {
    throw new ConfigError([{ path: '', message: `expected a mapping with model:, training: and data: sections, got ${describe(obj)}` }], opts);
  }
  const issues: ConfigIssue[] = [];
  const renamed = renameKeys(ProjectConfigSchema, obj, [], issues);
  if (isMapping(obj.training) && obj.training.dataset !== undefined && obj.data !== undefined) {
    issues.push({ path: 'training.dataset', message: 'the dataset is already given under data: give it in one place' });
  }
  const r = check(ProjectConfigSchema, renamed, yamlSpelling);
  if (!r.ok) issues.push(...r.issues);
  if (!r.ok || issues.length > 0) throw new ConfigError(inDocumentOrder(issues, obj), opts);

  const { model, training } = r.value;
  const path = source === undefined ? '' : resolve(source);
  const baseDir = source === undefined ? process.cwd() : dirname(path);
  const given: DatasetConfig | undefined = r.value.data ?? training.dataset;
  // One dataset, visible both as `data` and as `training.dataset` (what BaseTrainer.train reads).
  const data = given && resolveDatasetPaths(given, baseDir);
  // A model directory written as ./dir or ../dir is relative to the file, like data: paths;
  // anything else is a hub id or a path relative to the working directory.
  const modelName = /^\.\.?\//.test(model.modelName) ? resolve(baseDir, model.modelName) : model.modelName;
  return {
    model: { ...model, modelName },
    training: data ? { ...training, dataset: data } : training,
    ...(data && { data }),
    ...(r.value.distributed && { distributed: r.value.distributed }),
    path,
  };
}

/** `line L, column C: ` where yaml knows the error's place, else ''. */
function positionOf(err: YAMLError): string {
  const pos = err.linePos?.[0];
  return pos ? `line ${pos.line}, column ${pos.col}: ` : '';
}

function yamlIssue(err: YAMLError): ConfigIssue {
  // yaml appends " at line L, column C:" and a code frame to the first line; keep the gist.
  const gist = (err.message.split('\n')[0] ?? err.message).replace(/ at line \d+, column \d+:?$/, '');
  return { path: '', message: `${positionOf(err)}${gist}` };
}

/** Reads and validates a YAML job file (see config/model_config.yaml). Throws ConfigError. */
export async function loadConfig(path: string): Promise<ProjectConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const message =
      code === 'ENOENT'
        ? `config file not found: ${path}`
        : code === 'EISDIR'
          ? `config path is a directory, not a file: ${path}`
          : `cannot read config file ${path}: ${(err as Error).message}`;
    throw new ConfigError([{ path: '', message }]);
  }

  const doc = parseDocument(text);
  if (doc.errors.length > 0) {
    // yaml reports running out of stack (lists or mappings nested thousands deep) as one error
    // per level it unwinds, in the engine's words: one issue, in the file's terms, says it.
    const overflow = doc.errors.find((e) => e.message.includes('Maximum call stack size exceeded'));
    const issues = overflow ? [{ path: '', message: `${positionOf(overflow)}nested too deeply to read` }] : doc.errors.map(yamlIssue);
    throw new ConfigError(issues, { source: path, heading: `Invalid YAML in ${path}` });
  }
  let obj: unknown;
  try {
    obj = doc.toJS();
  } catch (err) {
    // e.g. an alias bomb beyond yaml's maxAliasCount
    throw new ConfigError([{ path: '', message: (err as Error).message }], { source: path });
  }
  if (obj === null || obj === undefined) {
    throw new ConfigError([{ path: '', message: 'the file has no content; expected model:, training: and data: sections' }], { source: path });
  }
  return parseProjectConfig(obj, path);
}
