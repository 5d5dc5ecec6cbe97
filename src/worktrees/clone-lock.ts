/**
 * Serialises git commands on one clone across processes. Several instances on one host may
 * share a `repo_path` clone; a `git fetch` in one racing a `worktree add/remove/prune` in
 * another corrupts what the other reads ("bad object worktrees/<name>/HEAD"), and
 * FETCH_HEAD is one file per clone. Inside one process a queue per clone orders the work;
 * across processes a lock file (created with O_EXCL) does.
 *
 * A lock whose holder died is taken over: on this host when the holder's pid is gone, on
 * another host (a clone on shared storage) when the holder stopped refreshing the file's
 * mtime for `staleMs`. Taking over happens under a second, short-lived lock and re-checks
 * the holder's token, so a live lock is never deleted by two processes that both saw the
 * dead one.
 */

import { randomUUID } from "node:crypto";
import { lstat, open, readFile, stat, unlink, utimes } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { KeyedQueue } from "./concurrency.js";

/** What a lock file holds: who took it. */
interface LockOwner {
  token: string;
  pid: number;
  host: string;
  at: string;
}

export interface FileLockOptions {
  /** Give up waiting after this long (throws CloneLockTimeout). Default 15 min: a fetch may take 5. */
  timeoutMs?: number;
  /** A lock untouched for this long is dead (its holder hung or is on another host). Default 60 s; the holder touches it every staleMs/4. */
  staleMs?: number;
  /** What is being done, for the timeout message. */
  doing?: string;
}

/** Waiting for a clone's lock took longer than allowed. */
export class CloneLockTimeout extends Error {
  constructor(file: string, waitedMs: number, owner: LockOwner | undefined, doing: string | undefined) {
    const holder = owner ? `pid ${owner.pid} on ${owner.host} since ${owner.at}` : "unknown holder";
    super(`waited ${waitedMs} ms for the clone lock ${file}${doing ? ` to ${doing}` : ""}; held by ${holder}`);
    this.name = "CloneLockTimeout";
  }
}

const HOST = os.hostname();

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function readOwner(file: string): Promise<LockOwner | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, "utf8")) as Partial<LockOwner>;
    if (typeof parsed.token === "string" && typeof parsed.pid === "number" && typeof parsed.host === "string") {
      return { token: parsed.token, pid: parsed.pid, host: parsed.host, at: String(parsed.at) };
    }
  } catch {
    // Missing, or caught between create and write: the caller treats it as held and retries.
  }
  return undefined;
}

/** Creates `file` exclusively with `owner` in it; false when it exists. */
async function tryCreate(file: string, owner: LockOwner): Promise<boolean> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, "wx", 0o644);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
  try {
    await handle.writeFile(JSON.stringify(owner));
  } finally {
    await handle.close();
  }
  return true;
}

/** Tokens of the locks this process holds: a file naming this pid with another token is a leftover of an earlier process. */
const held = new Set<string>();

/**
 * A lock is dead when its holder on this host is gone (or is this process without holding
 * it: a restarted container reuses pids), or when nobody refreshed it for `staleMs`.
 */
async function isDead(file: string, owner: LockOwner | undefined, staleMs: number): Promise<boolean> {
  if (owner && owner.host === HOST) {
    if (owner.pid === process.pid ? !held.has(owner.token) : !pidAlive(owner.pid)) return true;
  }
  try {
    return Date.now() - (await stat(file)).mtimeMs > staleMs;
  } catch {
    return false;
  }
}

/** Deletes the lock `file` if it still holds `token`, under a short steal lock so two takers cannot both delete. */
async function takeOver(file: string, token: string | undefined): Promise<void> {
  const steal = `${file}.steal`;
  const me: LockOwner = { token: randomUUID(), pid: process.pid, host: HOST, at: new Date().toISOString() };
  if (!(await tryCreate(steal, me))) {
    // A taker that died mid-way leaves its steal lock behind; the work under it takes microseconds.
    const age = await lstat(steal).then(
      (s) => Date.now() - s.mtimeMs,
      () => 0,
    );
    if (age > 5_000) await unlink(steal).catch(() => {});
    return;
  }
  try {
    const current = await readOwner(file);
    if (current?.token === token) await unlink(file).catch(() => {});
  } finally {
    await unlink(steal).catch(() => {});
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `task` holding the lock file `file`; the file is removed afterwards whatever `task` did. */
export async function withFileLock<T>(file: string, task: () => Promise<T>, options: FileLockOptions = {}): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 15 * 60_000;
  const staleMs = options.staleMs ?? 60_000;
  const owner: LockOwner = { token: randomUUID(), pid: process.pid, host: HOST, at: new Date().toISOString() };
  const started = Date.now();
  let delay = 5;
  // Marked held before the file exists: another task of this process that reads the file
  // between its creation and this line must not judge it a leftover and take it over.
  held.add(owner.token);
  try {
    while (!(await tryCreate(file, owner))) {
      const holder = await readOwner(file);
      if (await isDead(file, holder, staleMs)) {
        // An unreadable owner is only dead by age (isDead), and then its token is undefined too.
        await takeOver(file, holder?.token);
        continue;
      }
      if (Date.now() - started > timeoutMs)
        throw new CloneLockTimeout(file, Date.now() - started, holder, options.doing);
      await sleep(delay + Math.random() * delay);
      delay = Math.min(delay * 2, 100);
    }
  } catch (error) {
    held.delete(owner.token);
    throw error;
  }
  // Keeps the lock visibly alive for holders on other hosts, who judge it by age.
  const refresh = setInterval(
    () => {
      const now = new Date();
      utimes(file, now, now).catch(() => {});
    },
    Math.max(1_000, staleMs / 4),
  );
  refresh.unref();
  try {
    return await task();
  } finally {
    clearInterval(refresh);
    const current = await readOwner(file);
    if (current?.token === owner.token) await unlink(file).catch(() => {});
    // Only now: while the file is ours, no task of this process may take it over.
    held.delete(owner.token);
  }
}

/**
 * The lock file of the clone (or git directory) `repo`: `<git dir>/formula-runner.lock`;
 * for a clone not made yet, `<parent>/.<name>.formula-runner.lock` beside where it will be.
 */
export async function cloneLockFile(repo: string): Promise<string> {
  const dotGit = path.join(repo, ".git");
  if (await isDirectory(dotGit)) return path.join(dotGit, "formula-runner.lock");
  if (await isFile(path.join(repo, "HEAD"))) return path.join(repo, "formula-runner.lock");
  return path.join(path.dirname(repo), `.${path.basename(repo)}.formula-runner.lock`);
}

async function isDirectory(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

async function isFile(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isFile(),
    () => false,
  );
}

/**
 * Runs tasks one at a time per clone: in order within this process (a promise chain per
 * key, so waiting costs no polling) and exclusively across processes (the clone's lock file).
 */
export class CloneQueue {
  readonly #queue = new KeyedQueue();

  constructor(private readonly options: FileLockOptions = {}) {}

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    return this.#queue.run(key, async () => withFileLock(await cloneLockFile(key), task, this.options));
  }
}
