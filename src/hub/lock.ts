/**
 * An exclusive lock file, so that processes sharing a cache (and concurrent calls in one process)
 * download a blob once instead of writing one `.incomplete` file together. The file is created
 * with O_EXCL ('wx') and holds `<pid> <hostname>`; waiters poll until it is gone. A holder that
 * died leaves it behind, so a waiter breaks a lock whose process no longer exists on this host,
 * or which nobody refreshed for `staleMs` (the holder touches it while it works, so a long
 * download is not mistaken for a dead one; this also covers other hosts and empty lock files
 * that Python's filelock leaves behind).
 */
import { randomUUID } from 'node:crypto';
import type { Stats } from 'node:fs';
import { link, open, readFile, rename, rm, stat, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

export interface LockOptions {
  /** A lock not refreshed for this long is abandoned. Default 30 s. */
  staleMs?: number;
  /** First wait between polls; it grows to 1 s. Default 50 ms. */
  pollMs?: number;
}

/** Runs `fn` holding the lock file at `path`, then removes it. */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, options: LockOptions = {}): Promise<T> {
  const staleMs = options.staleMs ?? 30_000;
  const ino = await acquire(path, staleMs, options.pollMs ?? 50);
  const touch = (): void => void utimes(path, new Date(), new Date()).catch(() => {});
  const heartbeat = setInterval(touch, staleMs / 4);
  heartbeat.unref();
  try {
    return await fn();
  } finally {
    clearInterval(heartbeat);
    // Only our own file: had we stalled past staleMs, the lock now there is someone else's.
    const current = await stat(path).catch(() => undefined);
    if (current?.ino === ino) await rm(path, { force: true });
  }
}

/** Creates the lock file, waiting for its holder; returns the file's inode. */
async function acquire(path: string, staleMs: number, pollMs: number): Promise<number> {
  for (let wait = pollMs; ; wait = Math.min(wait * 1.5, 1000)) {
    try {
      const file = await open(path, 'wx');
      try {
        await file.writeFile(`${process.pid} ${hostname()}\n`);
        return (await file.stat()).ino;
      } finally {
        await file.close();
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const stale = await staleLock(path, staleMs);
    if (stale === 'gone') continue;
    if (stale !== undefined) {
      await breakLock(path, stale);
      continue;
    }
    await sleep(wait);
  }
}

/** The inode of the lock at `path` when it is abandoned; 'gone' when it vanished meanwhile. */
async function staleLock(path: string, staleMs: number): Promise<number | 'gone' | undefined> {
  let info: Stats;
  let text: string;
  try {
    [info, text] = await Promise.all([stat(path), readFile(path, 'utf8')]);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw error;
  }
  if (Date.now() - info.mtimeMs > staleMs) return info.ino;
  // A file just created may not hold its pid yet: without one, only its age tells.
  const [, pid, host] = /^(\d+) (\S+)/.exec(text) ?? [];
  if (pid !== undefined && host === hostname() && !isAlive(Number(pid))) return info.ino;
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the abandoned lock with inode `ino`. It is first renamed aside, atomically, so that
 * of two waiters breaking it at once only one takes it; if what was renamed is a new lock that
 * another waiter created in between, it is put back.
 */
async function breakLock(path: string, ino: number): Promise<void> {
  const aside = `${path}.${randomUUID()}.stale`;
  try {
    await rename(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if ((await stat(aside)).ino !== ino) await link(aside, path).catch(() => {});
  await rm(aside, { force: true });
}
