import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";
import { execa } from "execa";
import { errorMessage } from "../errors.js";
import { fillPlaceholders } from "../formulas/placeholders.js";
import type { ContextFile, ContextOutput } from "../formulas/prompt.js";
import type { Formula } from "../formulas/schema.js";
import type { Logger } from "../logger.js";
import { HARDENED_CONFIG } from "../worktrees/git.js";

const MAX_CONTEXT_FILE_BYTES = 256 * 1024;
const MAX_COMMAND_OUTPUT_BYTES = 64 * 1024;
const COMMAND_TIMEOUT_MS = 60_000;

function inside(root: string, candidate: string): boolean {
  const relative = path.relative(root, candidate);
  return relative !== "" && !relative.startsWith("..") && !path.isAbsolute(relative);
}

/**
 * Reads `[context] files`: from the run's worktree (the fetched primary branch), else
 * from the project's clone. A file whose real path leaves its repository (a symlink to
 * /etc, say) is refused: context files must not become a way to read the host.
 */
export async function readContextFiles(formula: Formula, worktree: string, repoPath: string): Promise<ContextFile[]> {
  return Promise.all(
    formula.context.files.map(async (file): Promise<ContextFile> => {
      let lastProblem = "not found";
      for (const root of [worktree, repoPath]) {
        const candidate = path.join(root, file);
        try {
          const [realRoot, realFile] = await Promise.all([realpath(root), realpath(candidate)]);
          if (!inside(realRoot, realFile)) {
            lastProblem = "it leads outside the repository";
            continue;
          }
          const info = await stat(realFile);
          if (!info.isFile()) {
            lastProblem = "not a regular file";
            continue;
          }
          const buffer = await readFile(realFile);
          const truncated = buffer.length > MAX_CONTEXT_FILE_BYTES;
          const content = buffer.subarray(0, MAX_CONTEXT_FILE_BYTES).toString("utf8");
          return { path: file, content: truncated ? `${content}\n(truncated at 256 KiB)` : content };
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "ENOENT") lastProblem = errorMessage(error);
        }
      }
      return { path: file, missing: lastProblem };
    }),
  );
}

export interface CommandPlaceholders {
  worktree: string;
  project: string;
  formula: string;
  run_id: number;
  repo_root: string;
  primary_branch: string;
}

/**
 * Runs `[context] commands` in the worktree, one after the other (argument arrays, never
 * a shell; 60 s each). A failing command is logged and left out of the prompt: context
 * is a help, not a precondition.
 */
export async function runContextCommands(
  formula: Formula,
  values: CommandPlaceholders,
  env: Readonly<Record<string, string>>,
  log: Logger,
): Promise<ContextOutput[]> {
  const outputs: ContextOutput[] = [];
  for (const template of formula.context.commands) {
    const argv = template.map((arg) => fillPlaceholders(arg, { ...values }));
    const [program, ...args] = argv;
    if (!program) continue;
    const result = await execa(program, args, {
      cwd: values.worktree,
      env,
      extendEnv: false,
      reject: false,
      timeout: COMMAND_TIMEOUT_MS,
      stdin: "ignore",
      maxBuffer: 16 * 1024 * 1024,
      stripFinalNewline: false,
    });
    if (result.failed) {
      const why = result.timedOut ? `timed out after ${COMMAND_TIMEOUT_MS / 1000} s` : result.shortMessage;
      log.warn(
        { argv, stderr: String(result.stderr ?? "").slice(-2000) },
        `context command failed, left out of the prompt: ${why}`,
      );
      continue;
    }
    const stdout = String(result.stdout ?? "");
    const truncated = Buffer.byteLength(stdout) > MAX_COMMAND_OUTPUT_BYTES;
    outputs.push({
      argv,
      stdout: truncated ? Buffer.from(stdout).subarray(0, MAX_COMMAND_OUTPUT_BYTES).toString("utf8") : stdout,
      truncated,
    });
  }
  return outputs;
}

/** `git status --short` and `git diff --stat` of a worktree, for a recovery prompt. */
export async function worktreeState(
  worktree: string,
  objectsEnv: Readonly<Record<string, string>> = {},
): Promise<{ gitStatus: string; diffStat: string }> {
  const git = async (...args: string[]) => {
    const result = await execa("git", [...HARDENED_CONFIG, ...args], { cwd: worktree, reject: false, env: objectsEnv });
    return result.failed ? `(git ${args.join(" ")} failed: ${result.shortMessage})` : String(result.stdout);
  };
  const [gitStatus, diffStat] = await Promise.all([git("status", "--short"), git("diff", "--stat")]);
  return { gitStatus, diffStat };
}
