import type { Dirent, Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import path from "node:path";

/** Directories read at once while walking; enough to keep libuv's thread pool busy. */
const CONCURRENCY = 16;

/**
 * Disk usage of a directory tree in bytes, like `du -s --bytes` would count allocated
 * blocks: every file, directory and symlink once (hard links once), symlinks not followed.
 * Undefined when the directory does not exist. Entries that vanish while walking are skipped.
 */
export async function diskUsage(dir: string): Promise<number | undefined> {
  let rootStat: Stats;
  try {
    rootStat = await lstat(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const seen = new Set<string>();
  let total = 0;
  const count = (stat: { dev: number; ino: number; blocks: number; size: number; nlink: number }) => {
    if (stat.nlink > 1) {
      const key = `${stat.dev}:${stat.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
    }
    // st_blocks is in 512-byte units on every POSIX system; fall back to the length where it is missing.
    total += Number.isFinite(stat.blocks) ? stat.blocks * 512 : stat.size;
  };
  count(rootStat);
  if (!rootStat.isDirectory()) return total;

  const pending: string[] = [dir];
  const walkOne = async (current: string) => {
    let entries: Dirent[];
    try {
      entries = await readdir(current, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    for (const entry of entries) {
      const full = path.join(current, entry.name);
      let stat: Stats;
      try {
        stat = await lstat(full);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") continue;
        throw error;
      }
      count(stat);
      if (stat.isDirectory()) pending.push(full);
    }
  };
  // A bounded pool: each finished directory may have queued more. The first failure stops
  // new work; the walks in flight are still awaited so none rejects unobserved.
  const workers = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  while ((pending.length > 0 && !failure) || workers.size > 0) {
    while (pending.length > 0 && workers.size < CONCURRENCY && !failure) {
      const worker: Promise<void> = walkOne(pending.pop() as string)
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => workers.delete(worker));
      workers.add(worker);
    }
    if (workers.size > 0) await Promise.race(workers);
  }
  if (failure) throw new Error(`could not measure ${dir}`, { cause: failure.error });
  return total;
}
