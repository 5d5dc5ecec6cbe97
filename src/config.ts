import { readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import { Secret } from "./secrets.js";
import { ConfigError, readSettings, type Settings } from "./settings.js";
import { fieldIssues, formatPath, schemaKeysAt } from "./validation.js";

export { ConfigError, type Settings };

/** Forges formula-runner speaks to. Gitea and Forgejo share one REST dialect. */
export const FORGES = ["github", "gitea", "forgejo"] as const;
export type Forge = (typeof FORGES)[number];

/** One repository on one forge, with a local clone on this host. */
export interface ProjectConfig {
  name: string;
  repoPath: string;
  primaryBranch: string;
  forge: Forge;
  forgeUrl: string;
  /** `owner/name` on the forge. */
  repo: string;
  tokenEnv: string | undefined;
  token: Secret | undefined;
  webhookSecretEnv: string | undefined;
  webhookSecret: Secret | undefined;
  botLogin: string | undefined;
  escalationIssue: number | undefined;
  /**
   * The formulas this project's schedules and webhooks fire (`*`: all). Unset or empty:
   * none, unless a formula lists the project in its own `projects`.
   */
  formulas?: readonly string[];
}

/** How to start one kind of agent. `{model}` and `{session_id}` are filled in per session. */
/** How the server reads an agent's stdout: plain text, or Claude Code's JSON lines. */
export const AGENT_OUTPUTS = ["text", "stream-json"] as const;
export type AgentOutput = (typeof AGENT_OUTPUTS)[number];

export interface AgentProfile {
  name: string;
  command: readonly string[];
  modelArgs: readonly string[];
  resumeArgs: readonly string[];
  env: Readonly<Record<string, string>>;
  /**
   * `stream-json`: stdout is read as Claude Code's JSON lines (session id for --resume,
   * turns, cost, API errors, the final result). Default: `stream-json` when the command
   * asks for that output format, else `text`.
   */
  output: AgentOutput;
  /**
   * Give the agent the runner's Claude Code settings (`--settings FILE`): the phase
   * protocol again after a context compaction, and a guard on Bash. Default: true when
   * the program is `claude`.
   */
  claudeSettings: boolean;
}

/** The profile defaults that follow from its command. */
export function agentDefaults(command: readonly string[]): Pick<AgentProfile, "output" | "claudeSettings"> {
  const streamJson = command.some(
    (arg, i) =>
      arg === "--output-format=stream-json" || (arg === "stream-json" && command[i - 1] === "--output-format"),
  );
  return { output: streamJson ? "stream-json" : "text", claudeSettings: path.basename(command[0] ?? "") === "claude" };
}

export interface Config {
  settings: Settings;
  projects: readonly ProjectConfig[];
  agents: Readonly<Record<string, AgentProfile>>;
  /** False when no config file exists (valid: the server runs with zero projects). */
  configFileFound: boolean;
  /** Things worth a log line that do not stop start-up (a token env var that is unset). */
  warnings: readonly string[];
}

/** The agent profile used when a formula names none and the config defines none. */
export const DEFAULT_AGENTS: Readonly<Record<string, AgentProfile>> = Object.freeze({
  claude: Object.freeze({
    name: "claude",
    command: Object.freeze([
      "claude",
      "-p",
      "--output-format",
      "stream-json",
      "--verbose",
      "--dangerously-skip-permissions",
    ]),
    modelArgs: Object.freeze(["--model", "{model}"]),
    resumeArgs: Object.freeze(["--resume", "{session_id}"]),
    env: Object.freeze({ CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1" }),
    output: "stream-json",
    claudeSettings: true,
  }),
});

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SLUG = /^[a-z0-9][a-z0-9_-]*$/;

const projectSchema = z
  .object({
    name: z.string().regex(SLUG, "must be a slug: lower-case letters, digits, - and _"),
    repo_path: z.string().min(1),
    primary_branch: z.string().min(1).default("main"),
    forge: z.enum(FORGES).default("github"),
    forge_url: z.url({ protocol: /^https?$/ }).optional(),
    repo: z.string().regex(/^[\w.-]+\/[\w.-]+$/, 'must be "owner/name"'),
    token_env: z.string().regex(ENV_NAME, "must be an environment variable NAME").optional(),
    webhook_secret_env: z.string().regex(ENV_NAME, "must be an environment variable NAME").optional(),
    bot_login: z.string().min(1).optional(),
    escalation_issue: z.number().int().positive().optional(),
    formulas: z.array(z.string().regex(/^(?:\*|[a-z0-9][a-z0-9-]*)$/, 'must be a formula name or "*"')).optional(),
  })
  .strict();

const argList = z.array(z.string());

const agentSchema = z
  .object({
    command: z.array(z.string().min(1)).min(1, "must name a program"),
    model_args: argList.optional(),
    resume_args: argList.optional(),
    env: z.record(z.string().regex(ENV_NAME, "must be an environment variable name"), z.string()).optional(),
    output: z.enum(AGENT_OUTPUTS).optional(),
    claude_settings: z.boolean().optional(),
  })
  .strict();

const fileSchema = z
  .object({
    projects: z.array(projectSchema).default([]),
    agents: z.record(z.string().regex(SLUG, "agent names are slugs"), agentSchema).default({}),
  })
  .strict();

type Env = Readonly<Record<string, string | undefined>>;

/** Reads the environment: every default of DESIGN.md's "Environment" lives here (see settings.ts). */
export function loadSettings(env: Env = process.env, cwd = process.cwd()): { settings: Settings; problems: string[] } {
  return readSettings(env, cwd);
}

/** Parses the text of `formula-runner.toml`; problems are `file: key: message` lines. */
export function parseConfigFile(
  file: string,
  source: string,
  env: Env = process.env,
): { projects: ProjectConfig[]; agents: Record<string, AgentProfile>; problems: string[]; warnings: string[] } {
  const empty = { projects: [], agents: { ...DEFAULT_AGENTS }, warnings: [] };
  let raw: unknown;
  try {
    raw = parseToml(source);
  } catch (error) {
    const where = error instanceof TomlError ? `:${error.line}` : "";
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    return { ...empty, problems: [`${file}${where}: (toml): ${message}`] };
  }
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = fieldIssues(parsed.error.issues, raw, (p) => schemaKeysAt(fileSchema, p));
    return { ...empty, problems: issues.map((i) => `${file}: ${formatPath(i.path) || "(file)"}: ${i.message}`) };
  }

  const problems: string[] = [];
  const warnings: string[] = [];
  const baseDir = path.dirname(file);
  const seenNames = new Map<string, number>();
  const seenRepos = new Map<string, number>();
  const projects = parsed.data.projects.map((p, i): ProjectConfig => {
    const at = (key: string) => `${file}: projects[${i}].${key}`;
    const previous = seenNames.get(p.name);
    if (previous !== undefined) problems.push(`${at("name")}: "${p.name}" is already used by projects[${previous}]`);
    seenNames.set(p.name, i);
    const repoKey = `${p.forge}:${p.repo.toLowerCase()}`;
    const sameRepo = seenRepos.get(repoKey);
    if (sameRepo !== undefined) {
      problems.push(
        `${at("repo")}: "${p.repo}" is already configured by projects[${sameRepo}] (webhooks could not tell them apart)`,
      );
    }
    seenRepos.set(repoKey, i);
    if (p.forge !== "github" && p.forge_url === undefined) {
      problems.push(`${at("forge_url")}: is required for ${p.forge} (like https://host/api/v1)`);
    }
    const secretFrom = (key: string, name: string | undefined) => {
      if (name === undefined) return undefined;
      const value = env[name];
      if (value === undefined || value === "") {
        warnings.push(`${at(key)}: environment variable ${name} is not set`);
        return undefined;
      }
      return new Secret(value);
    };
    return Object.freeze({
      name: p.name,
      repoPath: path.resolve(baseDir, p.repo_path),
      primaryBranch: p.primary_branch,
      forge: p.forge,
      forgeUrl: (p.forge_url ?? "https://api.github.com").replace(/\/+$/, ""),
      repo: p.repo,
      tokenEnv: p.token_env,
      token: secretFrom("token_env", p.token_env),
      webhookSecretEnv: p.webhook_secret_env,
      webhookSecret: secretFrom("webhook_secret_env", p.webhook_secret_env),
      botLogin: p.bot_login,
      escalationIssue: p.escalation_issue,
      formulas: Object.freeze([...(p.formulas ?? [])]),
    });
  });

  const agents: Record<string, AgentProfile> = { ...DEFAULT_AGENTS };
  for (const [name, a] of Object.entries(parsed.data.agents)) {
    const defaults = agentDefaults(a.command);
    agents[name] = Object.freeze({
      name,
      command: Object.freeze([...a.command]),
      modelArgs: Object.freeze([...(a.model_args ?? [])]),
      resumeArgs: Object.freeze([...(a.resume_args ?? [])]),
      env: Object.freeze({ ...(a.env ?? {}) }),
      output: a.output ?? defaults.output,
      claudeSettings: a.claude_settings ?? defaults.claudeSettings,
    });
  }
  return { projects, agents, problems, warnings };
}

/**
 * Loads settings from the environment and projects/agents from the config file. Throws
 * `ConfigError` with every problem; a missing default config file is not a problem.
 */
export async function loadConfig(env: Env = process.env, cwd = process.cwd()): Promise<Config> {
  const { settings, problems } = loadSettings(env, cwd);
  let source: string | undefined;
  try {
    source = await readFile(settings.configFile, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" || settings.configFileExplicit) {
      const why = code === "ENOENT" ? "file not found (FORMULA_RUNNER_CONFIG names it)" : (error as Error).message;
      problems.push(`${settings.configFile}: (file): ${why}`);
    }
  }
  const file = source === undefined ? undefined : parseConfigFile(settings.configFile, source, env);
  if (file) problems.push(...file.problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    settings: Object.freeze(settings),
    projects: Object.freeze(file?.projects ?? []),
    agents: Object.freeze(file?.agents ?? { ...DEFAULT_AGENTS }),
    configFileFound: source !== undefined,
    warnings: Object.freeze(file?.warnings ?? []),
  });
}
