import { Command, CommanderError } from "commander";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { ConfigError, loadConfig } from "./config.js";
import { errorMessage } from "./errors.js";
import { formatProblem, validateFiles } from "./formulas/load.js";
import { createLogger } from "./logger.js";
import { VERSION } from "./package-info.js";
import { collectSecrets, openAndMigrate, type RunningServer, startServer } from "./server.js";

/** What the CLI needs from its surroundings, injectable for tests. */
export interface CliIo {
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  /**
   * Starts listening for SIGTERM/SIGINT and resolves on the first one; `serve` calls it
   * before starting so a signal during start-up still stops cleanly.
   */
  untilSignal: () => Promise<string>;
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
  const signal = await signalled;
  server.services.log.info({ signal }, `received ${signal}`);
  await server.stop();
  return 0;
}

async function migrateCommand(io: CliIo): Promise<number> {
  try {
    const config = await loadConfig(io.env, io.cwd);
    const log = createLogger({ level: config.settings.logLevel, secrets: collectSecrets(config) });
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

function reportStartError(error: unknown, io: CliIo): number {
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
