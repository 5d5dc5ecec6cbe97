import { mkdir, rm, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, normalize, sep } from "node:path";
import { execa } from "execa";
import { makeTempDir, removeTempDir } from "./tmp.js";

/** A bare origin, a project clone of it, and a way to move origin ahead of the clone. */
export interface TestRepo {
  /** The temp dir holding everything below; removed by cleanup(). */
  readonly root: string;
  /** The bare repository (`<root>/origin.git`) the clone's `origin` remote points at. */
  readonly origin: string;
  /** A clone of origin: what a project's `repo_path` is in tests. */
  readonly clone: string;
  /** The primary branch. */
  readonly branch: string;
  /**
   * Commits `files` (path -> content; null deletes the file) to origin's branch through a
   * separate scratch clone and returns the new sha. The project clone stays behind until it fetches.
   */
  push(files: Record<string, string | null>, message: string): Promise<string>;
  /** The sha of the branch in origin. */
  head(): Promise<string>;
  /** Removes the whole root (idempotent). */
  cleanup(): Promise<void>;
}

export interface CreateTestRepoOptions {
  /** Primary branch name; default "main". */
  branch?: string;
  /** Files of the initial commit; default a README.md. */
  files?: Record<string, string>;
}

/**
 * The environment for every git command here: no inherited GIT_* variables (a test run from
 * inside a git hook would otherwise act on the wrong repository) and no global or system
 * config, so nothing depends on the machine's ~/.gitconfig.
 */
function gitEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("GIT_")) env[key] = value;
  }
  env.GIT_CONFIG_NOSYSTEM = "1";
  env.GIT_CONFIG_GLOBAL = "/dev/null";
  env.GIT_TERMINAL_PROMPT = "0";
  return env;
}

/** Runs `git <args>` in `cwd` and returns its trimmed stdout; a failure throws execa's error (with stderr). */
export async function runGit(cwd: string, ...args: string[]): Promise<string> {
  const result = await execa("git", args, { cwd, env: gitEnv(), extendEnv: false, stdin: "ignore" });
  return result.stdout.trim();
}

/** Local identity and signing settings, so commits made here or by the code under test never need global config. */
async function configureIdentity(repo: string): Promise<void> {
  await runGit(repo, "config", "user.name", "Formula Runner Tests");
  await runGit(repo, "config", "user.email", "tests@formula-runner.invalid");
  await runGit(repo, "config", "commit.gpgsign", "false");
  await runGit(repo, "config", "tag.gpgsign", "false");
}

async function writeFiles(repo: string, files: Record<string, string | null>): Promise<void> {
  for (const [file, content] of Object.entries(files)) {
    const rel = normalize(file);
    if (isAbsolute(rel) || rel === ".." || rel.startsWith(`..${sep}`)) {
      throw new Error(`test repo file path must stay inside the repository: ${file}`);
    }
    const path = join(repo, rel);
    if (content === null) {
      await rm(path, { force: true });
    } else {
      await mkdir(dirname(path), { recursive: true });
      await writeFile(path, content);
    }
  }
}

/**
 * Creates `<tmp>/fr-git-XXXXXX/` with a bare `origin.git` whose `branch` holds one commit
 * (made in the scratch clone `scratch/`), and `clone/`, a clone of origin.
 */
export async function createTestRepo(opts: CreateTestRepoOptions = {}): Promise<TestRepo> {
  const branch = opts.branch ?? "main";
  const files = opts.files ?? { "README.md": "# test repository\n" };
  const root = await makeTempDir("fr-git-");
  const origin = join(root, "origin.git");
  const scratch = join(root, "scratch");
  const clone = join(root, "clone");
  try {
    await runGit(root, "init", "--quiet", "--bare", "-b", branch, origin);
    await runGit(root, "init", "--quiet", "-b", branch, scratch);
    await configureIdentity(scratch);
    await runGit(scratch, "remote", "add", "origin", origin);
    await writeFiles(scratch, files);
    await runGit(scratch, "add", "--all");
    await runGit(scratch, "commit", "--quiet", "--allow-empty", "-m", "initial commit");
    await runGit(scratch, "push", "--quiet", "-u", "origin", branch);
    await runGit(root, "clone", "--quiet", origin, clone);
    await configureIdentity(clone);
  } catch (error) {
    await removeTempDir(root);
    throw new Error(`createTestRepo failed in ${root}`, { cause: error });
  }

  return {
    root,
    origin,
    clone,
    branch,
    async push(changes, message) {
      // Start from origin's current tip: something else (a run's worktree) may have pushed.
      await runGit(scratch, "fetch", "--quiet", "origin");
      await runGit(scratch, "reset", "--quiet", "--hard", `origin/${branch}`);
      await writeFiles(scratch, changes);
      await runGit(scratch, "add", "--all");
      await runGit(scratch, "commit", "--quiet", "--allow-empty", "-m", message);
      await runGit(scratch, "push", "--quiet", "origin", `HEAD:refs/heads/${branch}`);
      return runGit(scratch, "rev-parse", "HEAD");
    },
    head() {
      return runGit(origin, "rev-parse", `refs/heads/${branch}`);
    },
    cleanup() {
      return removeTempDir(root);
    },
  };
}

/**
 * The paths of a repository's worktrees, as `git worktree list --porcelain` reports them:
 * the main worktree first (for a bare repository, the repository itself), then linked ones,
 * including any whose directory is gone but not yet pruned.
 */
export async function listWorktrees(repoPath: string): Promise<string[]> {
  const out = await runGit(repoPath, "worktree", "list", "--porcelain");
  return out
    .split("\n")
    .filter((line) => line.startsWith("worktree "))
    .map((line) => line.slice("worktree ".length));
}
