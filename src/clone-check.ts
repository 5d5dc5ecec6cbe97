import { stat } from "node:fs/promises";
import type { ProjectConfig } from "./config.js";
import { errorMessage } from "./errors.js";
import { cloneLockFile, withFileLock } from "./worktrees/clone-lock.js";
import { git } from "./worktrees/git.js";

/** What the start-up check of the projects' clones found. */
export interface CloneCheck {
  /** Start-up cannot go on: a run of the project could only fail. */
  problems: string[];
  /** Worth saying, but the project may still work (an origin URL that does not name `repo`). */
  warnings: string[];
}

/** Whether a remote URL names `owner/name` (https, ssh or scp-like, with or without `.git`). */
export function originNames(url: string, repo: string): boolean {
  const tail = url
    .trim()
    .replace(/\/+$/, "")
    .replace(/\.git$/, "")
    .toLowerCase();
  const wanted = repo.toLowerCase();
  return tail.endsWith(`/${wanted}`) || tail.endsWith(`:${wanted}`);
}

/**
 * Checks before serving that every project's `repo_path` (unless the server makes the
 * clone from `clone_url`) is a git clone with an `origin` remote, so a wrong path is found at start with a fix, not by its first run. An origin
 * that does not name the configured `repo` is a warning (mirrors and local paths exist).
 */
export async function checkClones(
  projects: readonly ProjectConfig[],
  env: Readonly<Record<string, string | undefined>>,
): Promise<CloneCheck> {
  const problems: string[] = [];
  const warnings: string[] = [];
  await Promise.all(
    // A project with clone_url gets its clone from the server itself (the "clones" component).
    projects.map(async (project) => {
      if (project.cloneUrl !== undefined) return;
      const at = `project ${project.name}: repo_path ${project.repoPath}`;
      const info = await stat(project.repoPath).catch(() => undefined);
      if (!info?.isDirectory()) {
        problems.push(
          `${at} ${info ? "is not a directory" : "does not exist"}; clone the repository there ` +
            `(git clone <url of ${project.repo}> ${project.repoPath}) or fix repo_path in the config file`,
        );
        return;
      }
      const options = { timeoutMs: 10_000, env, doing: `check the clone of project ${project.name}` };
      // Under the clone's lock, like every git command of the server in a clone: another
      // instance may be fetching or adding a worktree there right now.
      const origin = await withFileLock(await cloneLockFile(project.repoPath), async () => {
        try {
          await git(project.repoPath, ["rev-parse", "--git-dir"], options);
        } catch {
          problems.push(`${at} is not a git clone; clone ${project.repo} there or fix repo_path`);
          return undefined;
        }
        try {
          return await git(project.repoPath, ["remote", "get-url", "origin"], options);
        } catch (error) {
          problems.push(
            `${at} has no remote "origin" (runs fetch origin/${project.primaryBranch}): ` +
              `git -C ${project.repoPath} remote add origin <url of ${project.repo}> (${errorMessage(error).split("\n")[0]})`,
          );
          return undefined;
        }
      });
      if (origin === undefined) return;
      if (!originNames(origin, project.repo)) {
        // A URL may carry credentials (https://user:token@host/...): never repeat them.
        const shown = origin.replace(/\/\/[^/@]*@/, "//");
        warnings.push(`${at}: origin is ${shown}, which does not name ${project.repo}; is this the right clone?`);
      }
    }),
  );
  return { problems: problems.sort(), warnings: warnings.sort() };
}
