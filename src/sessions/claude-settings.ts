/**
 * The Claude Code settings file a `claude` session is started with (`--settings <file>`),
 * carrying the two hooks of the bash design (DESIGN, "Behaviour carried over from the
 * bash design"):
 * - SessionStart, matcher `compact`: after a context compaction, the phase protocol is
 *   printed to stdout, which Claude Code gives to the model;
 * - PreToolUse, matcher `Bash`: ./bash-guard-hook.ts refuses a force-push to the primary
 *   branch, a checkout of it, and `rm -rf` outside the worktree (exit 2, reason on stderr).
 *
 * The file lives in the run directory, not in the worktree's `.claude/settings.json` as in
 * the bash design: the worktree is the project's checkout, and a file written there could
 * be committed by the agent or clash with the project's own `.claude/` (Claude Code merges
 * hooks from every settings source, so the project's hooks still run).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export interface ClaudeSettingsOptions {
  /** The run's own directory (outside the worktree); both files are written here. */
  runDir: string;
  /** Absolute path of the run's worktree, where `rm -rf` must stay. */
  worktree: string;
  /** The project's primary branch, which must not be force-pushed or checked out. */
  primaryBranch: string;
  /** The phase-protocol text given to the agent again after a compaction. */
  phaseProtocol: string;
}

/** File names inside the run directory. */
export const PHASE_PROTOCOL_FILE = "phase-protocol.md";
export const CLAUDE_SETTINGS_FILE = "claude-settings.json";

/** Seconds Claude Code waits for a hook; past it the call goes ahead. Node starts in well under one. */
const HOOK_TIMEOUT_SECONDS = 30;

/**
 * Quotes a value as one word for a POSIX shell: in single quotes, each `'` written as
 * `'\''`. Nothing inside single quotes is special, so any path or branch name survives.
 */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The CLI arguments that make Claude Code load a settings file written by {@link writeClaudeSettings}. */
export function claudeSettingsArgs(file: string): string[] {
  return ["--settings", file];
}

/**
 * The argv that runs the Bash guard hook with the node running this server. Next to a
 * `.ts` module (development, under tsx) the hook is TypeScript too and needs tsx's loader,
 * given as an absolute file URL because the hook runs with the worktree as its cwd, where
 * a bare `--import tsx` would not resolve. Next to a compiled `.js` module, plain node.
 * `moduleUrl` is this module's URL; tests pass others.
 */
export function bashGuardHookArgv(
  options: { worktree: string; primaryBranch: string },
  moduleUrl: string = import.meta.url,
): string[] {
  const typescript = new URL(moduleUrl).pathname.endsWith(".ts");
  const hook = fileURLToPath(new URL(typescript ? "./bash-guard-hook.ts" : "./bash-guard-hook.js", moduleUrl));
  const loader = typescript ? ["--import", import.meta.resolve("tsx")] : [];
  return [process.execPath, ...loader, hook, "--worktree", options.worktree, "--primary", options.primaryBranch];
}

/** A command hook: Claude Code runs `command` with a shell (bash). */
export interface ClaudeCommandHook {
  type: "command";
  command: string;
  timeout: number;
}

/** The part of Claude Code's settings schema written here. */
export interface ClaudeSettings {
  hooks: Record<"SessionStart" | "PreToolUse", { matcher: string; hooks: ClaudeCommandHook[] }[]>;
}

/** The settings object: only hooks. Every value in a command is passed through {@link shellQuote}. */
export function claudeSettings(
  options: { protocolFile: string; worktree: string; primaryBranch: string },
  moduleUrl: string = import.meta.url,
): ClaudeSettings {
  const guard = bashGuardHookArgv(options, moduleUrl).map(shellQuote).join(" ");
  return {
    hooks: {
      SessionStart: [
        {
          matcher: "compact",
          hooks: [
            { type: "command", command: `cat -- ${shellQuote(options.protocolFile)}`, timeout: HOOK_TIMEOUT_SECONDS },
          ],
        },
      ],
      PreToolUse: [{ matcher: "Bash", hooks: [{ type: "command", command: guard, timeout: HOOK_TIMEOUT_SECONDS }] }],
    },
  };
}

/**
 * Writes `<runDir>/phase-protocol.md` and `<runDir>/claude-settings.json` (mode 0600;
 * the directory is created if missing) and returns the settings file's path, for
 * {@link claudeSettingsArgs}. Writing again (a resumed session) replaces both.
 */
export async function writeClaudeSettings(options: ClaudeSettingsOptions): Promise<string> {
  await mkdir(options.runDir, { recursive: true });
  const protocolFile = join(options.runDir, PHASE_PROTOCOL_FILE);
  const settingsFile = join(options.runDir, CLAUDE_SETTINGS_FILE);
  await writeFile(protocolFile, options.phaseProtocol, { mode: 0o600 });
  const settings = claudeSettings({ protocolFile, worktree: options.worktree, primaryBranch: options.primaryBranch });
  await writeFile(settingsFile, `${JSON.stringify(settings, null, 2)}\n`, { mode: 0o600 });
  return settingsFile;
}
