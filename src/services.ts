import type { Database } from "../db/client.js";
import type { Config } from "./config.js";
import type { EscalationService } from "./escalations/escalation-service.js";
import type { OwnerRequests } from "./fleet/owner-requests.js";
import type { OutboxWorker } from "./forge/outbox.js";
import type { WebhookService } from "./forge/webhook-service.js";
import type { FormulaStore } from "./formulas/store.js";
import type { Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";
import type { OutputsService } from "./outputs/outputs-service.js";
import type { RunLog } from "./runs/run-log.js";
import type { RunService } from "./runs/run-service.js";
import type { Scheduler } from "./scheduler/scheduler.js";
import type { Secret, SecretRegistry } from "./secrets.js";
import type { WorktreeManager } from "./worktrees/worktree-manager.js";

/** Whether the server takes new work; false once shutdown has begun. */
export interface Intake {
  accepting: boolean;
}

/** Everything route handlers and components share; built once by `startServer`. */
export interface Services {
  config: Config;
  database: Database;
  log: Logger;
  instanceId: string;
  version: string;
  apiToken: Secret;
  secrets: SecretRegistry;
  formulas: FormulaStore;
  runs: RunService;
  worktrees: WorktreeManager;
  webhooks: WebhookService;
  escalations: EscalationService;
  /** Sends forge writes (comments, edits, labels); `notify()` wakes it. */
  outbox: OutboxWorker;
  scheduler: Scheduler;
  /** Decides and queues the forge writes agents ask for (safe outputs). */
  outputs: OutputsService;
  /** Prometheus metrics for GET /metrics; also a run observer. */
  metrics: Metrics;
  /** Requests to other instances (cancel a run, delete a worktree) and the ones this instance carries out. */
  requests: OwnerRequests;
  /** Run logs in the database: GET /api/runs/:id/log on any instance. */
  runLog: RunLog;
  /** Re-reads the formulas directory and updates the schedules (SIGHUP, POST /api/formulas/reload). */
  reloadFormulas(): Promise<void>;
  intake: Intake;
}
