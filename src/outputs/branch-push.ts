/**
 * The server's half of a `pull_request` output: the commits the agent made in its worktree
 * go to origin's `formula-runner/<run>` branch, pushed by the server's git with the
 * server's credentials (hooks disabled, see worktrees/git.ts), never by the agent.
 */
import { lstat, readdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import { type RunPaths, runObjectsEnv } from "../runs/run-paths.js";
import { git, worktreeHead } from "../worktrees/git.js";

const GIT_TIMEOUT_MS = 30_000;
const PUSH_TIMEOUT_MS = 120_000;

/** The branch a run's commits are pushed to for its pull request. */
export const outputBranch = (runId: number) => `formula-runner/${runId}`;

export interface PushRequest {
  runId: number;
  project: ProjectConfig;
  paths: RunPaths;
  /** The run's worktree, whose HEAD is proposed. */
  worktreePath: string | undefined;
  /** The branch the pull request targets: HEAD must have commits it lacks. */
  base: string;
  /** The server's environment (its git credentials). */
  env: Readonly<Record<string, string | undefined>>;
}

/** Pushed, or why not: `refused` when there is nothing (allowed) to push, `failed` when git failed. */
export type PushResult =
  | { ok: true; branch: string; sha: string }
  | { ok: false; refusal: { status: "refused" | "failed"; reason: string } };

/**
 * Pushes the worktree's HEAD to `formula-runner/<run>` on origin, from the server (its
 * git, its credentials, hooks disabled), by URL. The agent's commits live in the run's
 * own object store, which borrows the clone's objects; both are given to git.
 */
export async function pushRunHead(request: PushRequest): Promise<PushResult> {
  const { project, paths, worktreePath, runId, base } = request;
  const refuse = (reason: string) => ({ ok: false as const, refusal: { status: "refused" as const, reason } });
  if (!worktreePath) return refuse("the run has no worktree to propose commits from");
  const clone = project.repoPath;
  const branch = outputBranch(runId);
  let extraEnv: Record<string, string> = {};
  const options = (doing: string, timeoutMs = GIT_TIMEOUT_MS) => ({
    timeoutMs,
    doing: `${doing} for run ${runId}`,
    env: request.env,
    extraEnv,
  });
  try {
    // The clone's objects, from the clone itself: the worktree's pointers are the agent's to write.
    const commonDir = await git(
      clone,
      ["rev-parse", "--path-format=absolute", "--git-common-dir"],
      options("find the clone's git directory"),
    );
    const cloneObjects = path.join(commonDir, "objects");
    const store = await checkObjectStore(paths.objectsDir, cloneObjects);
    if (store.problem) return refuse(store.problem);
    if (store.exists) {
      extraEnv = runObjectsEnv(paths.objectsDir, commonDir);
    }
    // HEAD read as a file (no git process on the agent's worktree): a detached sha, or a ref to resolve.
    const head = (await worktreeHead(worktreePath)) ?? "";
    const ref = /^ref: (refs\/\S+)$/.exec(head)?.[1];
    const sha = ref
      ? await git(clone, ["rev-parse", "--verify", "--end-of-options", `${ref}^{commit}`], options("resolve HEAD"))
      : head;
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(sha)) return refuse("the worktree's HEAD names no commit");
    const baseRef = `refs/remotes/origin/${base}`;
    try {
      await git(clone, ["rev-parse", "--verify", "--quiet", "--end-of-options", baseRef], options("find the base"));
    } catch {
      return refuse(`the base branch "${base}" is not known to the project's clone (${baseRef})`);
    }
    const ahead = await git(
      clone,
      ["rev-list", "--count", `${baseRef}..${sha}`],
      options("count the commits to propose"),
    );
    if (ahead === "0") return refuse(`no commits to propose: the worktree's HEAD is already on ${base}`);
    const url = await git(clone, ["remote", "get-url", "--push", "origin"], options("read origin's URL"));
    await git(
      clone,
      ["push", "--force", "--quiet", "--no-verify", url, `${sha}:refs/heads/${branch}`],
      options(`push ${branch}`, PUSH_TIMEOUT_MS),
    );
    return { ok: true, branch, sha };
  } catch (error) {
    // A remote URL may carry credentials (https://user:token@host/...): never repeat them.
    const reason = `pushing ${branch} failed: ${errorMessage(error)}`.replace(/\/\/[^/@\s]+@/g, "//[redacted]@");
    return { ok: false, refusal: { status: "failed", reason } };
  }
}

/**
 * The run's own object store may only hold files and directories of its own, and borrow
 * only from the clone: the agent can write it, and a link or an alternates line to another
 * repository would let the server's push publish that repository's objects.
 */
async function checkObjectStore(
  objectsDir: string,
  cloneObjects: string,
): Promise<{ exists: boolean; problem?: string }> {
  const top = await lstat(objectsDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (!top) return { exists: false };
  const bad = "the run's object store holds links or borrows from another repository; nothing was pushed";
  if (!top.isDirectory()) return { exists: true, problem: bad };
  const pending = [objectsDir];
  for (let dir = pending.pop(); dir !== undefined; dir = pending.pop()) {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) pending.push(path.join(dir, entry.name));
      else if (!entry.isFile()) return { exists: true, problem: bad };
    }
  }
  for (const name of ["alternates", "http-alternates"]) {
    const text = await readFile(path.join(objectsDir, "info", name), "utf8").catch(() => "");
    const lines = text.split("\n").filter((l) => l.trim() !== "" && !l.startsWith("#"));
    if (name === "http-alternates" && lines.length > 0) return { exists: true, problem: bad };
    if (lines.some((l) => path.resolve(objectsDir, l.trim()) !== path.resolve(cloneObjects))) {
      return { exists: true, problem: bad };
    }
  }
  return { exists: true };
}
