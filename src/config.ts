import { readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import { HOST_PATTERN, SANDBOX_MODES, type SandboxMode } from "./formulas/schema.js";
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
  /** The local clone; `$DATA_DIR/clones/<name>` when only `clone_url` is given. */
  repoPath: string;
  /**
   * Where the server clones `repoPath` from when it is missing (then fetches it before each
   * run as for any clone), with the token of `tokenEnv` given to git by a credential helper.
   */
  cloneUrl?: string;
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
  /** Forge logins whose text may enter prompts unfenced (default: none). */
  trustedAuthors?: readonly string[];
  /**
   * The formulas this project's schedules and webhooks fire (`*`: all). Unset or empty:
   * none, unless a formula lists the project in its own `projects`.
   */
  formulas?: readonly string[];
}

/** The server's `[sandbox]` table: defaults for every formula and the programs to use. */
export interface SandboxSettings {
  /** Used when neither the formula nor its agent profile says. */
  mode: SandboxMode;
  /** More paths no agent may read (besides DATA_DIR, WORKTREE_ROOT, other clones, credential stores). */
  denyRead: readonly string[];
  bwrap: string;
  socat: string;
  ripgrep: string;
}

export const DEFAULT_SANDBOX: SandboxSettings = Object.freeze({
  mode: "auto",
  denyRead: Object.freeze([]),
  bwrap: "bwrap",
  socat: "socat",
  ripgrep: "rg",
});

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
  /** Unset: the formula's `[sandbox] mode`, else the server's. */
  sandbox: SandboxMode | undefined;
  /** Hosts of the agent's model API, reachable from the sandbox (plus the host of ANTHROPIC_BASE_URL). */
  modelHosts: readonly string[];
}

/** The profile defaults that follow from its command. */
export function agentDefaults(
  command: readonly string[],
): Pick<AgentProfile, "output" | "claudeSettings" | "modelHosts"> {
  const streamJson = command.some(
    (arg, i) =>
      arg === "--output-format=stream-json" || (arg === "stream-json" && command[i - 1] === "--output-format"),
  );
  const claude = path.basename(command[0] ?? "") === "claude";
  return {
    output: streamJson ? "stream-json" : "text",
    claudeSettings: claude,
    modelHosts: claude ? ["api.anthropic.com"] : [],
  };
}

export interface Config {
  settings: Settings;
  projects: readonly ProjectConfig[];
  agents: Readonly<Record<string, AgentProfile>>;
  sandbox: SandboxSettings;
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
    sandbox: undefined,
    modelHosts: Object.freeze(["api.anthropic.com"]),
  }),
});

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SLUG = /^[a-z0-9][a-z0-9_-]*$/;

const projectSchema = z
  .object({
    name: z.string().regex(SLUG, "must be a slug: lower-case letters, digits, - and _"),
    repo_path: z.string().min(1).optional(),
    clone_url: z
      .string()
      .regex(
        /^(https?|ssh|file):\/\/\S+$|^[\w.-]+@[\w.-]+:\S+$|^\/\S*$/,
        "must be an https://, ssh://, file:// URL, user@host:path or an absolute path",
      )
      .optional(),
    primary_branch: z.string().min(1).default("main"),
    forge: z.enum(FORGES).default("github"),
    forge_url: z.url({ protocol: /^https?$/ }).optional(),
    repo: z.string().regex(/^[\w.-]+\/[\w.-]+$/, 'must be "owner/name"'),
    token_env: z.string().regex(ENV_NAME, "must be an environment variable NAME").optional(),
    webhook_secret_env: z.string().regex(ENV_NAME, "must be an environment variable NAME").optional(),
    bot_login: z.string().min(1).optional(),
    escalation_issue: z.number().int().positive().optional(),
    trusted_authors: z.array(z.string().min(1)).default([]),
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
    sandbox: z.enum(SANDBOX_MODES).optional(),
    model_hosts: z.array(z.string().regex(new RegExp(HOST_PATTERN), "must be a host name or IP address")).optional(),
  })
  .strict();

const sandboxSchema = z
  .object({
    mode: z.enum(SANDBOX_MODES).default(DEFAULT_SANDBOX.mode),
    deny_read: z.array(z.string().min(1)).default([]),
    bwrap: z.string().min(1).default(DEFAULT_SANDBOX.bwrap),
    socat: z.string().min(1).default(DEFAULT_SANDBOX.socat),
    ripgrep: z.string().min(1).default(DEFAULT_SANDBOX.ripgrep),
  })
  .strict();

