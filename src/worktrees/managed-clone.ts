/**
 * Clones managed by the server: a project with `clone_url` whose `repo_path` is missing is
 * cloned there (at start, and again before a run if the volume was wiped), and every fetch
 * from it carries the project's forge token.
 *
 * The token reaches git only through the environment of the one git command that needs it
 * and a credential helper scoped to the clone URL's host, given with `-c` on that command:
 * never in `.git/config`, a URL, the argument list or a credential store (the helper list
 * is reset first, so a `credential.helper=store` in the user's config never sees it).
 */
import { randomUUID } from "node:crypto";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { ProjectConfig } from "../config.js";
import type { Logger } from "../logger.js";
import { withFileLock } from "./clone-lock.js";
import { git } from "./git.js";

/** The variable the credential helper reads the token from (set only on git commands that fetch). */
export const GIT_TOKEN_VAR = "FORMULA_RUNNER_GIT_TOKEN";

/**
 * The helper git runs for credentials (`sh -c`): fixed text naming a variable, so no secret
 * and nothing from outside is ever part of it. Answers `get` only; `store`/`erase` do nothing.
 */
const HELPER = `!f() { test "$1" = get || exit 0; echo username=x-access-token; echo "password=$${GIT_TOKEN_VAR}"; }; f`;

/** Extra git arguments and environment that authenticate one command against the project's forge. */
export interface GitCredentials {
  /** `-c` options to put before the git subcommand. */
  args: readonly string[];
  /** Variables to add to that one command's environment. */
  env: Readonly<Record<string, string>>;
}

const NONE: GitCredentials = Object.freeze({ args: Object.freeze([]), env: Object.freeze({}) });

/**
 * Credentials for git commands that talk to `project`'s clone URL: an https (or http) URL
 * and a token set; nothing otherwise (ssh keys and local paths need none from us).
 */
export function gitCredentials(project: Pick<ProjectConfig, "cloneUrl" | "token">): GitCredentials {
  const token = project.token?.reveal();
  if (!project.cloneUrl || !token) return NONE;
  let url: URL;
  try {
    url = new URL(project.cloneUrl);
  } catch {
    return NONE;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return NONE;
  const scope = `credential.${url.protocol}//${url.host}`;
  return {
    args: ["-c", `${scope}.helper=`, "-c", `${scope}.helper=${HELPER}`, "-c", `${scope}.useHttpPath=false`],
    env: { [GIT_TOKEN_VAR]: token },
  };
}

export interface EnsureCloneOptions {
  env: Readonly<Record<string, string | undefined>>;
  log: Logger;
  /** Kill `git clone` after this long; default 10 min. */
  timeoutMs?: number;
}

/** What ensureClone found or did. */
export type CloneOutcome = "not-managed" | "present" | "cloned";

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/**
 * Makes sure `project.repoPath` holds a clone when the project has a `clone_url`: clones
 * into a temporary directory beside it and renames it into place, so a clone cut short
 * never passes for a clone. Several processes may call this at once: one clones (under a
 * lock file beside the clone), the others find it done. Throws WorktreeError with git's words.
 */
export async function ensureClone(project: ProjectConfig, options: EnsureCloneOptions): Promise<CloneOutcome> {
  const cloneUrl = project.cloneUrl;
  if (!cloneUrl) return "not-managed";
  const repo = path.resolve(project.repoPath);
  if (await exists(repo)) return "present";
  const parent = path.dirname(repo);
  await mkdir(parent, { recursive: true });
  const lockFile = path.join(parent, `.${path.basename(repo)}.formula-runner.lock`);
  return withFileLock(
    lockFile,
    async () => {
      if (await exists(repo)) return "present";
      const temp = path.join(parent, `.${path.basename(repo)}.cloning-${randomUUID()}`);
      const credentials = gitCredentials(project);
      try {
        await git(
          parent,
          [
            ...credentials.args,
            "clone",
            "--quiet",
            "--origin",
            "origin",
            "--branch",
            project.primaryBranch,
            "--",
            cloneUrl,
            temp,
          ],
          {
            timeoutMs: options.timeoutMs ?? 10 * 60_000,
            env: { ...options.env, ...credentials.env },
            doing: `clone ${project.name} into ${repo}`,
          },
        );
        await rename(temp, repo);
      } finally {
        await rm(temp, { recursive: true, force: true });
      }
      options.log.info({ project: project.name, repoPath: repo }, `cloned ${project.name} into ${repo}`);
      return "cloned";
    },
    { doing: `clone ${project.name}` },
  );
}
