/**
 * Shared pieces of the configuration schemas: field builders with user-facing messages, a walk
 * over zod schemas (to spell paths and list valid keys), and the translation of zod issues into
 * `ConfigIssue`s. Paths can be spelled two ways: camelCase for objects built in TypeScript, and
 * the YAML file's snake_case (src/config supplies that spelling).
 */
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';

// ---------------------------------------------------------------------------------------------
// Field builders. Every check carries the same "expected ..." text, so a value that breaks two
// checks at once (-2.5 for a positive integer) reads as one problem, and the reader sees the
// rule rather than zod's wording. `translate` below appends what was found.

const expected = (what: string) => ({ error: `expected ${what}` });

export const positiveInt = () => {
  const e = expected('a positive integer');
  return z.number(e).int(e).positive(e);
};
export const nonNegativeInt = () => {
  const e = expected('an integer >= 0');
  return z.number(e).int(e).nonnegative(e);
};
export const positiveNumber = () => {
  const e = expected('a number > 0');
  return z.number(e).positive(e);
};
export const nonNegativeNumber = () => {
  const e = expected('a number >= 0');
  return z.number(e).nonnegative(e);
};
/** A number in [0, 1): ratios and probabilities where 1 would be degenerate. */
export const fraction = () => {
  const e = expected('a number in [0, 1)');
  return z.number(e).nonnegative(e).lt(1, e);
};
export const bool = () => z.boolean(expected('true or false'));
/** Not blank, and no NUL byte: a NUL would silently truncate the string in the native layer. */
export const nonEmptyString = () => {
  const e = expected('a non-empty string');
  return z
    .string(e)
    .regex(/\S/, e)
    .regex(/^[^\0]*$/, expected('a string without NUL bytes'));
};
/** Literal choices; the message lists them all. */
export const oneOf = <const T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, expected(`one of ${values.map((v) => JSON.stringify(v)).join(', ')}`));

// ---------------------------------------------------------------------------------------------
// Walking schemas.

type AnySchema = z.ZodType;
type AnyObject = z.ZodObject;

/** Strips optional/default/prefault/nullable/readonly/catch wrappers and the input side of pipes. */
export function unwrap(schema: AnySchema): AnySchema {
  let s = schema;
  for (;;) {
    const def = s.def as { innerType?: AnySchema };
    if (def.innerType) s = def.innerType;
    else if (s instanceof z.ZodPipe) s = s.in as AnySchema;
    else return s;
  }
}

/** The object schemas a value at `schema` may match: one for an object, several for a union. */
export function objectOptions(schema: AnySchema): AnyObject[] {
  const s = unwrap(schema);
  if (s instanceof z.ZodObject) return [s];
  if (s instanceof z.ZodUnion) return (s.options as AnySchema[]).flatMap(objectOptions);
  return [];
}

/** For a discriminated union and a value, the one option the value selects, if any. */
export function selectedOption(schema: AnySchema, value: Record<string, unknown>): AnyObject | undefined {
  const s = unwrap(schema);
  if (!(s instanceof z.ZodDiscriminatedUnion)) return undefined;
  const tag = value[s.def.discriminator];
  return objectOptions(s).find((o) => {
    const lit = o.shape[s.def.discriminator];
    return lit instanceof z.ZodLiteral && lit.values.has(tag as never);
  });
}

function child(schema: AnySchema, segment: PropertyKey): AnySchema | undefined {
  const s = unwrap(schema);
  if (typeof segment === 'string') {
    for (const o of objectOptions(s)) if (Object.hasOwn(o.shape, segment)) return o.shape[segment] as AnySchema;
  }
  if (s instanceof z.ZodArray) return s.element as AnySchema;
  if (s instanceof z.ZodTuple) return (s.def.items as AnySchema[])[Number(segment)];
  if (s instanceof z.ZodRecord) return s.valueType as AnySchema;
  return undefined;
}

/** How the user spells key `key` of object schema `owner`. */
export type Spelling = (owner: AnyObject, key: string) => string;
export const camelSpelling: Spelling = (_owner, key) => key;

/** Valid keys at an object (or union of objects): [as the user spells it, as the schema names it]. */
export function keysOf(schema: AnySchema, spelling: Spelling): [spelled: string, key: string][] {
  const seen = new Map<string, string>();
  for (const o of objectOptions(schema)) {
    for (const key of Object.keys(o.shape)) seen.set(spelling(o, key), key);
  }
  return [...seen];
}

