/**
 * Server settings from the environment, apart from config.ts so that the CLI's API
 * commands can read them without loading the config file's schemas (zod, TOML).
 */
import path from "node:path";
import { durationProblem, parseDuration } from "./formulas/duration.js";
import { LOG_FORMATS, type LogFormat } from "./log-format.js";
import { Secret } from "./secrets.js";

type Env = Readonly<Record<string, string | undefined>>;

/** Server settings from the environment, every default in one place. */
export interface Settings {
  /** postgres:// URL; unset means the embedded PGlite database under `dataDir`. */
  databaseUrl: Secret | undefined;
  port: number;
  host: string;
  dataDir: string;
  configFile: string;
  /** True when FORMULA_RUNNER_CONFIG was set: then a missing file is an error. */
  configFileExplicit: boolean;
  formulasDir: string;
  worktreeRoot: string;
  /** From API_TOKEN; when unset the server generates one in `$DATA_DIR/api-token`. */
  apiToken: Secret | undefined;
  /** From INSTANCE_ID; when unset a stable one is kept in `$DATA_DIR/instance-id`. */
  instanceId: string | undefined;
  shutdownGraceMs: number;
  /** After SIGTERM to an agent's process group, how long before SIGKILL (KILL_GRACE, 10 s). */
  killGraceMs: number;
  maxSessions: number;
  /**
   * INSTANCE_DEAD_AFTER (60 s): an instance whose heartbeat is older than this is declared
   * dead by a live one, which takes its running and escalated runs over. Heartbeats and
   * the check run at a quarter of it (at most every 15 s).
   */
  instanceDeadAfterMs: number;
  logLevel: string;
  /** LOG_FORMAT; unset: pretty when the log goes to a terminal, else JSON. */
  logFormat: LogFormat | undefined;
  /** NO_COLOR set (to anything but ""): no ANSI colours anywhere (https://no-color.org). */
  noColor: boolean;
}

/** Start-up cannot go on: every problem, one `file: key: message` line each. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** Reads the environment: every default of DESIGN.md's "Environment" lives here. */
export function readSettings(env: Env, cwd: string): { settings: Settings; problems: string[] } {
  const problems: string[] = [];
  const bad = (key: string, message: string) => problems.push(`environment: ${key}: ${message}`);
  const text = (key: string) => {
    const value = env[key];
    return value === undefined || value.trim() === "" ? undefined : value.trim();
  };
  const int = (key: string, fallback: number, min: number, max: number) => {
    const raw = text(key);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      bad(key, `expected an integer from ${min} to ${max}, found "${raw}"`);
      return fallback;
    }
    return value;
  };
  const duration = (key: string, fallback: number) => {
    const raw = text(key);
    if (raw === undefined) return fallback;
    const ms = parseDuration(raw);
    if (ms === undefined) {
      bad(key, durationProblem(raw));
      return fallback;
    }
    return ms;
  };

  const databaseUrl = text("DATABASE_URL");
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    bad("DATABASE_URL", "expected a postgres:// or postgresql:// URL");
  }
  const logLevel = text("LOG_LEVEL") ?? "info";
  if (!["fatal", "error", "warn", "info", "debug", "trace", "silent"].includes(logLevel)) {
    bad("LOG_LEVEL", `expected one of fatal, error, warn, info, debug, trace, silent, found "${logLevel}"`);
  }
  const logFormat = text("LOG_FORMAT");
  if (logFormat !== undefined && !(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    bad(
      "LOG_FORMAT",
      `expected ${LOG_FORMATS.join(" or ")} (unset: pretty on a terminal, else json), found "${logFormat}"`,
    );
  }
  const instanceId = text("INSTANCE_ID");
  if (instanceId !== undefined && !/^[\w.-]{1,64}$/.test(instanceId)) {
    bad("INSTANCE_ID", "expected 1-64 letters, digits, '.', '_' or '-'");
  }

  const instanceDeadAfterMs = duration("INSTANCE_DEAD_AFTER", 60_000);
  // Below a second, a busy event loop or a slow database would pass for a dead instance.
  if (instanceDeadAfterMs < 1_000) bad("INSTANCE_DEAD_AFTER", "must be at least 1s");

  const dataDir = path.resolve(cwd, text("DATA_DIR") ?? ".formula-runner");
  const configFile = text("FORMULA_RUNNER_CONFIG");
  const settings: Settings = {
    databaseUrl: databaseUrl === undefined ? undefined : new Secret(databaseUrl),
    port: int("PORT", 8080, 0, 65535),
    host: text("HOST") ?? "127.0.0.1",
    dataDir,
    configFile: path.resolve(cwd, configFile ?? "formula-runner.toml"),
    configFileExplicit: configFile !== undefined,
    formulasDir: path.resolve(cwd, text("FORMULAS_DIR") ?? "formulas"),
    worktreeRoot: path.resolve(cwd, text("WORKTREE_ROOT") ?? path.join(dataDir, "worktrees")),
    apiToken: text("API_TOKEN") === undefined ? undefined : new Secret(text("API_TOKEN") as string),
    instanceId,
    shutdownGraceMs: duration("SHUTDOWN_GRACE", 30_000),
    killGraceMs: duration("KILL_GRACE", 10_000),
    maxSessions: int("MAX_SESSIONS", 4, 1, 256),
    instanceDeadAfterMs,
    logLevel,
    logFormat: (LOG_FORMATS as readonly string[]).includes(logFormat ?? "") ? (logFormat as LogFormat) : undefined,
    noColor: (env.NO_COLOR ?? "") !== "",
  };
  return { settings, problems };
}