const fileSchema = z
  .object({
    projects: z.array(projectSchema).default([]),
    agents: z.record(z.string().regex(SLUG, "agent names are slugs"), agentSchema).default({}),
    sandbox: sandboxSchema.optional(),
  })
  .strict();

type Env = Readonly<Record<string, string | undefined>>;

/** Reads the environment: every default of DESIGN.md's "Environment" lives here (see settings.ts). */
export function loadSettings(env: Env = process.env, cwd = process.cwd()): { settings: Settings; problems: string[] } {
  return readSettings(env, cwd);
}

type RawProject = z.infer<typeof projectSchema>;

/** One project's validated keys plus how to name its keys in messages. */
interface ProjectEntry {
  data: RawProject;
  /** `file: projects[0].key` or `environment: PROJECT_KEY`. */
  at: (key: string) => string;
  /** Relative `repo_path`s resolve against this directory. */
  baseDir: string;
  /** How another project's message names this one: `projects[0]`, `the PROJECT_* variables`. */
  label: string;
}

/** The environment variable that sets `key` of the environment-only project: PROJECT_REPO_PATH for repo_path. */
export function projectEnvName(key: string): string {
  return `PROJECT_${key.toUpperCase()}`;
}

/**
 * One project from PROJECT_* variables (PROJECT_NAME, PROJECT_REPO, PROJECT_CLONE_URL, ...,
 * one per key of `[[projects]]`), so a container starts without a mounted config file.
 * Nothing when no PROJECT_* variable is set.
 */
function projectFromEnv(env: Env, cwd: string): { entry?: ProjectEntry; problems: string[] } {
  const raw: Record<string, unknown> = {};
  for (const key of Object.keys(projectSchema.shape)) {
    const value = env[projectEnvName(key)]?.trim();
    if (value === undefined || value === "") continue;
    raw[key] =
      key === "escalation_issue" && /^\d+$/.test(value)
        ? Number(value)
        : key === "trusted_authors" || key === "formulas"
          ? value
              .split(",")
              .map((v) => v.trim())
              .filter(Boolean)
          : value;
  }
  if (Object.keys(raw).length === 0) return { problems: [] };
  const at = (key: string) => `environment: ${projectEnvName(key)}`;
  const parsed = projectSchema.safeParse(raw);
  if (!parsed.success) {
    return {
      problems: parsed.error.issues.map((issue) => {
        const key = issue.path[0];
        return typeof key === "string" ? `${at(key)}: ${issue.message}` : `environment: PROJECT_*: ${issue.message}`;
      }),
    };
  }
  return { entry: { data: parsed.data, at, baseDir: cwd, label: "the PROJECT_* variables" }, problems: [] };
}