/** Walks `path` (schema spelling) from `root`, spelling each object key as the user does. */
function spellPath(root: AnySchema, path: readonly PropertyKey[], spelling: Spelling): string[] {
  let s: AnySchema | undefined = root;
  return path.map((seg) => {
    const owner: AnyObject | undefined = s && typeof seg === 'string' ? objectOptions(s).find((o) => Object.hasOwn(o.shape, seg)) : undefined;
    s = s && child(s, seg);
    return owner ? spelling(owner, seg as string) : String(seg);
  });
}

function schemaAt(root: AnySchema, path: readonly PropertyKey[]): AnySchema | undefined {
  let s: AnySchema | undefined = root;
  for (const seg of path) s = s && child(s, seg);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Messages.

/** What was found, for "got ...": values as written, other things by kind. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  }
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return typeof value;
}

function article(type: string): string {
  const names: Record<string, string> = {
    string: 'a string',
    number: 'a number',
    int: 'an integer',
    boolean: 'true or false',
    object: 'a mapping',
    array: 'a list',
    tuple: 'a list',
    record: 'a mapping',
  };
  return names[type] ?? type;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const sub = (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      cur.push(Math.min(sub, (prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1));
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

/**
 * The candidate the user probably meant: the same words in another case style (`numClasses` or
 * `model_name` for `name`), else the closest spelling within two edits.
 */
export function closest(input: string, candidates: readonly (readonly [spelled: string, key: string])[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[_\-\s]/g, '');
  const n = norm(input);
  const same = candidates.find(([spelled, key]) => norm(spelled) === n || norm(key) === n);
  if (same) return same[0];
  let best: { spelled: string; d: number } | undefined;
  for (const [spelled] of candidates) {
    const d = editDistance(input, spelled);
    if (d <= 2 && (!best || d < best.d)) best = { spelled, d };
  }
  return best?.spelled;
}

export const isMapping = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Why `key` is not allowed in `value` (an object validated by `schema`): a key of another
 * variant of a discriminated union says so; otherwise suggest the closest valid key.
 */
export function unknownKeyMessage(schema: AnySchema, value: unknown, key: string, spelling: Spelling): string {
  const obj = isMapping(value) ? value : {};
  const picked = selectedOption(schema, obj);
  const discriminator = (unwrap(schema).def as { discriminator?: string }).discriminator;
  if (picked && discriminator && keysOf(schema, spelling).some(([s]) => s === key)) {
    return `unknown key for ${discriminator} ${describe(obj[discriminator])}`;
  }
  const guess = closest(key, keysOf(picked ?? schema, spelling));
  return guess ? `unknown key, did you mean "${guess}"?` : 'unknown key';
}

/**
 * Options for a cross-field `superRefine` over `keys`: zod skips refinements once any field has
 * failed, which would hide this problem until the others are fixed; run it unless one of its
 * own fields (or the whole value) is invalid.
 */
export const whenValid = (...keys: string[]) => ({
  when: (p: z.core.ParsePayload) =>
    p.issues.every((i) => {
      const head = i.path?.[0];
      // A root issue means the value is not even an object, except for unknown keys.
      return head === undefined ? i.code === 'unrecognized_keys' : !keys.includes(String(head));
    }),
});

const joinOr = (items: string[]) => (items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')}, or ${items.at(-1)}`);

/**
 * Per-parse error map: the wording for checks that have no message of their own. Schema-level
 * messages (the builders above) take precedence over this.
 */
const fallbackMessage: z.core.$ZodErrorMap = (iss) => {
  switch (iss.code) {
    case 'invalid_type':
      return `expected ${article(iss.expected)}`;
    case 'invalid_value':
      return iss.values.length === 1
        ? `expected ${JSON.stringify(iss.values[0])}`
        : `expected one of ${iss.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'too_small': {
      const op = iss.inclusive ? '>=' : '>';
      if (iss.origin === 'array') return `expected at least ${iss.minimum} item(s)`;
      if (iss.origin === 'string') return `expected at least ${iss.minimum} character(s)`;
      return `expected a number ${op} ${iss.minimum}`;
    }
    case 'too_big': {
      const op = iss.inclusive ? '<=' : '<';
      if (iss.origin === 'array') return `expected at most ${iss.maximum} item(s)`;
      if (iss.origin === 'string') return `expected at most ${iss.maximum} character(s)`;
      return `expected a number ${op} ${iss.maximum}`;
    }
    case 'invalid_format':
      return 'has an invalid format';
    default:
      return undefined;
  }
};

// Codes whose input is the offending value itself (as opposed to a whole object for
// `custom` cross-field checks), so "got <input>" is worth appending.
const REPORTS_INPUT = new Set(['invalid_type', 'invalid_value', 'too_small', 'too_big', 'invalid_format', 'not_multiple_of']);

/**
 * Messages may name sibling fields as `{fieldName}` (schema spelling) so that the text uses the
 * user's spelling too: `{warmupSteps}` reads `warmup_steps` in YAML.
 */
function spellSiblings(message: string, root: AnySchema, parent: readonly PropertyKey[], spelling: Spelling): string {
  return message.replace(/\{(\w+)\}/g, (_m, key: string) => spellPath(root, [...parent, key], spelling).at(-1) ?? key);
}

function translate(root: AnySchema, iss: z.core.$ZodIssue, prefix: readonly PropertyKey[], spelling: Spelling, out: ConfigIssue[]): void {
  const fullPath = [...prefix, ...iss.path];
  const at = (p: readonly PropertyKey[]) => spellPath(root, p, spelling).join('.');
  const push = (p: readonly PropertyKey[], message: string) => out.push({ path: at(p), message });

  switch (iss.code) {
    case 'unrecognized_keys': {
      const owner = schemaAt(root, fullPath) ?? z.never();
      for (const key of iss.keys) push([...fullPath, key], unknownKeyMessage(owner, iss.input, key, spelling));
      return;
    }
    case 'invalid_union': {
      if (iss.discriminator !== undefined && 'options' in iss && iss.options) {
        const tag = (iss.input as Record<string, unknown> | undefined)?.[iss.discriminator];
        // zod already points the path at the discriminator.
        const choices = iss.options.map((o) => JSON.stringify(o)).join(', ');
        push(fullPath, tag === undefined ? `missing; expected one of ${choices}` : `expected one of ${choices}, got ${describe(tag)}`);
        return;
      }
      // A value of the right kind for one branch (a mapping where `true | {...}` is allowed)
      // fails inside that branch: report those problems, not "no branch matched".
      const deep = iss.errors.filter((errs) => !errs.some((e) => e.code === 'invalid_type' && e.path.length === 0));
      if (deep.length === 1 && deep[0]) {
        for (const e of deep[0]) translate(root, e, fullPath, spelling, out);
        return;
      }
      const kinds = iss.errors.flatMap((errs) => errs.filter((e) => e.code === 'invalid_type').map((e) => article(e.expected)));
      push(fullPath, `expected ${joinOr([...new Set(kinds)]) || 'a valid value'}, got ${describe(iss.input)}`);
      return;
    }
    case 'invalid_key': {
      const inner = iss.issues[0]?.message ?? 'invalid key';
      push(fullPath, `invalid key: ${inner}`);
      return;
    }
    default: {
      let message = spellSiblings(iss.message, root, fullPath.slice(0, -1), spelling);
      if (REPORTS_INPUT.has(iss.code)) {
        message = iss.input === undefined ? `missing; ${message}` : `${message}, got ${describe(iss.input)}`;
      }
      if (iss.code === 'invalid_value' && typeof iss.input === 'string') {
        const guess = closest(
          iss.input,
          iss.values.map((v) => [String(v), String(v)] as const),
        );
        if (guess) message += `; did you mean ${JSON.stringify(guess)}?`;
      }
      push(fullPath, message);
    }
  }
}

/** zod issues → ConfigIssues with paths and field names spelled as the user writes them. */
export function toConfigIssues(root: AnySchema, issues: readonly z.core.$ZodIssue[], spelling: Spelling): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const iss of issues) translate(root, iss, [], spelling, out);
  // One value can break several checks with the same message (-2.5: not an integer, not > 0).
  const seen = new Set<string>();
  return out.filter((i) => {
    const k = `${i.path}\0${i.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Validates `input`; either the parsed value or every problem found. */
export function check<S extends AnySchema>(
  schema: S,
  input: unknown,
  spelling: Spelling,
): { ok: true; value: z.output<S> } | { ok: false; issues: ConfigIssue[] } {
  const r = schema.safeParse(input, { reportInput: true, error: fallbackMessage });
  return r.success ? { ok: true, value: r.data } : { ok: false, issues: toConfigIssues(schema, r.error.issues, spelling) };
}

/** Parses a TypeScript-side (camelCase) object, throwing a ConfigError that lists every issue. */
export function parseOrThrow<S extends AnySchema>(schema: S, input: unknown, heading: string): z.output<S> {
  const r = check(schema, input, camelSpelling);
  if (!r.ok) throw new ConfigError(r.issues, { heading });
  return r.value;
}
