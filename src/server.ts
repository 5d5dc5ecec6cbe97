import { existsSync } from "node:fs";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { type ServerType, serve } from "@hono/node-server";
import { type Database, openDatabase } from "../db/client.js";
import { migrate } from "../db/migrate.js";
import { ensureApiToken } from "./api-token.js";
import { createApp } from "./app.js";
import { checkClones } from "./clone-check.js";
import { type Config, ConfigError, loadConfig, type ProjectConfig } from "./config.js";
import { makePrivate, prepareDataDir } from "./data-dir.js";
import { closeIfBodyUnread } from "./early-answer.js";
import { errorMessage } from "./errors.js";
import { EscalationMonitor, EscalationService } from "./escalations/escalation-service.js";
import { OwnerRequests, ownerActions } from "./fleet/owner-requests.js";
import { InstanceReaper } from "./fleet/reaper.js";
import { DeliveryIngest } from "./forge/delivery-ingest.js";
import { ForgeClient, PermissionCache } from "./forge/forge-client.js";
import { OutboxWorker } from "./forge/outbox.js";
import { firstRetryAt, PendingDeliveries, type PendingDeliveriesOptions } from "./forge/pending-deliveries.js";
import { ForgeReporter } from "./forge/reporter.js";
import { renderStatusFor } from "./forge/status-comment.js";
import { WebhookService } from "./forge/webhook-service.js";
import { logFiring } from "./formulas/projects.js";
import { FormulaStore } from "./formulas/store.js";
import { Housekeeping } from "./housekeeping.js";
import { heartbeatIntervalMs, InstanceHeartbeat, resolveInstanceId } from "./instance.js";
import { chooseLogFormat } from "./log-format.js";
import { createLogger, type Logger, type LoggerOptions } from "./logger.js";
import { type MemoryProbe, readAvailableMemoryMb } from "./memory.js";
import { Metrics } from "./metrics.js";
import { OutputsService } from "./outputs/outputs-service.js";
import { VERSION } from "./package-info.js";
import { rootRefusal } from "./runs/agent-env.js";
import type { RunObserver } from "./runs/run-executor.js";
import { RunLog } from "./runs/run-log.js";
import { RunService } from "./runs/run-service.js";
import { RunWorker } from "./runs/run-worker.js";
import { Scheduler } from "./scheduler/scheduler.js";
import { SecretRegistry } from "./secrets.js";
import type { Services } from "./services.js";
import { SandboxHost } from "./sessions/sandbox.js";
import { ensureClone } from "./worktrees/managed-clone.js";
import { WorktreeManager } from "./worktrees/worktree-manager.js";

