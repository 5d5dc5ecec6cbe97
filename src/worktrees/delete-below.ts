/**
 * Deletes a directory below WORKTREE_ROOT by file descriptor, never by path.
 *
 * A path checked and then deleted can be swapped in between (a parent replaced by a
 * symlink while the purge runs deleted directories outside the root). Here the root is
 * opened once, and every directory below it is opened relative to its already-open
 * parent (`/proc/self/fd/<parent>/<name>`, Linux's openat) with O_NOFOLLOW|O_DIRECTORY,
 * so a symlink anywhere on the way is refused or unlinked, never followed; files are
 * unlinked through the same parent descriptor. Whatever happens to the paths meanwhile,
 * every unlink and rmdir lands in a directory this walk opened under the root.
 *
 * Anything odd (a symlink or a file where a directory should be, another file system
 * mounted inside, a tree deeper than MAX_DEPTH, the directory moved out of the root) is
 * reported as `kept` with the reason, never guessed at.
 */
import { constants } from "node:fs";
import { type FileHandle, lstat, open, readdir, readlink, rmdir, unlink } from "node:fs/promises";
import path from "node:path";

/** What happened to the directory asked for. */
export type DeleteOutcome =
  /** Deleted (or, when inspecting, would be deletable). */
  | { kind: "deleted" }
  /** Nothing was there. */
  | { kind: "gone" }
  /** Left (partly) in place; `reason` says why, for the record. */
  | { kind: "kept"; reason: string };

/** Directories nested deeper than this are not walked (each level holds a descriptor open). */
export const MAX_DEPTH = 256;

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** Thrown inside the walk to stop it with a reason for the record. */
class Refusal extends Error {}

function at(handle: FileHandle, name?: string): string {
  return name === undefined ? `/proc/self/fd/${handle.fd}` : `/proc/self/fd/${handle.fd}/${name}`;
}

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

/** One path segment that names an entry of its parent: not empty, no separator, not `.`/`..`, no NUL. */
export function isEntryName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

/**
 * Opens `name` in `parent` as a directory without following a symlink. Returns undefined
 * when nothing is there; throws Refusal for a symlink or a non-directory.
 */
async function openChild(parent: FileHandle, name: string, shown: string): Promise<FileHandle | undefined> {
  try {
    return await open(at(parent, name), DIR_FLAGS);
  } catch (error) {
    const c = code(error);
    if (c === "ENOENT") return undefined;
    if (c !== "ELOOP" && c !== "ENOTDIR") throw error;
    // Linux answers ENOTDIR for a symlink opened with O_DIRECTORY|O_NOFOLLOW: say which it was.
    const link = await lstat(at(parent, name)).then(
      (s) => s.isSymbolicLink(),
      () => false,
    );
    throw new Refusal(`${shown} ${link ? "is a symlink" : "is not a directory"}`);
  }
}

/**
 * Opens the real root once for one operation. `realRoot` must be the root's real path
 * (resolved once by the caller); a root that is now a symlink is refused.
 */
async function openRoot(realRoot: string): Promise<FileHandle | undefined> {
  try {
    return await open(realRoot, DIR_FLAGS);
  } catch (error) {
    const c = code(error);
    if (c === "ENOENT") return undefined;
    if (c === "ELOOP" || c === "ENOTDIR") throw new Refusal("WORKTREE_ROOT is no longer a directory");
    throw error;
  }
}

/** Where the kernel says an open directory is now; it must still lie strictly below the root. */
async function checkStillBelow(handle: FileHandle, realRoot: string, shown: string): Promise<void> {
  const now = await readlink(at(handle));
  const rel = path.relative(realRoot, now);
  const outside = rel === "" || rel === ".." || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel);
  if (outside || now.endsWith(" (deleted)")) {
    throw new Refusal(`${shown} was moved out of WORKTREE_ROOT during the purge`);
  }
}

/**
 * Deletes `<realRoot>/<segments...>` (or, with `inspect`, only checks it could), by
 * descriptor. `segments` are the path below the root, each one entry name.
 */
