import { readdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { ApiClient, ApiError } from "./cli/api-client.js";
import { type Output, runCommand, runsList, runsShow, worktreesList, worktreesPurge } from "./cli/commands.js";
import { COMPLETION_SHELLS, type CompletionShell, completionScript } from "./cli/completion.js";
import { withColor } from "./cli/format.js";
import { DELIVERY_OUTCOME_NAMES, RUN_STATUS_NAMES, WORKTREE_STATE_NAMES } from "./cli/vocabulary.js";
import { errorMessage } from "./errors.js";
import { durationProblem, parseDuration } from "./formulas/duration.js";
import type { Logger } from "./logger.js";
import { VERSION } from "./package-info.js";

// Only what every command needs is imported above. The server (database drivers, octokit,
// pino, zod schemas) is imported by the commands that use it, so `--version`, `--help` and
// the API commands start in a fraction of the time.

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
  /** The whole of stdin as text (`reply` without --body); absent: nothing to read. */
  readStdin?: () => Promise<string>;
  /** Calls `reload` on SIGHUP until the returned function is called. */
  onHangup?: (reload: () => void) => () => void;
  /** Keeps `serve` up through database driver faults no caller can catch (see process-guard.ts). */
  guardProcess?: (log: Logger) => () => void;
}

const line = (out: CliIo["stdout"], text = "") => out.write(`${text}\n`);

