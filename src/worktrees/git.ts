/**
 * The git commands worktree management needs, run with execa and argument arrays (never a
 * shell). execa rather than simple-git: simple-git waits ~50 ms extra after every command
 * that prints nothing (`worktree add --quiet`, `worktree prune`), which would dominate
 * the cost of making and pruning worktrees.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { execa } from "execa";

/** A git command (or the file system around one) failed; the message includes git's own words. */
export class WorktreeError extends Error {
  /** What git printed on stderr (or the reason when git was never reached), for the run record. */
  readonly gitMessage: string;

  constructor(message: string, options: { gitMessage: string; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "WorktreeError";
    this.gitMessage = options.gitMessage;
  }
}

/**
 * Variables that point git at another repository, index or object store (the list of
 * `git rev-parse --local-env-vars`). Inherited from a parent git process (the server
 * started from a hook, say), they would make every command here act on the wrong
 * repository; anything else (GIT_SSH_COMMAND, GIT_ASKPASS, ...) is passed through.
 */
const REPOSITORY_ENV = new Set([
  "GIT_ALTERNATE_OBJECT_DIRECTORIES",
  "GIT_CONFIG",
  "GIT_CONFIG_PARAMETERS",
  "GIT_CONFIG_COUNT",
  "GIT_OBJECT_DIRECTORY",
  "GIT_DIR",
  "GIT_WORK_TREE",
  "GIT_IMPLICIT_WORK_TREE",
  "GIT_GRAFT_FILE",
  "GIT_INDEX_FILE",
  "GIT_NO_REPLACE_OBJECTS",
  "GIT_REPLACE_REF_BASE",
  "GIT_PREFIX",
  "GIT_INTERNAL_SUPER_PREFIX",
  "GIT_SHALLOW_FILE",
  "GIT_COMMON_DIR",
  "GIT_CEILING_DIRECTORIES",
]);

function gitEnv(repo: string, base: Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(base)) {
    if (!REPOSITORY_ENV.has(key) && !/^GIT_CONFIG_(KEY|VALUE)_\d+$/.test(key)) env[key] = value;
  }
  // Never wait for a password on a terminal nobody watches.
  env.GIT_TERMINAL_PROMPT = "0";
  // A repo_path that is not itself a repository must fail, not silently use an enclosing one.
  env.GIT_CEILING_DIRECTORIES = path.dirname(path.resolve(repo));
  return env;
}

/**
 * Settings on every git command of the server, whatever the repository's config says:
 * no hooks (an agent that planted `.git/hooks/post-checkout` in a clone must not get it
 * run with the server's environment), no fsmonitor daemon (config can name a program to
 * run), no automatic gc or maintenance (a command must not spawn background work in a
 * clone an agent's run borrows objects from).
 */
export const HARDENED_CONFIG: readonly string[] = [
  "-c",
  "core.hooksPath=/dev/null",
  "-c",
  "core.fsmonitor=false",
  "-c",
  "gc.auto=0",
  "-c",
  "maintenance.auto=false",
  "-c",
  "protocol.ext.allow=never",
];

export interface GitOptions {
  /** Kill git after this long (a fetch from a remote that never answers). */
  timeoutMs: number;
  /** What the caller was doing, for the error message ("fetch origin/main for run 12"). */
  doing: string;
  /** The server's environment, which git inherits (less the variables that redirect it). */
  env: Readonly<Record<string, string | undefined>>;
  /**
   * Variables set after the repository variables are cleared: a run's own object store
   * (GIT_OBJECT_DIRECTORY + GIT_ALTERNATE_OBJECT_DIRECTORIES), an explicit GIT_DIR.
   */
  extraEnv?: Readonly<Record<string, string>>;
}

/** Runs `git -C <repo> <args>` and returns trimmed stdout; any failure throws WorktreeError with git's stderr. */
export async function git(repo: string, args: readonly string[], options: GitOptions): Promise<string> {
  const result = await execa("git", [...HARDENED_CONFIG, "-C", repo, ...args], {
    env: { ...gitEnv(repo, options.env), ...options.extraEnv },
    extendEnv: false,
    stdin: "ignore",
    reject: false,
    timeout: options.timeoutMs,
    forceKillAfterDelay: 2_000,
    maxBuffer: 4 * 1024 * 1024,
  });
  if (!result.failed) return result.stdout.trim();
  const stderr = tail(result.stderr.trim(), 2_000);
  const why = result.timedOut
    ? `timed out after ${options.timeoutMs} ms`
    : result.exitCode === undefined
      ? (result.originalMessage ?? result.shortMessage ?? "did not start")
      : `exit ${result.exitCode}`;
  const gitMessage =
    stderr || (result.timedOut ? `timed out after ${options.timeoutMs} ms` : (result.shortMessage ?? why));
  throw new WorktreeError(
    `could not ${options.doing}: git ${args.join(" ")} in ${repo} failed (${why}): ${gitMessage}`,
    {
      gitMessage,
      cause: result,
    },
  );
}

function tail(text: string, max: number): string {
  return text.length <= max ? text : `...${text.slice(-max)}`;
}

/**
 * The administrative directory of a linked worktree (`<clone>/.git/worktrees/<name>`), read
 * from the `gitdir:` line of its `.git` file; undefined when it is not a linked worktree.
 */
export async function worktreeAdminDir(worktree: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(worktree, ".git"), "utf8");
  } catch {
    return undefined;
  }
  const match = /^gitdir: (.+)$/m.exec(text);
  return match ? path.resolve(worktree, (match[1] as string).trim()) : undefined;
}

/** The repository's common git directory (`<clone>/.git`) a linked worktree belongs to. */
export async function worktreeCommonDir(worktree: string): Promise<string | undefined> {
  const admin = await worktreeAdminDir(worktree);
  if (!admin) return undefined;
  try {
    return path.resolve(admin, (await readFile(path.join(admin, "commondir"), "utf8")).trim());
  } catch {
    // Older layouts have no commondir file: the admin dir is always <common>/worktrees/<name>.
    return path.dirname(path.dirname(admin));
  }
}

/** The commit a detached worktree's HEAD names, read from its admin directory (no process). */
export async function worktreeHead(worktree: string): Promise<string | undefined> {
  const admin = await worktreeAdminDir(worktree);
  if (!admin) return undefined;
  try {
    return (await readFile(path.join(admin, "HEAD"), "utf8")).trim();
  } catch {
    return undefined;
  }
}
