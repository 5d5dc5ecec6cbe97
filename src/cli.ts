import { readdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { RUN_STATUSES, WORKTREE_STATES } from "../db/schema/index.js";
import { ApiClient, ApiError } from "./cli/api-client.js";
import {
  type Output,
  parseAge,
  runCommand,
  runsList,
  runsShow,
  worktreesList,
  worktreesPurge,
} from "./cli/commands.js";
import { ConfigError, loadConfig, loadSettings } from "./config.js";
import { errorMessage } from "./errors.js";
import { formatProblem, validateFiles } from "./formulas/load.js";
import { createLogger, type Logger } from "./logger.js";
import { VERSION } from "./package-info.js";
import { collectSecrets, openAndMigrate, type RunningServer, startServer } from "./server.js";

/** What the CLI needs from its surroundings, injectable for tests. */
export interface CliIo {
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
  stdout: Output;
  stderr: Output;
  /**
   * Starts listening for SIGTERM/SIGINT and resolves on the first one; `serve` calls it
   * before starting so a signal during start-up still stops cleanly.
   */
  untilSignal: () => Promise<string>;
  /** Calls `reload` on SIGHUP until the returned function is called. */
  onHangup?: (reload: () => void) => () => void;
  /** Keeps `serve` up through database driver faults no caller can catch (see process-guard.ts). */
  guardProcess?: (log: Logger) => () => void;
}

const line = (out: CliIo["stdout"], text = "") => out.write(`${text}\n`);

/** Runs one CLI invocation and returns its exit code. Never calls process.exit. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let exitCode = 0;
  const program = new Command()
    .name("formula-runner")
    .description("Self-hosted automation server for AI coding agents")
    .version(VERSION)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    })
    .showHelpAfterError("(run with --help for usage)");

  program
    .command("serve")
    .description("run the server: webhooks, schedules, the REST API and the agents")
    .addHelpText(
      "after",
      "\nEnvironment: DATABASE_URL, PORT (8080), HOST (127.0.0.1), DATA_DIR (./.formula-runner),\n" +
        "FORMULA_RUNNER_CONFIG (./formula-runner.toml), FORMULAS_DIR (./formulas), WORKTREE_ROOT,\n" +
        "API_TOKEN, INSTANCE_ID, SHUTDOWN_GRACE (30s), MAX_SESSIONS (4), LOG_LEVEL (info).",
    )
    .action(async () => {
      exitCode = await serve(io);
    });

  program
    .command("migrate")
    .description("apply pending database migrations and exit (serve also does this on start)")
    .action(async () => {
      exitCode = await migrateCommand(io);
    });

  program
    .command("validate")
    .description("check formula files; prints one `file: field: message` line per problem")
    .argument("[files...]", "formula files (default: every *.toml in FORMULAS_DIR)")
    .action(async (files: string[]) => {
      exitCode = await validateCommand(files, io);
    });

  const client = async () => {
    const { settings, problems } = loadSettings(io.env, io.cwd);
    if (problems.length > 0) throw new ConfigError(problems);
    return ApiClient.fromEnvironment(settings, io.env);
  };
  const api = (fn: (c: ApiClient) => Promise<number>) => async () => {
    try {
      exitCode = await fn(await client());
    } catch (error) {
      exitCode = reportStartError(error, io);
    }
  };
  const positiveInt = (value: string) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError("expected a positive integer");
    return n;
  };
  const apiHelp =
    "\nTalks to the running server: FORMULA_RUNNER_URL (default http://HOST:PORT), API_TOKEN or $DATA_DIR/api-token.";

  program
    .command("run")
    .description("start a run of a formula (it must allow dispatch)")
    .argument("<formula>", "formula name")
    .option("-p, --project <name>", "project (may be left out when exactly one is configured)")
    .option("-i, --issue <number>", "issue the run is about", positiveInt)
    .option("-w, --wait", "follow the run to its end; exit 0 only if it ends done", false)
    .addHelpText("after", apiHelp)
    .action((formula: string, opts: { project?: string; issue?: number; wait: boolean }) =>
      api((c) => runCommand(c, { formula, ...opts, actor: `cli:${safeUser()}` }, io.stdout, io.stderr))(),
    );

  const runsCommand = program.command("runs").description("list and inspect runs");
  runsCommand
    .command("list")
    .description("recent runs, newest first")
    .addOption(new Option("-s, --status <status>", "only runs with this status (comma-separated)"))
    .option("-f, --formula <name>", "only runs of this formula")
    .option("-p, --project <name>", "only runs of this project")
    .option("-n, --limit <n>", "how many (default 50, at most 500)", positiveInt)
    .option("--json", "print JSON", false)
    .addHelpText("after", `\nStatuses: ${RUN_STATUSES.join(", ")}.${apiHelp}`)
    .action((opts: { status?: string; formula?: string; project?: string; limit?: number; json: boolean }) =>
      api((c) => runsList(c, opts, io.stdout))(),
    );
  runsCommand
    .command("show")
    .description("one run: status, phases, sessions, worktree, escalations")
    .argument("<id>", "run id")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((id: string, opts: { json: boolean }) => api((c) => runsShow(c, id, opts.json, io.stdout))());

  const worktreesCommand = program.command("worktrees").description("list and purge run worktrees");
  worktreesCommand
    .command("list")
    .description("worktrees, newest first")
    .addOption(new Option("-s, --state <state>", "only this state").choices([...WORKTREE_STATES]))
    .option("-p, --project <name>", "only this project")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((opts: { state?: string; project?: string; json: boolean }) =>
      api((c) => worktreesList(c, opts, io.stdout))(),
    );
  worktreesCommand
    .command("purge")
    .description("remove preserved worktrees: one by id, or all older than an age (default 24h)")
    .addOption(new Option("--id <id>", "remove this preserved worktree").conflicts("olderThan"))
    .option("--older-than <age>", "age like 24h, 90m or 2d (default 24h)", (value: string) => {
      const hours = parseAge(value);
      if (hours === undefined) throw new InvalidArgumentError("expected an age like 24h, 90m or 2d");
      return hours;
    })
    .option("--dry-run", "say what would be removed, remove nothing", false)
    .option("--json", "print JSON", false)
    .addHelpText(
      "after",
      `\nNever removes a worktree whose run is still active, nor anything outside WORKTREE_ROOT.${apiHelp}`,
    )
    .action((opts: { id?: string; olderThan?: number; dryRun: boolean; json: boolean }) =>
      api((c) =>
        worktreesPurge(
          c,
          {
            ...(opts.id !== undefined && { id: opts.id }),
            ...(opts.olderThan !== undefined && { olderThanHours: opts.olderThan }),
            dryRun: opts.dryRun,
            json: opts.json,
          },
          io.stdout,
        ),
      )(),
    );

  try {
    await program.parseAsync([...argv], { from: "user" });
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end here with code 0; usage errors with 1.
      return error.exitCode;
    }
    throw error;
  }
  return exitCode;
}

async function serve(io: CliIo): Promise<number> {
  const signalled = io.untilSignal();
  let server: RunningServer;
  try {
    server = await startServer({ env: io.env, cwd: io.cwd });
  } catch (error) {
    return reportStartError(error, io);
  }
  const unguard = io.guardProcess?.(server.services.log);
  const unhook = io.onHangup?.(() => {
    server.services.log.info("SIGHUP: reloading formulas and schedules");
    server.services
      .reloadFormulas()
      .catch((error: unknown) => server.services.log.error({ err: error }, "reload failed"));
  });
  const signal = await signalled;
  unhook?.();
  server.services.log.info({ signal }, `received ${signal}`);
  await server.stop();
  unguard?.();
  return 0;
}

async function migrateCommand(io: CliIo): Promise<number> {
  try {
    const config = await loadConfig(io.env, io.cwd);
    const log = createLogger({ level: config.settings.logLevel, secrets: collectSecrets(config, io.env) });
    const database = await openAndMigrate(config, log);
    await database.close();
    return 0;
  } catch (error) {
    return reportStartError(error, io);
  }
}

async function validateCommand(files: string[], io: CliIo): Promise<number> {
  let targets = files.map((f) => path.resolve(io.cwd, f));
  let agents: readonly string[] | undefined;
  try {
    const config = await loadConfig(io.env, io.cwd);
    agents = Object.keys(config.agents);
    if (targets.length === 0) targets = await tomlFilesIn(config.settings.formulasDir);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const problem of error.problems) line(io.stderr, `warning: config not used for agent names: ${problem}`);
  }
  if (targets.length === 0 && files.length === 0) {
    const dir = path.resolve(io.cwd, io.env.FORMULAS_DIR ?? "formulas");
    targets = await tomlFilesIn(dir).catch(() => []);
    if (targets.length === 0) {
      line(io.stderr, `${dir}: (dir): no *.toml formula files found`);
      return 1;
    }
  }
  const problems = await validateFiles(targets, agents === undefined ? {} : { agents });
  const display = (p: (typeof problems)[number]) => ({ ...p, file: path.relative(io.cwd, p.file) || p.file });
  let errors = 0;
  for (const problem of problems) {
    if (problem.severity === "error") {
      errors++;
      line(io.stdout, formatProblem(display(problem)));
    } else {
      line(io.stderr, `warning: ${formatProblem(display(problem))}`);
    }
  }
  const summary = `${targets.length} file(s) checked, ${errors} error(s)`;
  line(errors > 0 ? io.stderr : io.stdout, summary);
  return errors > 0 ? 1 : 0;
}

async function tomlFilesIn(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names
    .filter((n) => n.endsWith(".toml"))
    .sort()
    .map((n) => path.join(dir, n));
}

function safeUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return "unknown";
  }
}

function reportStartError(error: unknown, io: CliIo): number {
  if (error instanceof ApiError) {
    line(io.stderr, `formula-runner: ${error.message}`);
    return 1;
  }
  if (error instanceof ConfigError) {
    line(io.stderr, "formula-runner: invalid configuration:");
    for (const problem of error.problems) line(io.stderr, `  ${problem}`);
    return 1;
  }
  line(io.stderr, `formula-runner: ${errorMessage(error)}`);
  const cause = (error as { cause?: unknown }).cause;
  if (cause) line(io.stderr, `  caused by: ${errorMessage(cause)}`);
  return 1;
}
