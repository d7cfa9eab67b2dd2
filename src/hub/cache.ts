/**
 * Where a model's files are: a local directory, or a snapshot in the HuggingFace cache, laid out
 * as Python's huggingface_hub lays it out (so a cache filled by Python is reused):
 *   <cache>/models--<org>--<name>/refs/<revision>          the commit a branch or tag points at
 *   <cache>/models--<org>--<name>/snapshots/<commit>/<file>
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** huggingface_hub's home: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface. */
export function hfHome(): string {
  const env = process.env;
  if (env.HF_HOME) return resolve(env.HF_HOME);
  return join(env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(homedir(), '.cache'), 'huggingface');
}

/** The hub cache directory: `cacheDir`, else $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. */
export function hubCacheDir(cacheDir?: string): string {
  if (cacheDir) return resolve(cacheDir);
  const env = process.env;
  if (env.HF_HUB_CACHE) return resolve(env.HF_HUB_CACHE);
  if (env.HUGGINGFACE_HUB_CACHE) return resolve(env.HUGGINGFACE_HUB_CACHE);
  return join(hfHome(), 'hub');
}

/** `org/name` -> `models--org--name`, huggingface_hub's folder name for a model repository. */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}

export const COMMIT_HASH = /^[0-9a-f]{40}$/;
// huggingface_hub's repo id rule: one optional namespace, then a name of [\w.-], no '--' or '..'.
const REPO_ID = /^(?:[\w.-]+\/)?[\w.-]+$/;

export function isValidRepoId(repoId: string): boolean {
  return REPO_ID.test(repoId) && !repoId.includes('--') && !repoId.includes('..') && repoId.length <= 96;
}

/**
 * A revision becomes a path under refs/ (`refs/pr/1` is a valid one): no empty, `.` or `..`
 * segment, no backslash, nothing absolute.
 */
export function isValidRevision(revision: string): boolean {
  return revision.length > 0 && !/[\\\0]/.test(revision) && revision.split('/').every((s) => s !== '' && s !== '.' && s !== '..');
}

export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

export interface CacheLookup {
  /** The snapshot directory, when the cache holds this revision. */
  snapshot?: string;
  /** What was looked at, for the error when nothing is found. */
  looked: string;
}

/** Finds `revision` (branch, tag or commit hash) of `repoId` in the cache at `cacheDir`. */
export function findCachedSnapshot(cacheDir: string, repoId: string, revision: string): CacheLookup {
  const repoDir = join(cacheDir, repoFolderName(repoId));
  if (!isDirectory(repoDir)) return { looked: `${repoDir} (not in the cache)` };
  let commit = revision;
  if (!isValidRevision(revision)) return { looked: `${repoDir} (revision "${revision}" is not a valid branch, tag or commit)` };
  if (!COMMIT_HASH.test(revision)) {
    const refFile = join(repoDir, 'refs', revision);
    if (!existsSync(refFile)) return { looked: `${refFile} (no such revision in the cache)` };
    commit = readFileSync(refFile, 'utf8').trim();
    // The ref's content becomes a path: accept a commit hash and nothing else.
    if (!COMMIT_HASH.test(commit)) return { looked: `${refFile} (does not hold a commit hash)` };
  }
  const snapshot = join(repoDir, 'snapshots', commit);
  if (!existsSync(join(snapshot, 'config.json'))) return { looked: `${snapshot} (no config.json)` };
  return { snapshot, looked: snapshot };
}
