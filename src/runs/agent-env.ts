import type { AgentProfile, ProjectConfig } from "../config.js";
import type { Formula } from "../formulas/schema.js";
import { type RunPaths, runObjectsEnv } from "./run-paths.js";

/**
 * Variables of the server's own environment an agent inherits. Everything else (the
 * database URL, the API token, webhook secrets, other projects' tokens, the SSH agent's
 * socket) stays out.
 */
const PASSED_THROUGH = [
  "PATH",
  "HOME",
  "USER",
  "LOGNAME",
  "SHELL",
  "LANG",
  "LANGUAGE",
  "TZ",
  "TERM",
  "IS_SANDBOX",
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
  "NODE_EXTRA_CA_CERTS",
  "SSL_CERT_FILE",
];
/** Prefixes passed through: locale settings and the agent CLIs' own configuration. */
const PASSED_PREFIXES = ["LC_", "ANTHROPIC_", "CLAUDE_", "GIT_AUTHOR_", "GIT_COMMITTER_"];

export interface AgentEnvInput {
  serverEnv: Readonly<Record<string, string | undefined>>;
  profile: AgentProfile;
  formula: Formula;
  project: ProjectConfig;
  runId: number;
  issue: number | undefined;
  paths: RunPaths;
  worktree: string;
  /** The clone's git directory: its objects are the run's object store's alternates. */
  commonDir: string | undefined;
  /** Where the agent can reach this server's API (its own run's routes only). */
  serverUrl: string | undefined;
  /** The run token: valid for this run's own API routes while its agent runs. */
  runToken: string | undefined;
  escalationReply?: string | undefined;
}

/** The complete environment of an agent process, per DESIGN's list, nothing more. */
export function agentEnv(input: AgentEnvInput): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(input.serverEnv)) {
    if (value === undefined) continue;
    if (PASSED_THROUGH.includes(name) || PASSED_PREFIXES.some((p) => name.startsWith(p))) env[name] = value;
  }
  Object.assign(env, input.profile.env, input.formula.env);
  // The raw forge token only where the formula insists ([sandbox] forge_token = true):
  // forge writes otherwise go through checked outputs, with the server's token.
  const token = input.project.token?.reveal();
  if (input.formula.sandbox.forgeToken && input.project.tokenEnv && token) env[input.project.tokenEnv] = token;
  if (input.serverUrl) env.FORMULA_RUNNER_URL = input.serverUrl;
  if (input.runToken) env.FORMULA_RUNNER_TOKEN = input.runToken;
  const { paths } = input;
  // The server's own variables last: a formula cannot override them.
  Object.assign(env, {
    PHASE_FILE: paths.phaseFile,
    SCRATCH_FILE: paths.scratchFile,
    OUTPUTS_FILE: paths.outputsFile,
    TMPDIR: paths.tmpDir,
    // Claude Code's own state (conversations for --resume) per run, not in the server user's ~/.claude.
    CLAUDE_CONFIG_DIR: paths.claudeConfigDir,
    // The agent's commits go to the run's own object store; the clone's stay read-only.
    ...runObjectsEnv(paths.objectsDir, input.commonDir),
    RUN_ID: String(input.runId),
    FORMULA: input.formula.name,
    PROJECT: input.project.name,
    PROJECT_REPO_ROOT: input.project.repoPath,
    WORKTREE: input.worktree,
    PRIMARY_BRANCH: input.project.primaryBranch,
  });
  if (input.issue !== undefined) env.ISSUE = String(input.issue);
  if (input.escalationReply !== undefined) env.ESCALATION_REPLY = input.escalationReply;
  return env;
}

/** `command` of a profile with the model and resume arguments filled in. */
export function agentCommand(
  profile: AgentProfile,
  model: string | undefined,
  resumeSessionId: string | undefined,
): string[] {
  const argv = [...profile.command];
  if (model !== undefined) argv.push(...profile.modelArgs.map((a) => a.replaceAll("{model}", model)));
  if (resumeSessionId !== undefined && profile.resumeArgs.length > 0) {
    argv.push(...profile.resumeArgs.map((a) => a.replaceAll("{session_id}", resumeSessionId)));
  }
  return argv;
}

/**
 * Why the agent cannot start here, when that is known in advance: Claude Code refuses
 * `--dangerously-skip-permissions` under root unless IS_SANDBOX=1 (exactly; "yes" does
 * not count), and says so only in a line of its output. Undefined when nothing is wrong.
 */
export function rootRefusal(
  command: readonly string[],
  env: Readonly<Record<string, string>>,
  uid = process.getuid?.(),
): string | undefined {
  if (uid !== 0 || !command.includes("--dangerously-skip-permissions") || env.IS_SANDBOX === "1") return undefined;
  return (
    "Claude Code refuses --dangerously-skip-permissions when it runs as root. Run formula-runner as a non-root user " +
    "(the container image does), or, on a disposable sandbox only, start the server with IS_SANDBOX=1"
  );
}
