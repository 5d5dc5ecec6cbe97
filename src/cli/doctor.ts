/**
 * `formula-runner doctor`: checks a set-up before (or while) it serves, one line per
 * check, each failure with what to do. It reads the configuration the server would read
 * and asks the outside world the same questions a run would: git, each project's clone,
 * its forge token (one API call per project), the webhook secrets, the agents' programs,
 * the sandbox, the database and the port. It changes nothing (no migration, no clone).
 */
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { execa } from "execa";
import type { AgentProfile, Config, ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import { firesOn } from "../formulas/projects.js";
import type { Formula } from "../formulas/schema.js";
import { type Output, paint, paintStatus } from "./format.js";

export type CheckStatus = "ok" | "warn" | "FAIL";

/** One line of the report. A `warn` or `FAIL` message ends with what to do. */
export interface CheckResult {
  status: CheckStatus;
  /** What was checked: `git`, `clone (demo)`, `agent (claude)`, `database`, ... */
  check: string;
  message: string;
}

type Env = Readonly<Record<string, string | undefined>>;

/** How long one outside answer (forge, database, `--version`, the port's owner) may take. */
const ANSWER_TIMEOUT_MS = 10_000;

const ok = (check: string, message: string): CheckResult => ({ status: "ok", check, message });
const warn = (check: string, message: string): CheckResult => ({ status: "warn", check, message });
const fail = (check: string, message: string): CheckResult => ({ status: "FAIL", check, message });

/** Runs every check; the results in a stable order (independent checks run at once). */
export async function runDoctor(env: Env, cwd: string): Promise<CheckResult[]> {
  const { ConfigError, loadConfig, loadSettings } = await import("../config.js");
  let config: Config;
  try {
    config = await loadConfig(env, cwd);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    // Without a valid configuration only what the environment alone says can be checked.
    const { settings } = loadSettings(env, cwd);
    const results = [
      fail(
        "config",
        `invalid configuration (the server would not start):\n${error.problems.map((p) => `      ${p}`).join("\n")}`,
      ),
      await checkGit(env),
    ];
    return [...results, ...(await Promise.all([checkDatabase(settings), checkPort(settings.host, settings.port)]))];
  }
  const { formulas, problems } = await loadFormulaFiles(config);
  const [git, clones, tokens, agents, sandbox, database, port] = await Promise.all([
    checkGit(env),
    Promise.all(config.projects.map((project) => checkClone(project, env))),
    Promise.all(config.projects.map((project) => checkToken(project))),
    checkAgents(config, formulas, env),
    checkSandbox(config, env),
    checkDatabase(config.settings),
    checkPort(config.settings.host, config.settings.port),
  ]);
  return [
    configResult(config),
    formulasResult(config, formulas, problems),
    git,
    ...config.projects.flatMap((_, i) => [...(clones[i] ?? []), ...(tokens[i] ?? [])]),
    ...checkWebhookSecrets(config.projects),
    ...agents,
    sandbox,
    database,
    port,
  ];
}

/** Prints the report (or `--json`); exit 1 when any check failed. */
export function printDoctor(results: readonly CheckResult[], json: boolean, out: Output): number {
  const failed = results.filter((r) => r.status === "FAIL").length;
  if (json) {
    out.write(`${JSON.stringify({ ok: failed === 0, checks: results }, null, 2)}\n`);
    return failed === 0 ? 0 : 1;
  }
  for (const r of results) {
    out.write(`${paintStatus(out, r.status, r.status.padEnd(4))}  ${paint(out, "bold", r.check)}: ${r.message}\n`);
  }
  const warned = results.filter((r) => r.status === "warn").length;
  const summary = `${results.length - failed - warned} ok, ${warned} warning(s), ${failed} failure(s)`;
  out.write(`\n${failed > 0 ? paint(out, "red", summary) : summary}\n`);
  return failed === 0 ? 0 : 1;
}

function configResult(config: Config): CheckResult {
  const { settings } = config;
  const file = config.configFileFound ? settings.configFile : `no ${settings.configFile}`;
  if (config.projects.length === 0) {
    return warn(
      "config",
      `${file}: no project configured, nothing can run; write one with: formula-runner init --repo-path <your clone>`,
    );
  }
  return ok(
    "config",
    `${file}: ${config.projects.length} project(s): ${config.projects.map((p) => p.name).join(", ")}`,
  );
}

async function loadFormulaFiles(
  config: Config,
): Promise<{ formulas: Formula[]; problems: { text: string; severity: string }[] }> {
  const { formatProblem, loadFormulas } = await import("../formulas/load.js");
  const loaded = await loadFormulas(config.settings.formulasDir, { agents: Object.keys(config.agents) });
  return {
    formulas: loaded.formulas,
    problems: loaded.problems.map((p) => ({ text: formatProblem(p), severity: p.severity })),
  };
}

function formulasResult(
  config: Config,
  formulas: readonly Formula[],
  problems: readonly { text: string; severity: string }[],
): CheckResult {
  const errors = problems.filter((p) => p.severity === "error");
  const dir = config.settings.formulasDir;
  const unreadable = errors.find((p) => p.text.startsWith(`${dir}: (dir)`));
  if (unreadable) {
    return fail("formulas", `${unreadable.text}; run from the directory that holds formulas/, or set FORMULAS_DIR`);
  }
  if (errors.length > 0) {
    return fail(
      "formulas",
      `${errors.length} problem(s) in ${dir} (those formulas are not loaded); fix them, \`formula-runner validate\` lists them:\n` +
        errors
          .slice(0, 5)
          .map((p) => `      ${p.text}`)
          .join("\n"),
    );
  }
  const firing = formulas.filter((f) => config.projects.some((p) => firesOn(f, p)));
  const where =
    firing.length > 0
      ? `fire on projects: ${firing.map((f) => f.name).join(", ")}`
      : "none fires on a project yet (list one in a project's formulas = [...]); dispatch still works";
  return ok("formulas", `${formulas.length} loaded from ${dir}; ${where}`);
}

async function checkGit(env: Env): Promise<CheckResult> {
  const { findProgram } = await import("../sessions/sandbox.js");
  const found = await findProgram("git", env.PATH);
  if (!found.ok) return fail("git", "git is not on the PATH; install git (apt-get install git)");
  const version = await execa(found.file, ["--version"], {
    reject: false,
    timeout: ANSWER_TIMEOUT_MS,
    env: { ...env },
    extendEnv: false,
  });
  if (version.failed) return fail("git", `${found.file} --version failed: ${version.shortMessage}`);
  return ok("git", version.stdout.trim());
}

async function checkClone(project: ProjectConfig, env: Env): Promise<CheckResult[]> {
  const check = `clone (${project.name})`;
  if (project.cloneUrl !== undefined && !existsSync(project.repoPath)) {
    return [ok(check, `the server clones ${project.cloneUrl} into ${project.repoPath} on its first start`)];
  }
  const { checkClones } = await import("../clone-check.js");
  const { problems, warnings } = await checkClones([{ ...project, cloneUrl: undefined }], env);
  if (problems.length > 0) return problems.map((p) => fail(check, stripProject(project, p)));
  if (warnings.length > 0) return warnings.map((w) => warn(check, stripProject(project, w)));
  return [ok(check, `${project.repoPath} is a git clone; origin names ${project.repo}`)];
}

/** checkClones' messages start with `project NAME: `, which the check's name already says. */
function stripProject(project: ProjectConfig, message: string): string {
  const prefix = `project ${project.name}: `;
  return message.startsWith(prefix) ? message.slice(prefix.length) : message;
}

/** GitHub scopes that let the token comment, label and push on a (private) repository. */
const GITHUB_REPO_SCOPES = ["repo"];

async function checkToken(project: ProjectConfig): Promise<CheckResult[]> {
  const check = `forge token (${project.name})`;
  if (project.tokenEnv === undefined) {
    return [
      warn(
        check,
        "no token_env: status comments, labels, outputs and the permission check of webhook senders will fail " +
          '(dispatched runs still work); add token_env = "NAME" and export NAME=<token>',
      ),
    ];
  }
  if (project.token === undefined) {
    return [
      fail(
        check,
        `${project.tokenEnv} is not set; export ${project.tokenEnv}=<a ${project.forge} token with write access to ${project.repo}> before starting the server`,
      ),
    ];
  }
  const { ForgeClient, ForgeError } = await import("../forge/forge-client.js");
  const client = new ForgeClient(project, { timeoutMs: ANSWER_TIMEOUT_MS });
  let owner: { login: string; scopes: string[] | undefined };
  try {
    owner = await client.tokenOwner();
  } catch (error) {
    if (error instanceof ForgeError && (error.status === 401 || error.status === 403)) {
      return [
        fail(
          check,
          `${project.forgeUrl} refused the token in ${project.tokenEnv} (HTTP ${error.status}): it is wrong, expired or revoked; make a new one and export ${project.tokenEnv} again`,
        ),
      ];
    }
    return [
      fail(check, `${errorMessage(error)}; check forge_url (${project.forgeUrl}) and that this host can reach it`),
    ];
  }
  const results: CheckResult[] = [];
  const who = `${project.tokenEnv} belongs to ${owner.login || "(no login)"}`;
  if (project.forge !== "github" || owner.scopes === undefined) {
    const note =
      project.forge === "github"
        ? " (scopes not reported: a fine-grained token; it needs Issues, Pull requests and Contents read/write on the repository)"
        : "";
    results.push(ok(check, `${who}${note}`));
  } else if (owner.scopes.some((s) => GITHUB_REPO_SCOPES.includes(s))) {
    results.push(ok(check, `${who}, scopes: ${owner.scopes.join(", ")}`));
  } else if (owner.scopes.includes("public_repo")) {
    results.push(
      warn(check, `${who}, scopes: public_repo: enough for a public repository only; a private one needs "repo"`),
    );
  } else {
    results.push(
      fail(
        check,
        `${who}, scopes: ${owner.scopes.join(", ") || "(none)"}: it cannot comment or label; give it the "repo" scope`,
      ),
    );
  }
  if (
    project.botLogin !== undefined &&
    owner.login !== "" &&
    project.botLogin.toLowerCase() !== owner.login.toLowerCase()
  ) {
    results.push(
      warn(
        check,
        `bot_login is ${project.botLogin} but the token writes as ${owner.login}: the runner's own comments would not be ` +
          `recognised as its own; set bot_login = "${owner.login}"`,
      ),
    );
  }
  return results;
}

/** One line per forge that has projects: are their webhook secrets set? */
function checkWebhookSecrets(projects: readonly ProjectConfig[]): CheckResult[] {
  const forges = [...new Set(projects.map((p) => p.forge))];
  return forges.map((forge) => {
    const check = `webhook secret (${forge})`;
    const mine = projects.filter((p) => p.forge === forge);
    const unset = mine.filter((p) => p.webhookSecretEnv !== undefined && p.webhookSecret === undefined);
    const none = mine.filter((p) => p.webhookSecretEnv === undefined);
    if (unset.length > 0) {
      return fail(
        check,
        unset
          .map((p) => `${p.webhookSecretEnv} (project ${p.name}) is not set`)
          .join("; ")
          .concat(": every webhook for it is refused (401); export it with the secret the forge's webhook uses"),
      );
    }
    if (none.length > 0) {
      return warn(
        check,
        `no webhook_secret_env for ${none.map((p) => p.name).join(", ")}: webhooks are refused, only schedules and ` +
          'dispatch fire; add webhook_secret_env = "NAME" and give the forge the same secret',
      );
    }
    return ok(check, `set for ${mine.map((p) => `${p.name} (${p.webhookSecretEnv})`).join(", ")}`);
  });
}

/**
 * The program of every agent profile a formula names, found and answering `--version`.
 * A profile used by a formula that fires on a project must work (FAIL); one only reachable
 * by dispatch gets a warning.
 */
async function checkAgents(config: Config, formulas: readonly Formula[], env: Env): Promise<CheckResult[]> {
  const users = new Map<string, { firing: boolean; formulas: string[] }>();
  for (const formula of formulas) {
    const entry = users.get(formula.agent) ?? { firing: false, formulas: [] };
    entry.formulas.push(formula.name);
    entry.firing ||= config.projects.some((p) => firesOn(formula, p));
    users.set(formula.agent, entry);
  }
  const names = [...users.keys()].sort();
  return Promise.all(
    names.map(async (name) => {
      const use = users.get(name) ?? { firing: false, formulas: [] };
      const profile = config.agents[name];
      const check = `agent (${name})`;
      if (profile === undefined) return fail(check, `not configured; add [agents.${name}] to the config file`);
      const probe = await probeAgent(profile, env);
      if ("problem" in probe) {
        const used = `(used by ${use.formulas.join(", ")})`;
        return use.firing
          ? fail(check, `${probe.problem} ${used}`)
          : warn(check, `${probe.problem} ${used}; needed only when you dispatch them, as no project lists them`);
      }
      return ok(check, probe.version);
    }),
  );
}

/** The agent's program found and answering `--version` (its first line), or what is wrong. */
async function probeAgent(profile: AgentProfile, env: Env): Promise<{ version: string } | { problem: string }> {
  const { findProgram } = await import("../sessions/sandbox.js");
  const program = profile.command[0] ?? "";
  const found = await findProgram(program, env.PATH);
  if (!found.ok) {
    const hint =
      path.basename(program) === "claude" ? "; install it: npm install -g @anthropic-ai/claude-code" : "; install it";
    return { problem: `${found.reason}${hint}` };
  }
  const answer = await execa(found.file, ["--version"], {
    reject: false,
    timeout: ANSWER_TIMEOUT_MS,
    env: { ...env, ...profile.env },
    extendEnv: false,
    stdin: "ignore",
  });
  if (answer.exitCode === undefined) return { problem: `${found.file} --version did not run: ${answer.shortMessage}` };
  const { rootRefusal } = await import("../runs/agent-env.js");
  const refusal = rootRefusal(profile.command, { IS_SANDBOX: env.IS_SANDBOX ?? "" });
  if (refusal) {
    return { problem: `${refusal} (IS_SANDBOX is ${env.IS_SANDBOX === undefined ? "unset" : `"${env.IS_SANDBOX}"`})` };
  }
  const first = answer.stdout
    .split("\n")
    .find((l) => l.trim() !== "")
    ?.trim();
  const said = answer.exitCode === 0 && first ? ` (${first})` : ` (--version exited ${answer.exitCode})`;
  return { version: `${found.file}${said}` };
}

async function checkSandbox(config: Config, env: Env): Promise<CheckResult> {
  const { SandboxHost } = await import("../sessions/sandbox.js");
  const { mode } = config.sandbox;
  const probe = await new SandboxHost(
    { bwrap: config.sandbox.bwrap, socat: config.sandbox.socat, ripgrep: config.sandbox.ripgrep },
    env,
  ).probe();
  if (probe.ok) return ok("sandbox", `bubblewrap and socat work; default [sandbox] mode = "${mode}"`);
  if (mode === "off") return ok("sandbox", `off ([sandbox] mode = "off"); ${probe.reason}`);
  if (mode === "required") return fail("sandbox", `${probe.reason}; [sandbox] mode = "required": every run would fail`);
  return warn("sandbox", `${probe.reason}; until then agents run UNSANDBOXED (see docs/security.md)`);
}

async function checkDatabase(settings: Config["settings"]): Promise<CheckResult> {
  const { openDatabase } = await import("../../db/client.js");
  const url = settings.databaseUrl?.reveal();
  const pgdata = path.join(settings.dataDir, "pgdata");
  if (url === undefined && !existsSync(path.join(pgdata, "PG_VERSION"))) {
    return ok("database", `embedded, not created yet: the first start creates it in ${pgdata} (10-25 s)`);
  }
  let database: Awaited<ReturnType<typeof openDatabase>> | undefined;
  try {
    database = await openDatabase(
      url ? { url, max: 1, connectTimeoutSeconds: ANSWER_TIMEOUT_MS / 1000 } : { dataDir: pgdata },
    );
    await database.ping();
    return ok("database", `${database.kind} at ${database.location} answers`);
  } catch (error) {
    const message = errorMessage(error);
    const holder = /in use by process (\d+)/.exec(message)?.[1];
    if (holder) return ok("database", `embedded, in use by the running server (process ${holder})`);
    const cause = (error as { cause?: unknown }).cause;
    const why = cause === undefined ? message : `${message}: ${errorMessage(cause)}`;
    return fail(
      "database",
      url
        ? `${why}; is PostgreSQL running and DATABASE_URL right?`
        : `${why}; is DATA_DIR (${settings.dataDir}) readable and writable?`,
    );
  } finally {
    await database?.close();
  }
}

/** The port is free, or already served by a formula-runner (its `/healthz` says so). */
async function checkPort(host: string, port: number): Promise<CheckResult> {
  const check = "port";
  const where = `${host}:${port}`;
  const bound = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const server = createServer();
    server.once("error", (error: NodeJS.ErrnoException) => resolve(error));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
  if (bound === undefined) return ok(check, `${where} is free`);
  if (bound.code !== "EADDRINUSE") {
    return fail(check, `cannot listen on ${where}: ${bound.message}; set HOST/PORT to an address this user may bind`);
  }
  const shown = host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "[::1]" : host;
  try {
    const res = await fetch(`http://${shown}:${port}/healthz`, { signal: AbortSignal.timeout(ANSWER_TIMEOUT_MS) });
    const body = (await res.json()) as { status?: unknown; version?: unknown; instance_id?: unknown };
    if (typeof body.version === "string" && (body.status === "ok" || body.status === "starting")) {
      return ok(
        check,
        `${where} is served by formula-runner ${body.version}${body.status === "starting" ? " (starting)" : ""}${
          typeof body.instance_id === "string" ? `, instance ${body.instance_id}` : ""
        }`,
      );
    }
  } catch {
    // Not an HTTP server, or not ours: said below.
  }
  return fail(check, `${where} is in use by another program; stop it or set PORT to a free port`);
}