/** Runs one CLI invocation and returns its exit code. Never calls process.exit. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let exitCode = 0;
  // Colours only on a terminal and never with NO_COLOR; each stream decides for itself.
  const out = withColor(io.stdout, io.env);
  const err = withColor(io.stderr, io.env);
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
        "API_TOKEN, INSTANCE_ID, SHUTDOWN_GRACE (30s), MAX_SESSIONS (4), LOG_LEVEL (info),\n" +
        "LOG_FORMAT (json | pretty; unset: pretty on a terminal, else json), NO_COLOR.",
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
    const { ConfigError, readSettings } = await import("./settings.js");
    const { settings, problems } = readSettings(io.env, io.cwd);
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
      api((c) => runCommand(c, { formula, ...opts, actor: `cli:${safeUser()}` }, out, err))(),
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
    .addHelpText("after", `\nStatuses: ${RUN_STATUS_NAMES.join(", ")}.${apiHelp}`)
    .action((opts: { status?: string; formula?: string; project?: string; limit?: number; json: boolean }) =>
      api((c) => runsList(c, opts, out))(),
    );
  runsCommand
    .command("show")
    .description("one run: status, phases, sessions, worktree, escalations")
    .argument("<id>", "run id")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((id: string, opts: { json: boolean }) => api((c) => runsShow(c, id, opts.json, out))());

  const worktreesCommand = program.command("worktrees").description("list and purge run worktrees");
  worktreesCommand
    .command("list")
    .description("worktrees, newest first")
    .addOption(new Option("-s, --state <state>", "only this state").choices([...WORKTREE_STATE_NAMES]))
    .option("-p, --project <name>", "only this project")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((opts: { state?: string; project?: string; json: boolean }) => api((c) => worktreesList(c, opts, out))());
  worktreesCommand
    .command("purge")
    .description("remove preserved worktrees: one by id, or all older than an age (default 24h)")
    .addOption(new Option("--id <id>", "remove this preserved worktree").conflicts("olderThan"))
    .option("--older-than <age>", "a duration like 24h, 90m, 1.5h or 2d (default 24h)", (value: string) => {
      if (parseDuration(value) === undefined) throw new InvalidArgumentError(durationProblem(value));
      return value;
    })
    .option("--dry-run", "say what would be removed, remove nothing", false)
    .option("--json", "print JSON", false)
    .addHelpText(
      "after",
      `\nNever removes a worktree whose run is still active, nor anything outside WORKTREE_ROOT.${apiHelp}`,
    )
    .action((opts: { id?: string; olderThan?: string; dryRun: boolean; json: boolean }) =>
      api((c) =>
        worktreesPurge(
          c,
          {
            ...(opts.id !== undefined && { id: opts.id }),
            ...(opts.olderThan !== undefined && { olderThan: opts.olderThan }),
            dryRun: opts.dryRun,
            json: opts.json,
          },
          out,
        ),
      )(),
    );

  const verbs = () => import("./cli/verbs.js");
  program
    .command("logs")
    .description("a run's log; with --follow, streamed until the run ends (exit 0 only if it ends done)")
    .argument("<id>", "run id")
    .option("-f, --follow", "keep streaming until the run ends", false)
    .addHelpText("after", apiHelp)
    .action((id: string, opts: { follow: boolean }) =>
      api(async (c) => (await verbs()).logsCommand(c, { id, follow: opts.follow }, out, err))(),
    );
  program
    .command("cancel")
    .description("stop a run's agent; the run ends cancelled")
    .argument("<id>", "run id")
    .addHelpText("after", apiHelp)
    .action((id: string) => api(async (c) => (await verbs()).cancelCommand(c, id, out))());
  program
    .command("reply")
    .description("answer a run's open question (the text from stdin when --body is left out); the run resumes")
    .argument("<id>", "run id")
    .option("-b, --body <text>", "the answer")
    .addHelpText("after", apiHelp)
    .action((id: string, opts: { body?: string }) =>
      api(async (c) => {
        const body = opts.body ?? (await (io.readStdin?.() ?? Promise.resolve("")));
        if (body.trim() === "") {
          line(err, "formula-runner: no answer: pass --body TEXT or pipe the text on stdin");
          return 1;
        }
        return (await verbs()).replyCommand(c, { id, body, author: `cli:${safeUser()}` }, out);
      })(),
    );

  const collectList = (value: string, previous: string[]) => [...previous, value];
  program
    .command("output")
    .description("for agents: ask the server for a forge write (appends one checked line to $OUTPUTS_FILE)")
    .argument("<type>", "comment | label | pull_request | issue")
    .option("-t, --title <text>", "title (pull_request, issue)")
    .option("-b, --body <text>", "body (comment, pull_request, issue)")
    .option("--body-file <path>", 'read the body from a file ("-": stdin)')
    .option("--add <label>", "label to add (repeatable)", collectList, [])
    .option("--remove <label>", "label to remove (repeatable)", collectList, [])
    .addHelpText(
      "after",
      "\nThe formula's [outputs] table says what is allowed; the decision shows in GET /api/runs/$RUN_ID.",
    )
    .action(
      async (
        type: string,
        opts: { title?: string; body?: string; bodyFile?: string; add: string[]; remove: string[] },
      ) => {
        const { outputCommand } = await import("./cli/output-command.js");
        exitCode = await outputCommand({ type, ...opts }, io, out, err);
      },
    );

  const deliveriesCommand = program.command("deliveries").description("webhook deliveries the server received");
  deliveriesCommand
    .command("list")
    .description("newest first: what each delivery fired, or why it fired nothing")
    .addOption(new Option("-o, --outcome <outcome>", "only this outcome").choices(DELIVERY_OUTCOME_NAMES))
    .option("-p, --project <name>", "only this project")
    .option("-n, --limit <n>", "how many (default 50, at most 500)", positiveInt)
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((opts: { outcome?: string; project?: string; limit?: number; json: boolean }) =>
      api(async (c) => (await verbs()).deliveriesList(c, opts, out))(),
    );

  const formulasCommand = program.command("formulas").description("the formulas the server has loaded");
  formulasCommand
    .command("list")
    .description("formulas with the projects they fire on, their triggers and any load problems")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((opts: { json: boolean }) => api(async (c) => (await verbs()).formulasList(c, opts.json, out, err))());
  formulasCommand
    .command("reload")
    .description("make the server read the formulas directory again (what SIGHUP does)")
    .option("--json", "print JSON", false)
    .addHelpText("after", apiHelp)
    .action((opts: { json: boolean }) => api(async (c) => (await verbs()).formulasReload(c, opts.json, out, err))());

  program
    .command("init")
    .description(
      "write a commented formula-runner.toml for one project (the clone in the current directory by default)",
    )
    .option("--repo-path <path>", "the project's local clone (default: the current directory)")
    .option("--repo <owner/name>", "the repository on the forge (default: from the clone's origin)")
    .option("--name <slug>", "the project's name (default: the repository's name)")
    .addOption(
      new Option("--forge <forge>", "github (default), gitea or forgejo").choices(["github", "gitea", "forgejo"]),
    )
    .option("--forge-url <url>", "REST base; required for gitea/forgejo (https://host/api/v1)")
    .option("--branch <name>", "primary branch (default main)")
    .option("--formulas <names>", 'formulas that fire on the project, comma-separated ("*" = all; default none)')
    .option("--force", "overwrite an existing file", false)
    .action(
      async (opts: {
        repoPath?: string;
        repo?: string;
        name?: string;
        forge?: string;
        forgeUrl?: string;
        branch?: string;
        formulas?: string;
        force: boolean;
      }) => {
        const { initCommand } = await import("./cli/init.js");
        const file = path.resolve(io.cwd, io.env.FORMULA_RUNNER_CONFIG?.trim() || "formula-runner.toml");
        const { formulas, ...rest } = opts;
        exitCode = await initCommand(
          {
            ...rest,
            file,
            ...(formulas !== undefined && {
              formulas: formulas
                .split(",")
                .map((f) => f.trim())
                .filter(Boolean),
            }),
          },
          io.cwd,
          out,
          err,
        );
      },
    );

  program
    .command("doctor")
    .description("check the set-up: git, clones, forge tokens, webhook secrets, agents, sandbox, database, port")
    .option("--json", "print JSON", false)
    .addHelpText(
      "after",
      "\nOne line per check (ok, warn, FAIL with what to do); exit 1 when any check fails.\n" +
        "Reads the same environment and config file as serve; changes nothing.",
    )
    .action(async (opts: { json: boolean }) => {
      try {
        const { printDoctor, runDoctor } = await import("./cli/doctor.js");
        exitCode = printDoctor(await runDoctor(io.env, io.cwd), opts.json, out);
      } catch (error) {
        exitCode = reportStartError(error, io);
      }
    });

  program
    .command("completion")
    .description("print a shell completion script")
    .addArgument(new Argument("<shell>", "bash or zsh").choices(COMPLETION_SHELLS))
    .addHelpText(
      "after",
      "\nbash: source <(formula-runner completion bash)   (in ~/.bashrc to keep it)\n" +
        "zsh:  source <(formula-runner completion zsh)    (in ~/.zshrc, after compinit)",
    )
    .action((shell: CompletionShell) => {
      out.write(completionScript(program, shell));
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
  let server: import("./server.js").RunningServer;
  try {
    const { startServer } = await import("./server.js");
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
    const [{ loadConfig }, { createLogger }, { chooseLogFormat }, { collectSecrets, openAndMigrate }] =
      await Promise.all([
        import("./config.js"),
        import("./logger.js"),
        import("./log-format.js"),
        import("./server.js"),
      ]);
    const config = await loadConfig(io.env, io.cwd);
    const { settings } = config;
    const log = createLogger({
      level: settings.logLevel,
      secrets: collectSecrets(config, io.env),
      destination: io.stdout,
      ...chooseLogFormat(settings.logFormat, io.stdout, settings.noColor),
    });
    const database = await openAndMigrate(config, log);
    await database.close();
    return 0;
  } catch (error) {
    return reportStartError(error, io);
  }
}

async function validateCommand(files: string[], io: CliIo): Promise<number> {
  const [{ ConfigError, loadConfig }, { formatProblem, validateFiles }] = await Promise.all([
    import("./config.js"),
    import("./formulas/load.js"),
  ]);
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
  // ConfigError, recognised without importing config.js (and zod) into every command.
  const problems = (error as { name?: string; problems?: unknown }).problems;
  if ((error as { name?: string }).name === "ConfigError" && Array.isArray(problems)) {
    line(io.stderr, "formula-runner: invalid configuration:");
    for (const problem of problems) line(io.stderr, `  ${String(problem)}`);
    return 1;
  }
  line(io.stderr, `formula-runner: ${errorMessage(error)}`);
  const cause = (error as { cause?: unknown }).cause;
  if (cause) line(io.stderr, `  caused by: ${errorMessage(cause)}`);
  return 1;
}