/** A long-lived part of the server. `stop()` is idempotent and waits for work in flight. */
export interface Component {
  name: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface StartOptions {
  /** The process environment (main.ts passes process.env; tests pass their own). */
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
  /** Where log lines go (tests collect them); stdout by default. */
  logDestination?: LoggerOptions["destination"];
  /** Available memory probe (tests simulate a host under pressure). */
  readMemory?: MemoryProbe;
  /** Clock for expiries and deadlines. */
  now?: () => Date;
  /** Extra observers of run events. */
  observers?: RunObserver[];
  /** An open, migrated database to use instead of the configured one (tests); the caller closes it. */
  database?: Database;
  /** How often runs left `running` with nobody executing them are settled (tests shorten it). */
  runSweepMs?: number;
  /** How long a stream-json agent may run on after its final result before it is stopped; 30 s. */
  resultLingerMs?: number;
  /** Housekeeping's first round (adoption of unrecorded worktrees) waits for this; tests hold it. */
  housekeepingAfter?: Promise<void>;
  /** Retry timing of deliveries whose permission check could not be made (tests shorten it). */
  pendingDeliveries?: Pick<
    PendingDeliveriesOptions,
    "pollMs" | "backoffMs" | "maxBackoffMs" | "maxAttempts" | "maxAgeMs" | "leaseMs"
  >;
}

export interface RunningServer {
  url: string;
  port: number;
  services: Services;
  /** Stops intake, then every component in reverse order, then the database. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Credentials agents inherit from the server's environment (ANTHROPIC_*, CLAUDE_*): an
 * agent may print them, so their values are scrubbed like the configured secrets.
 */
const AGENT_CREDENTIAL = /^(ANTHROPIC|CLAUDE)_\w*(KEY|TOKEN|SECRET|PASSWORD)$/;

/** Every secret value of the configuration and agent credentials, so logs and comments can be scrubbed of them. */
export function collectSecrets(config: Config, env: Readonly<Record<string, string | undefined>> = {}): SecretRegistry {
  const secrets = new SecretRegistry();
  for (const [name, value] of Object.entries(env)) if (AGENT_CREDENTIAL.test(name)) secrets.add(value);
  secrets.add(config.settings.apiToken);
  for (const project of config.projects) {
    secrets.add(project.token);
    secrets.add(project.webhookSecret);
  }
  const url = config.settings.databaseUrl?.reveal();
  if (url) {
    try {
      secrets.add(decodeURIComponent(new URL(url).password));
    } catch {
      secrets.add(url);
    }
  }
  return secrets;
}

/** Opens the configured database and applies pending migrations, saying what it does. */
export async function openAndMigrate(config: Config, log: Logger): Promise<Database> {
  const { settings } = config;
  const url = settings.databaseUrl?.reveal();
  if (!url) {
    const fresh = !existsSync(path.join(settings.dataDir, "pgdata", "PG_VERSION"));
    log.info(
      { dataDir: settings.dataDir },
      fresh
        ? "creating the embedded database: this first start takes 10-25 s (later starts open it in about a second)"
        : "opening the embedded database",
    );
  }
  const database = await openDatabase(url ? { url } : { dataDir: `${settings.dataDir}/pgdata` });
  try {
    // PGlite makes its data directory with the default mode; like PostgreSQL's, it is private.
    if (!url) await makePrivate(`${settings.dataDir}/pgdata`, log);
    const result = await migrate(database);
    for (const tag of result.edited) log.warn({ migration: tag }, `migration ${tag} changed after it was applied`);
    log.info(
      { database: database.kind, location: database.location, applied: result.applied },
      result.applied.length > 0 ? `applied ${result.applied.length} migration(s)` : "database schema is up to date",
    );
  } catch (error) {
    await database.close();
    throw error;
  }
  return database;
}

/**
 * The composition root: config -> logger -> database -> migrations -> components -> HTTP.
 * Throws `ConfigError` for a bad configuration before anything is started.
 */
export async function startServer(options: StartOptions): Promise<RunningServer> {
  const config = await loadConfig(options.env, options.cwd);
  const { settings } = config;
  const secrets = collectSecrets(config, options.env);
  const logTo = options.logDestination ?? process.stdout;
  const log = createLogger({
    level: settings.logLevel,
    secrets,
    destination: logTo,
    ...chooseLogFormat(settings.logFormat, logTo, settings.noColor),
  });

  await prepareDataDir(settings.dataDir, log);
  const apiToken = await ensureApiToken(settings.dataDir, settings.apiToken, log);
  secrets.add(apiToken);
  const instanceId = await resolveInstanceId(settings.dataDir, settings.instanceId);
  const instanceLog = log.child({ instanceId });

  for (const warning of config.warnings) instanceLog.warn(`config: ${warning}`);
  if (!config.configFileFound && config.projects.length === 0) {
    instanceLog.warn(
      { file: settings.configFile },
      `no config file at ${settings.configFile}: running with zero projects`,
    );
  } else {
    instanceLog.info(
      { projects: config.projects.map((p) => p.name) },
      `${config.projects.length} project(s) configured`,
    );
  }
  // Before the slow part (the database): a wrong repo_path fails now, with the fix.
  const clones = await checkClones(config.projects, options.env);
  for (const warning of clones.warnings) instanceLog.warn(`config: ${warning}`);
  if (clones.problems.length > 0) throw new ConfigError(clones.problems);

  // Bind the port first: a port in use fails in milliseconds, not after the database is
  // open, and probes get an answer (503 "starting") while the rest starts.
  const starting = startingHandler(VERSION);
  let handler: (request: Request, env: unknown) => Response | Promise<Response> = starting.fetch;
  const httpServer = await listen(settings.host, settings.port, (request, env) => {
    const response = handler(request, env);
    // Synchronous answers stay synchronous: @hono/node-server writes those on a fast path.
    return response instanceof Promise
      ? response.then((r) => closeIfBodyUnread(r, env))
      : closeIfBodyUnread(response, env);
  });
  const address = httpServer.address() as AddressInfo;
  const host = address.address.includes(":") ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  instanceLog.info(
    { url },
    `bound ${url}; answering 503 until ready${
      config.settings.databaseUrl ? "" : " (the first start creates the embedded database: 10-25 s)"
    }`,
  );

  for (const profile of Object.values(config.agents)) {
    // Said at start, not only when a run fails: the fix is how the server is started.
    const refusal = rootRefusal(profile.command, { IS_SANDBOX: options.env.IS_SANDBOX ?? "" });
    if (refusal) instanceLog.warn({ agent: profile.name }, `agent "${profile.name}": ${refusal}; its runs will fail`);
  }

  const sandbox = new SandboxHost(
    { bwrap: config.sandbox.bwrap, socat: config.sandbox.socat, ripgrep: config.sandbox.ripgrep },
    options.env,
  );
  const sandboxProbe = await sandbox.probe();
  if (sandboxProbe.ok) {
    instanceLog.info(`agents run sandboxed (bubblewrap); default [sandbox] mode = "${config.sandbox.mode}"`);
  } else if (config.sandbox.mode !== "off") {
    // Loud on purpose: agents read text strangers wrote.
    instanceLog.warn(
      `NO AGENT SANDBOX: ${sandboxProbe.reason}. Runs in mode "auto" will run their agents unsandboxed; ` +
        'runs in mode "required" will fail.',
    );
  }

  starting.doing = "opening the database";
  let database: Database;
  try {
    database = options.database ?? (await openAndMigrate(config, instanceLog));
  } catch (error) {
    await closeHttpServer(httpServer);
    throw error;
  }
  const formulas = new FormulaStore(settings.formulasDir, instanceLog);
  const now = options.now ?? (() => new Date());
  const worktrees = new WorktreeManager({
    database,
    root: settings.worktreeRoot,
    instanceId,
    log: instanceLog,
    now,
    env: options.env,
  });
  const serverUrl: string | undefined = url;
  const forgeClients = new Map<string, ForgeClient>();
  const forgeClient = (project: ProjectConfig) => {
    let client = forgeClients.get(project.name);
    if (!client) {
      client = new ForgeClient(project);
      forgeClients.set(project.name, client);
    }
    return client;
  };
  const permissions = new PermissionCache(forgeClient);
  const outbox = new OutboxWorker({
    database,
    projects: config.projects,
    clientFor: forgeClient,
    renderStatus: (runId) => renderStatusFor(database, runId, now()),
    secrets,
    log: instanceLog,
    now,
  });
  // The executor calls outputs.collect(...) after each session; the API appends to the same path.
  const outputs = new OutputsService({
    database,
    secrets,
    log: instanceLog,
    env: options.env,
    onOutbox: () => outbox.notify(),
    config,
    formulas,
  });
  const reporter = new ForgeReporter({
    database,
    projects: config.projects,
    formulas,
    log: instanceLog,
    onOutbox: () => outbox.notify(),
  });
  const metrics = new Metrics({ database, log: instanceLog });
  const runLog = new RunLog({ database, secrets, log: instanceLog });
  // The worker and the escalations refer to each other (answers wake the worker, timeouts
  // settle a run's worktree through it): `worker` is assigned just below.
  let worker: RunWorker;
  const escalationService = new EscalationService({
    database,
    projects: config.projects,
    permissions,
    log: instanceLog,
    now,
    onAnswered: () => worker.notify(),
    onOutbox: () => outbox.notify(),
    onExpired: (run) => worker.settleEnded(run),
  });
  const escalationMonitor = new EscalationMonitor(escalationService, instanceLog);
  worker = new RunWorker(
    {
      database,
      config,
      formulas,
      worktrees,
      log: instanceLog,
      instanceId,
      secrets,
      sandbox,
      outputs,
      serverEnv: options.env,
      serverUrl: () => serverUrl,
      observers: [reporter, metrics, ...(options.observers ?? [])],
      escalations: escalationService,
      now,
      terminalLingerMs: 60_000,
      resultLingerMs: options.resultLingerMs ?? 30_000,
      runLog,
    },
    {
      maxSessions: settings.maxSessions,
      shutdownGraceMs: settings.shutdownGraceMs,
      readMemory: options.readMemory ?? (() => readAvailableMemoryMb()),
      ...(options.runSweepMs !== undefined ? { sweepMs: options.runSweepMs } : {}),
    },
  );
  // Requests to the owner of a run or worktree on another instance, and the ones this one carries out.
  const requests: OwnerRequests = new OwnerRequests({
    database,
    instanceId,
    log: instanceLog,
    carryOut: (request) =>
      ownerActions({ instanceId, runs: runService, worker, worktrees, projects: config.projects })(request),
  });
  const runService = new RunService({
    database,
    config,
    formulas,
    worktrees,
    worker,
    secrets,
    log: instanceLog,
    instanceId,
    requests,
  });
  const housekeeping = new Housekeeping({
    worktrees,
    projects: config.projects,
    log: instanceLog,
    ...(options.housekeepingAfter ? { firstRoundAfter: options.housekeepingAfter } : {}),
  });
  // The retries of deliveries whose permission check the forge could not answer; assigned
  // just below (the webhook service wakes it, and it decides through the webhook service).
  let pendingDeliveries: PendingDeliveries;
  const webhooks = new WebhookService({
    formulas,
    ingest: new DeliveryIngest(database, instanceLog),
    permissions,
    log: instanceLog,
    onQueued: () => worker.notify(),
    escalations: escalationService,
    onPending: () => pendingDeliveries.notify(),
    firstRetryAt: () => firstRetryAt(now(), options.pendingDeliveries?.backoffMs),
  });
  pendingDeliveries = new PendingDeliveries({
    database,
    projects: config.projects,
    webhooks,
    log: instanceLog,
    onQueued: () => worker.notify(),
    now,
    ...options.pendingDeliveries,
  });
  const scheduler = new Scheduler({
    database,
    formulas,
    projects: config.projects,
    instanceId,
    log: instanceLog,
    onQueued: () => worker.notify(),
    now,
  });
  // One reload at a time; a request during one gets a fresh reload after it, so an edit
  // made while a reload was reading the files is never missed.
  let reloadChain: Promise<void> = Promise.resolve();
  const reloadFormulas = () => {
    reloadChain = reloadChain
      .catch(() => {})
      .then(async () => {
        await formulas.reload();
        logFiring(instanceLog, formulas.list(), config.projects);
        await scheduler.sync();
      });
    return reloadChain;
  };
  const services: Services = {
    config,
    database,
    log: instanceLog,
    instanceId,
    version: VERSION,
    apiToken,
    secrets,
    formulas,
    runs: runService,
    worktrees,
    webhooks,
    escalations: escalationService,
    outbox,
    scheduler,
    outputs,
    metrics,
    runLog,
    requests,
    reloadFormulas,
    intake: { accepting: true },
  };

  const components: Component[] = [];
  const started: Component[] = [];
  const heartbeat = new InstanceHeartbeat({
    database,
    id: instanceId,
    version: VERSION,
    log: instanceLog,
    intervalMs: heartbeatIntervalMs(settings.instanceDeadAfterMs),
    // The runs it still executes were taken over elsewhere: stop them, record nothing.
    onDeclaredDead: () => worker.abandonAll(),
  });
  components.push({ name: "heartbeat", start: () => heartbeat.start(), stop: () => heartbeat.stop() });
  components.push({
    name: "formulas",
    start: async () => {
      await formulas.reload();
      logFiring(instanceLog, formulas.list(), config.projects);
    },
    stop: async () => {},
  });
  components.push({
    name: "clones",
    // Projects with clone_url get their clone now (a fresh volume); a failure is loud but
    // not fatal: the forge may be down, and each run tries again before its fetch.
    start: async () => {
      for (const project of config.projects) {
        if (!project.cloneUrl) continue;
        try {
          await ensureClone(project, { env: options.env, log: instanceLog });
        } catch (error) {
          instanceLog.error(
            { err: error, project: project.name },
            `could not clone ${project.name}: ${errorMessage(error)}; its runs fail until it can be cloned`,
          );
        }
      }
    },
    stop: async () => {},
  });
  // Stopped after the run worker (reverse order): the last sessions' output is written.
  components.push({ name: "run logs", start: () => runLog.start(), stop: () => runLog.stop() });
  components.push({ name: "outbox", start: () => outbox.start(), stop: () => outbox.stop() });
  components.push({ name: "housekeeping", start: () => housekeeping.start(), stop: () => housekeeping.stop() });
  components.push({
    name: "escalation timeouts",
    start: () => escalationMonitor.start(),
    stop: () => escalationMonitor.stop(),
  });
  components.push({ name: "sandbox", start: async () => {}, stop: () => sandbox.stop() });
  components.push({ name: "run worker", start: () => worker.start(), stop: () => worker.stop() });
  // After the worker: what it takes over from a dead instance, it launches.
  const reaper = new InstanceReaper({
    database,
    instanceId,
    deadAfterMs: settings.instanceDeadAfterMs,
    intervalMs: heartbeatIntervalMs(settings.instanceDeadAfterMs),
    log: instanceLog,
    onTakeover: (takeover) => {
      metrics.instanceTakenOver(takeover);
      worker.takeOverNow();
      if (takeover.requests.length > 0) requests.wake();
    },
  });
  components.push({ name: "instance reaper", start: () => reaper.start(), stop: () => reaper.stop() });
  components.push({ name: "instance requests", start: () => requests.start(), stop: () => requests.stop() });
  components.push({
    name: "pending deliveries",
    start: () => pendingDeliveries.start(),
    stop: () => pendingDeliveries.stop(),
  });
  components.push({ name: "scheduler", start: () => scheduler.start(), stop: () => scheduler.stop() });

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      services.intake.accepting = false;
      instanceLog.info("stopping: no new work accepted");
      await closeHttpServer(httpServer);
      for (const component of [...started].reverse()) {
        try {
          await component.stop();
        } catch (error) {
          instanceLog.error(
            { err: error, component: component.name },
            `stopping ${component.name} failed: ${errorMessage(error)}`,
          );
        }
      }
      if (!options.database) await database.close();
      instanceLog.info("stopped");
    })();
    return stopping;
  };

  try {
    for (const component of components) {
      starting.doing = `starting ${component.name}`;
      await component.start();
      started.push(component);
    }
    const app = createApp(services);
    handler = (request, env) => app.fetch(request, env);
    instanceLog.info(
      { url, version: VERSION, database: database.kind },
      `formula-runner ${VERSION} listening on ${url}`,
    );
    return { url, port: address.port, services, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * What the port answers while the server starts: `/healthz` 200 (the process is alive),
 * everything else 503 with what it is doing, so probes and clients know to wait.
 */
function startingHandler(version: string) {
  const state = {
    doing: "starting",
    fetch: (request: Request): Response => {
      const { pathname } = new URL(request.url);
      if (pathname === "/healthz") return Response.json({ status: "starting", version });
      return Response.json(
        { error: { code: "unavailable", message: `starting (${state.doing}); try again in a few seconds` } },
        { status: 503, headers: { "retry-after": "5" } },
      );
    },
  };
  return state;
}

/** Listens on host:port; a port in use is an error that says so and what to do. */
function listen(
  host: string,
  port: number,
  fetch: (request: Request, env: unknown) => Response | Promise<Response>,
): Promise<ServerType> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch, port, hostname: host }, () => resolve(server));
    server.once("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "EADDRINUSE") {
        reject(
          new Error(
            `port ${port} on ${host} is already in use (another formula-runner?); stop it or set PORT to a free port`,
            { cause: error },
          ),
        );
      } else {
        reject(error);
      }
    });
  });
}

/** How long requests in flight (a streamed log, say) may take to finish at shutdown. */
const HTTP_DRAIN_MS = 5_000;

/**
 * Stops accepting connections, closes idle keep-alive ones and waits for requests in
 * flight; streams still open after HTTP_DRAIN_MS are cut.
 */
function closeHttpServer(server: ServerType): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    const force = setTimeout(() => {
      if ("closeAllConnections" in server) server.closeAllConnections();
    }, HTTP_DRAIN_MS);
    server.close(() => {
      clearTimeout(force);
      resolve();
    });
    if ("closeIdleConnections" in server) server.closeIdleConnections();
  });
}
