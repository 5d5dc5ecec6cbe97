import type { Database } from "../../db/client.js";
import { type Config, DEFAULT_AGENTS, DEFAULT_SANDBOX, loadSettings, type ProjectConfig } from "../../src/config.js";
import { EscalationService } from "../../src/escalations/escalation-service.js";
import { OwnerRequests } from "../../src/fleet/owner-requests.js";
import { DeliveryIngest } from "../../src/forge/delivery-ingest.js";
import { ForgeClient, PermissionCache } from "../../src/forge/forge-client.js";
import { OutboxWorker } from "../../src/forge/outbox.js";
import { WebhookService } from "../../src/forge/webhook-service.js";
import { FormulaStore } from "../../src/formulas/store.js";
import { createLogger } from "../../src/logger.js";
import { Metrics } from "../../src/metrics.js";
import { OutputsService } from "../../src/outputs/outputs-service.js";
import { RunLog } from "../../src/runs/run-log.js";
import { RunService } from "../../src/runs/run-service.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { Secret, SecretRegistry } from "../../src/secrets.js";
import type { Services } from "../../src/services.js";
import { WorktreeManager } from "../../src/worktrees/worktree-manager.js";

export const TEST_API_TOKEN = "test-api-token-0123456789";

export interface TestServicesOptions {
  database: Database;
  env?: Record<string, string>;
  projects?: ProjectConfig[];
  formulasDir?: string;
  /** Collects log lines; silent by default. */
  logLines?: string[];
}

/** Services for `createApp` in tests: a real database, a real logger, no network. */
export function testServices(options: TestServicesOptions): Services {
  const { settings } = loadSettings({ API_TOKEN: TEST_API_TOKEN, ...options.env });
  const config: Config = {
    settings,
    projects: options.projects ?? [],
    agents: DEFAULT_AGENTS,
    sandbox: DEFAULT_SANDBOX,
    configFileFound: options.projects !== undefined,
    warnings: [],
  };
  const secrets = new SecretRegistry();
  const apiToken = new Secret(TEST_API_TOKEN);
  secrets.add(apiToken);
  const lines = options.logLines;
  const log = createLogger({
    level: lines ? "debug" : "silent",
    secrets,
    destination: { write: (line: string) => lines?.push(line) },
  });
  const formulas = new FormulaStore(options.formulasDir ?? settings.formulasDir, log);
  const scheduler = new Scheduler({
    database: options.database,
    formulas,
    projects: config.projects,
    instanceId: "test-instance",
    log,
    onQueued: () => {},
  });
  const worktrees = new WorktreeManager({
    env: process.env,
    database: options.database,
    root: settings.worktreeRoot,
    instanceId: "test-instance",
    log,
  });
  return {
    config,
    database: options.database,
    log,
    instanceId: "test-instance",
    version: "0.0.0-test",
    apiToken,
    secrets,
    formulas,
    worktrees,
    requests: new OwnerRequests({ database: options.database, instanceId: "test-instance", log }),
    runs: new RunService({ database: options.database, config, formulas, worktrees, worker: undefined, secrets, log }),
    webhooks: new WebhookService({
      formulas,
      ingest: new DeliveryIngest(options.database, log),
      permissions: new PermissionCache((project) => new ForgeClient(project)),
      log,
      onQueued: () => {},
    }),
    escalations: new EscalationService({
      database: options.database,
      projects: config.projects,
      permissions: new PermissionCache((project) => new ForgeClient(project)),
      log,
      now: () => new Date(),
      onAnswered: () => {},
      onOutbox: () => {},
    }),
    outbox: new OutboxWorker({
      database: options.database,
      projects: config.projects,
      clientFor: (project) => new ForgeClient(project),
      renderStatus: async () => undefined,
      secrets,
      log,
    }),
    scheduler,
    outputs: new OutputsService({
      database: options.database,
      secrets,
      log,
      env: process.env,
      onOutbox: () => {},
      config,
      formulas,
    }),
    metrics: new Metrics({ database: options.database, log }),
    runLog: new RunLog({ database: options.database, secrets, log }),
    reloadFormulas: async () => {
      await formulas.reload();
      await scheduler.sync();
    },
    intake: { accepting: true },
  };
}

export const authHeaders = { authorization: `Bearer ${TEST_API_TOKEN}` };
