/**
 * Path safety for worktree directories. Nothing is ever deleted unless it is strictly
 * inside WORKTREE_ROOT, both as written and after every symlink is resolved: a row whose
 * path says `root/../etc`, or a directory that was replaced by a symlink to somewhere
 * else, is refused instead of followed.
 */
import { lstat, realpath } from "node:fs/promises";
import path from "node:path";

/** A project or formula name used as one path segment: no separators, no `..`, no dot files. */
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function isSafeSegment(value: string): boolean {
  return SEGMENT.test(value) && !value.includes("..") && value.length <= 200;
}

/** The directory name of a run's worktree: `<formula>-<runId>`. */
export function worktreeDirName(formula: string, runId: number): string {
  return `${formula}-${runId}`;
}

/** Parses `<formula>-<runId>` (the formula part may itself contain dashes). */
export function parseWorktreeDirName(name: string): { formula: string; runId: number } | undefined {
  const match = /^(.+)-(\d{1,15})$/.exec(name);
  if (!match) return undefined;
  return { formula: match[1] as string, runId: Number(match[2]) };
}

/**
 * `<root>/<project>/<formula>-<runId>`. Throws when a name could escape its segment
 * (config and formula names are slugs already; this is the second lock on the door).
 */
export function worktreePath(root: string, project: string, formula: string, runId: number): string {
  if (!isSafeSegment(project)) throw new Error(`project name ${JSON.stringify(project)} cannot be a directory name`);
  if (!isSafeSegment(formula)) throw new Error(`formula name ${JSON.stringify(formula)} cannot be a directory name`);
  if (!Number.isSafeInteger(runId) || runId <= 0) throw new Error(`run id ${runId} is not a positive integer`);
  return path.join(path.resolve(root), project, worktreeDirName(formula, runId));
}

/** True when `candidate` is strictly below `root`, comparing the paths as written (no file system access). */
export function isLexicallyInside(root: string, candidate: string): boolean {
  const rel = path.relative(path.resolve(root), path.resolve(candidate));
  return rel !== "" && rel !== ".." && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

/** How many segments `candidate` lies below `root` (0 for the root itself); assumes it is inside. */
export function depthBelow(root: string, candidate: string): number {
  const rel = path.relative(path.resolve(root), path.resolve(candidate));
  return rel === "" ? 0 : rel.split(path.sep).length;
}

/**
 * True when both paths exist and the real path of `candidate` (every symlink resolved)
 * is strictly inside the real path of `root`. The root itself is not inside.
 */
export async function isInside(root: string, candidate: string): Promise<boolean> {
  if (!isLexicallyInside(root, candidate)) return false;
  try {
    const [realRoot, realCandidate] = await Promise.all([realpath(root), realpath(candidate)]);
    return isLexicallyInside(realRoot, realCandidate);
  } catch {
    return false;
  }
}

/** What may be done with a path about to be deleted. */
export type DeletionCheck =
  /** Delete `realPath`: it is the path as written, below the real root, with no symlink on the way. */
  | { kind: "deletable"; realPath: string }
  /** Nothing exists there any more: nothing to delete. */
  | { kind: "gone" }
  /** Never delete it; `reason` says why, for the record. */
  | { kind: "refused"; reason: string };

export const OUTSIDE_ROOT = "outside WORKTREE_ROOT";
export const SYMLINK_OUTSIDE_ROOT = "symlink leads outside WORKTREE_ROOT";
export const SYMLINK_INSIDE_ROOT = "path goes through a symlink inside WORKTREE_ROOT";
export const DANGLING_SYMLINK = "dangling symlink";
export const IS_ROOT = "is WORKTREE_ROOT itself";

/**
 * Decides whether `candidate` may be deleted as a worktree below `root`.
 *
 * Deletable only if it lies strictly below root as written AND its real path is exactly
 * the real root joined with the same relative path: a symlink anywhere below the root
 * (to outside, or to another worktree inside) is refused, because deleting through it
 * would remove something the row does not describe. `fs.rm` does not follow symlinks
 * *inside* the directory it removes, so links an agent left in its worktree are safe.
 */
export async function checkDeletable(root: string, candidate: string): Promise<DeletionCheck> {
  const resolvedRoot = path.resolve(root);
  const resolvedCandidate = path.resolve(candidate);
  if (resolvedCandidate === resolvedRoot) return { kind: "refused", reason: IS_ROOT };
  if (!isLexicallyInside(resolvedRoot, resolvedCandidate)) return { kind: "refused", reason: OUTSIDE_ROOT };

  try {
    await lstat(resolvedCandidate);
  } catch (error) {
    if (isMissing(error)) return { kind: "gone" };
    throw error;
  }
  let realRoot: string;
  let realCandidate: string;
  try {
    [realRoot, realCandidate] = await Promise.all([realpath(resolvedRoot), realpath(resolvedCandidate)]);
  } catch (error) {
    // A dangling symlink: nothing behind it to delete, and no way to tell where it meant to go.
    if (isMissing(error)) return { kind: "refused", reason: DANGLING_SYMLINK };
    throw error;
  }
  if (realCandidate === realRoot) return { kind: "refused", reason: IS_ROOT };
  if (!isLexicallyInside(realRoot, realCandidate)) return { kind: "refused", reason: SYMLINK_OUTSIDE_ROOT };
  const expected = path.join(realRoot, path.relative(resolvedRoot, resolvedCandidate));
  if (realCandidate !== expected) return { kind: "refused", reason: SYMLINK_INSIDE_ROOT };
  return { kind: "deletable", realPath: realCandidate };
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}