export async function deleteBelowRoot(
  realRoot: string,
  segments: readonly string[],
  options: { inspect?: boolean } = {},
): Promise<DeleteOutcome> {
  if (segments.length === 0) return { kind: "kept", reason: "is WORKTREE_ROOT itself" };
  if (!segments.every(isEntryName)) return { kind: "kept", reason: "not a plain path below WORKTREE_ROOT" };
  const opened: FileHandle[] = [];
  try {
    const root = await openRoot(realRoot);
    if (!root) return { kind: "gone" };
    opened.push(root);
    const device = (await root.stat()).dev;
    let parent = root;
    for (let i = 0; i < segments.length; i++) {
      const shown = segments.slice(0, i + 1).join("/");
      const child = await openChild(parent, segments[i] as string, shown);
      if (!child) return { kind: "gone" };
      opened.push(child);
      if ((await child.stat()).dev !== device) throw new Refusal(`${shown} is on another file system`);
      await checkStillBelow(child, realRoot, shown);
      if (i < segments.length - 1) parent = child;
    }
    if (options.inspect) return { kind: "deleted" };
    const target = opened.at(-1) as FileHandle;
    await emptyDirectory(target, device, 1, segments.join("/"));
    // Still checked: a target moved out of the root meanwhile is left (empty) where it went.
    await checkStillBelow(target, realRoot, segments.join("/"));
    try {
      await rmdir(at(parent, segments.at(-1) as string));
    } catch (error) {
      const c = code(error);
      // Gone already, or the name now holds something else (a symlink, a new file): leave that.
      if (c !== "ENOENT" && c !== "ENOTDIR" && c !== "ENOTEMPTY" && c !== "EEXIST") throw error;
      if (c !== "ENOENT") return { kind: "kept", reason: `${segments.join("/")} was replaced during the purge` };
    }
    return { kind: "deleted" };
  } catch (error) {
    if (error instanceof Refusal) return { kind: "kept", reason: error.message };
    throw error;
  } finally {
    await Promise.all(opened.map((h) => h.close().catch(() => undefined)));
  }
}

/**
 * Removes everything inside the open directory `dir`. Subdirectories are opened through
 * `dir` without following symlinks; an entry that turns out to be a symlink or a file is
 * unlinked (which removes the link, never what it points at).
 */
async function emptyDirectory(dir: FileHandle, device: number, depth: number, shown: string): Promise<void> {
  if (depth > MAX_DEPTH) throw new Refusal(`${shown} is nested deeper than ${MAX_DEPTH} directories`);
  let names: string[];
  try {
    names = await readdir(at(dir));
  } catch (error) {
    if (code(error) === "ENOENT") return;
    throw error;
  }
  for (const name of names) {
    const where = at(dir, name);
    let isDirectory: boolean;
    try {
      isDirectory = (await lstat(where)).isDirectory();
    } catch (error) {
      if (code(error) === "ENOENT") continue;
      throw error;
    }
    if (!isDirectory) {
      await unlinkEntry(dir, name);
      continue;
    }
    let child: FileHandle | undefined;
    try {
      child = await open(where, DIR_FLAGS);
    } catch (error) {
      const c = code(error);
      if (c === "ENOENT") continue;
      // Swapped for a symlink or a file since the lstat: unlink the link itself.
      if (c === "ELOOP" || c === "ENOTDIR") {
        await unlinkEntry(dir, name);
        continue;
      }
      throw error;
    }
    try {
      if ((await child.stat()).dev !== device) throw new Refusal(`${shown}/${name} is on another file system`);
      await emptyDirectory(child, device, depth + 1, `${shown}/${name}`);
    } finally {
      await child.close().catch(() => undefined);
    }
    try {
      await rmdir(where);
    } catch (error) {
      const c = code(error);
      if (c === "ENOENT") continue;
      // Replaced by a symlink or a file after it was emptied: unlink that instead.
      if (c === "ENOTDIR") await unlinkEntry(dir, name);
      else throw error;
    }
  }
}

async function unlinkEntry(dir: FileHandle, name: string): Promise<void> {
  try {
    await unlink(at(dir, name));
  } catch (error) {
    const c = code(error);
    if (c === "ENOENT") return;
    // Swapped for a directory since it was looked at: the next purge takes it.
    if (c === "EISDIR" || c === "EPERM") throw new Refusal(`${name} changed while it was being deleted`);
    throw error;
  }
}
