/**
 * What one agent session may reach, and the wrap that enforces it (DESIGN, "What an agent
 * can reach"). The policy is built from the run's own paths only: writable its worktree,
 * the worktree's admin directory in the clone (HEAD, index, per-worktree refs) and the
 * run's `agent/` directory; invisible DATA_DIR, WORKTREE_ROOT, every other project's clone,
 * the server user's credential stores and whatever `[sandbox] deny_read` lists; network
 * only to the formula's `allow_hosts` and the profile's model API hosts.
 */
import os from "node:os";
import path from "node:path";
import type { AgentProfile, Config, ProjectConfig } from "../config.js";
import type { Formula } from "../formulas/schema.js";
import { findProgram, hostOfUrl, type SandboxHost, type SandboxMode, type SandboxPolicy } from "../sessions/sandbox.js";
import type { RunPaths } from "./run-paths.js";

/** Credential stores under the server user's home that no agent may read. */
const HOME_SECRETS = [
  ".ssh",
  ".aws",
  ".azure",
  ".config/gcloud",
  ".config/gh",
  ".config/hub",
  ".docker",
  ".kube",
  ".gnupg",
  ".netrc",
  ".git-credentials",
  ".pgpass",
  ".npmrc",
  ".pypirc",
  ".cargo/credentials.toml",
  ".claude",
  ".claude.json",
  ".npm",
];

/** The sandbox mode a run gets: the formula's, else its agent profile's, else the server's. */
export function sandboxModeFor(formula: Formula, profile: AgentProfile, config: Config): SandboxMode {
  return formula.sandbox.mode ?? profile.sandbox ?? config.sandbox.mode;
}

/** The hosts a session may reach: the formula's list, the profile's model hosts, ANTHROPIC_BASE_URL's host. */
export function allowedHosts(formula: Formula, profile: AgentProfile, env: Readonly<Record<string, string>>): string[] {
  const base = hostOfUrl(env.ANTHROPIC_BASE_URL);
  return [...new Set([...formula.sandbox.allowHosts, ...profile.modelHosts, ...(base ? [base] : [])])];
}

export interface PolicyInput {
  config: Config;
  project: ProjectConfig;
  formula: Formula;
  profile: AgentProfile;
  worktree: string;
  /** `<clone>/.git/worktrees/<name>`: the worktree's HEAD, index and refs live here. */
  adminDir: string;
  paths: RunPaths;
  env: Readonly<Record<string, string>>;
}

export function sandboxPolicy(input: PolicyInput): SandboxPolicy {
  const { config, project, paths, worktree, adminDir } = input;
  // The HOME agents get (the server's environment) and the server process's own, when they differ.
  const homes = [...new Set([input.env.HOME, os.homedir()].filter((h): h is string => h !== undefined && h !== ""))];
  const otherClones = config.projects.filter((p) => p.name !== project.name).map((p) => p.repoPath);
  return {
    allowWrite: [worktree, adminDir, paths.agentDir],
    // The link back to the clone, and the admin dir's pointers, stay as the server made them.
    denyWrite: [path.join(worktree, ".git"), path.join(adminDir, "commondir"), path.join(adminDir, "gitdir")],
    denyRead: [
      config.settings.dataDir,
      config.settings.worktreeRoot,
      ...otherClones,
      ...homes.flatMap((home) => HOME_SECRETS.map((p) => path.join(home, p))),
      // The library's shared scratch directory: private per sandbox once denied.
      "/tmp/claude",
      ...config.sandbox.denyRead,
    ],
    allowRead: [worktree, paths.agentDir, paths.launchDir, project.repoPath],
    hosts: allowedHosts(input.formula, input.profile, input.env),
  };
}

/** How a session's agent process is started, and what the run record says about it. */
export type Contained =
  /** `bySandbox`: refused for want of a sandbox (`required`), not for a missing program. */
  | { kind: "refused"; reason: string; bySandbox: boolean }
  | {
      kind: "ready";
      sandboxed: boolean;
      /** Why the agent runs unsandboxed, when it does. */
      note: string | undefined;
      command: string[];
      env: Record<string, string>;
      close(): void;
    };

/**
 * Wraps a session's command for its sandbox mode. `required` without a usable sandbox is
 * refused (the run fails before any agent starts); `auto` without one runs unsandboxed
 * with a note for the run record and the log.
 */
export async function contain(
  host: SandboxHost,
  mode: SandboxMode,
  command: readonly string[],
  env: Record<string, string>,
  input: PolicyInput,
): Promise<Contained> {
  const plain = (note: string) => ({
    kind: "ready" as const,
    sandboxed: false,
    note,
    command: [...command],
    env,
    close() {},
  });
  if (mode === "off") return plain('[sandbox] mode = "off": the agent runs unsandboxed');
  const program = await findProgram(command[0] ?? "", env.PATH);
  if (!program.ok) return { kind: "refused", reason: program.reason, bySandbox: false };
  const probe = await host.probe();
  if (!probe.ok) {
    if (mode === "required") {
      return { kind: "refused", reason: `[sandbox] mode = "required" but ${probe.reason}`, bySandbox: true };
    }
    return plain(`no sandbox on this host (${probe.reason}); the agent runs unsandboxed`);
  }
  const wrap = await host.wrap(command, {
    cwd: input.worktree,
    policy: sandboxPolicy(input),
    argvFile: path.join(input.paths.launchDir, "argv"),
    tmpDir: input.paths.tmpDir,
  });
  return {
    kind: "ready",
    sandboxed: true,
    note: undefined,
    command: wrap.argv,
    env: { ...env, ...wrap.env },
    close: wrap.close,
  };
}