/** Checks the projects together (names, repositories) and turns them into frozen ProjectConfigs. */
function buildProjects(
  entries: readonly ProjectEntry[],
  env: Env,
  dataDir: string | undefined,
): { projects: ProjectConfig[]; problems: string[]; warnings: string[] } {
  const problems: string[] = [];
  const warnings: string[] = [];
  const seenNames = new Map<string, string>();
  const seenRepos = new Map<string, string>();
  const projects = entries.map(({ data: p, at, baseDir, label: where }): ProjectConfig => {
    const previous = seenNames.get(p.name);
    if (previous !== undefined) problems.push(`${at("name")}: "${p.name}" is already used by ${previous}`);
    seenNames.set(p.name, where);
    const repoKey = `${p.forge}:${p.repo.toLowerCase()}`;
    const sameRepo = seenRepos.get(repoKey);
    if (sameRepo !== undefined) {
      problems.push(
        `${at("repo")}: "${p.repo}" is already configured by ${sameRepo} (webhooks could not tell them apart)`,
      );
    }
    seenRepos.set(repoKey, where);
    if (p.forge !== "github" && p.forge_url === undefined) {
      problems.push(`${at("forge_url")}: is required for ${p.forge} (like https://host/api/v1)`);
    }
    if (p.repo_path === undefined && p.clone_url === undefined) {
      problems.push(`${at("repo_path")}: is required unless clone_url is given`);
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
    const repoPath =
      p.repo_path !== undefined
        ? path.resolve(baseDir, p.repo_path)
        : path.join(dataDir ?? path.join(baseDir, ".formula-runner"), "clones", p.name);
    return Object.freeze({
      name: p.name,
      repoPath,
      ...(p.clone_url === undefined ? {} : { cloneUrl: p.clone_url }),
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
      trustedAuthors: Object.freeze([...p.trusted_authors]),
      formulas: Object.freeze([...(p.formulas ?? [])]),
    });
  });
  return { projects, problems, warnings };
}

function buildAgents(raw: z.infer<typeof fileSchema>["agents"]): Record<string, AgentProfile> {
  const agents: Record<string, AgentProfile> = { ...DEFAULT_AGENTS };
  for (const [name, a] of Object.entries(raw)) {
    const defaults = agentDefaults(a.command);
    agents[name] = Object.freeze({
      name,
      command: Object.freeze([...a.command]),
      modelArgs: Object.freeze([...(a.model_args ?? [])]),
      resumeArgs: Object.freeze([...(a.resume_args ?? [])]),
      env: Object.freeze({ ...(a.env ?? {}) }),
      output: a.output ?? defaults.output,
      claudeSettings: a.claude_settings ?? defaults.claudeSettings,
      sandbox: a.sandbox,
      modelHosts: Object.freeze([...(a.model_hosts ?? defaults.modelHosts)]),
    });
  }
  return agents;
}

function buildSandbox(box: z.infer<typeof fileSchema>["sandbox"], baseDir: string): SandboxSettings {
  return box
    ? Object.freeze({
        mode: box.mode,
        denyRead: Object.freeze(box.deny_read.map((p) => path.resolve(baseDir, p))),
        bwrap: box.bwrap,
        socat: box.socat,
        ripgrep: box.ripgrep,
      })
    : DEFAULT_SANDBOX;
}

/** Parses and validates the text of `formula-runner.toml`, without building anything. */
function parseConfigSource(
  file: string,
  source: string,
): { data?: z.infer<typeof fileSchema>; entries: ProjectEntry[]; problems: string[] } {
  let raw: unknown;
  try {
    raw = parseToml(source);
  } catch (error) {
    const where = error instanceof TomlError ? `:${error.line}` : "";
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    return { entries: [], problems: [`${file}${where}: (toml): ${message}`] };
  }
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = fieldIssues(parsed.error.issues, raw, (p) => schemaKeysAt(fileSchema, p));
    return {
      entries: [],
      problems: issues.map((i) => `${file}: ${formatPath(i.path) || "(file)"}: ${i.message}`),
    };
  }
  const baseDir = path.dirname(file);
  const entries = parsed.data.projects.map(
    (data, i): ProjectEntry => ({
      data,
      at: (key) => `${file}: projects[${i}].${key}`,
      baseDir,
      label: `projects[${i}]`,
    }),
  );
  return { data: parsed.data, entries, problems: [] };
}

/**
 * Parses the text of `formula-runner.toml`; problems are `file: key: message` lines. A
 * project with `clone_url` and no `repo_path` gets `<dataDir>/clones/<name>`.
 */
export function parseConfigFile(
  file: string,
  source: string,
  env: Env = process.env,
  dataDir?: string,
): {
  projects: ProjectConfig[];
  agents: Record<string, AgentProfile>;
  sandbox: SandboxSettings;
  problems: string[];
  warnings: string[];
} {
  const parsed = parseConfigSource(file, source);
  if (!parsed.data) {
    return {
      projects: [],
      agents: { ...DEFAULT_AGENTS },
      sandbox: DEFAULT_SANDBOX,
      warnings: [],
      problems: parsed.problems,
    };
  }
  const built = buildProjects(parsed.entries, env, dataDir);
  return {
    ...built,
    agents: buildAgents(parsed.data.agents),
    sandbox: buildSandbox(parsed.data.sandbox, path.dirname(file)),
  };
}

/**
 * Loads settings from the environment and projects/agents from the config file plus the
 * PROJECT_* variables. Throws `ConfigError` with every problem; a missing default config
 * file is not a problem.
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
  const file = source === undefined ? undefined : parseConfigSource(settings.configFile, source);
  if (file) problems.push(...file.problems);
  const fromEnv = projectFromEnv(env, cwd);
  problems.push(...fromEnv.problems);
  const entries = [...(file?.entries ?? []), ...(fromEnv.entry ? [fromEnv.entry] : [])];
  const built = buildProjects(entries, env, settings.dataDir);
  problems.push(...built.problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    settings: Object.freeze(settings),
    projects: Object.freeze(built.projects),
    agents: Object.freeze(file?.data ? buildAgents(file.data.agents) : { ...DEFAULT_AGENTS }),
    sandbox: file?.data ? buildSandbox(file.data.sandbox, path.dirname(settings.configFile)) : DEFAULT_SANDBOX,
    configFileFound: source !== undefined,
    warnings: Object.freeze(built.warnings),
  });
}
