/**
 * Requests for what only the owning instance can do: stop an agent it runs, delete a
 * worktree directory on its disk. The instance whose API took the call writes a row in
 * `instance_requests` and NOTIFYs the owner (PostgreSQL); the owner picks it up at once
 * (or within a second by polling: PGlite, a missed notification), carries it out and
 * records the result. A dead owner's pending requests pass to the instance that takes
 * it over (see reaper.ts).
 */
import { and, asc, eq, sql } from "drizzle-orm";
import type { Database, Db, Tx } from "../../db/client.js";
import {
  FINAL_RUN_STATUSES,
  type InstanceRequest,
  type InstanceRequestKind,
  instanceRequests,
} from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";

/** The NOTIFY channel; the payload is the id of the instance that should look. */
export const OWNER_REQUEST_CHANNEL = "formula_runner_instance_requests";

/** What carrying a request out came to; `wait` leaves it pending for the next look. */
export type RequestOutcome = { state: "done" | "failed"; result: string } | { state: "wait" };

export interface OwnerRequestsOptions {
  database: Database;
  instanceId: string;
  log: Logger;
  /** Carries out a request addressed to this instance (absent: this process only asks). */
  carryOut?: (request: InstanceRequest) => Promise<RequestOutcome>;
  /** How often pending requests are looked for without a notification. Default 1 s. */
  pollMs?: number;
}

/** A request as the API shows it. */
export function requestJson(request: InstanceRequest) {
  return {
    id: request.id,
    kind: request.kind,
    instance_id: request.instanceId,
    run_id: request.runId,
    worktree_id: request.worktreeId,
    requested_by: request.requestedBy,
    state: request.state,
    result: request.result,
    created_at: request.createdAt.toISOString(),
    finished_at: request.finishedAt?.toISOString() ?? null,
  };
}

export class OwnerRequests {
  readonly #options: OwnerRequestsOptions;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  #draining: Promise<void> | undefined;
  /** A look was asked for while one ran: run another after it. */
  #again = false;
  #stopped = false;

  constructor(options: OwnerRequestsOptions) {
    this.#options = options;
    this.#log = options.log.child({ component: "instance-requests" });
  }

  /**
   * Records a request for `owner` (in `tx` when given, so it commits with the caller's
   * change) and wakes the owner. PostgreSQL delivers the notification at commit.
   */
  async ask(
    request: { kind: InstanceRequestKind; owner: string; runId?: number; worktreeId?: number },
    tx?: Db | Tx,
  ): Promise<InstanceRequest> {
    const db = tx ?? this.#options.database.db;
    const [row] = await db
      .insert(instanceRequests)
      .values({
        kind: request.kind,
        instanceId: request.owner,
        runId: request.runId ?? null,
        worktreeId: request.worktreeId ?? null,
        requestedBy: this.#options.instanceId,
      })
      .returning();
    if (this.#options.database.kind === "postgres") {
      await db.execute(sql`select pg_notify(${OWNER_REQUEST_CHANNEL}, ${request.owner})`);
    }
    // A request to this very instance (it took the owner's runs over meanwhile): look now.
    if (request.owner === this.#options.instanceId) this.wake();
    this.#log.info(
      {
        requestId: row?.id,
        kind: request.kind,
        owner: request.owner,
        runId: request.runId,
        worktreeId: request.worktreeId,
      },
      `asked instance ${request.owner} to ${request.kind === "cancel_run" ? `cancel run ${request.runId}` : `delete worktree ${request.worktreeId}`}`,
    );
    return row as InstanceRequest;
  }

  async get(id: number): Promise<InstanceRequest | undefined> {
    const [row] = await this.#options.database.db.select().from(instanceRequests).where(eq(instanceRequests.id, id));
    return row;
  }

  /** Listens (PostgreSQL) and polls for requests addressed to this instance. */
  async start(): Promise<void> {
    if (this.#timer || !this.#options.carryOut) return;
    this.#stopped = false;
    const { database, instanceId } = this.#options;
    if (database.listen) {
      this.#unlisten = await database.listen(OWNER_REQUEST_CHANNEL, (payload) => {
        if (payload === instanceId) this.wake();
      });
    }
    this.#timer = setInterval(() => this.wake(), this.#options.pollMs ?? 1_000);
    this.#timer.unref();
    this.wake();
  }

  /** Looks for pending requests now (one look at a time; a wake during one runs another after it). */
  wake(): void {
    if (this.#stopped || !this.#options.carryOut) return;
    if (this.#draining) {
      this.#again = true;
      return;
    }
    this.#draining = this.#drain().finally(() => {
      this.#draining = undefined;
      if (this.#again) {
        this.#again = false;
        this.wake();
      }
    });
  }

  async #drain(): Promise<void> {
    const { database, instanceId } = this.#options;
    const carryOut = this.#options.carryOut as NonNullable<OwnerRequestsOptions["carryOut"]>;
    let pending: InstanceRequest[];
    try {
      pending = await database.db
        .select()
        .from(instanceRequests)
        .where(and(eq(instanceRequests.instanceId, instanceId), eq(instanceRequests.state, "pending")))
        .orderBy(asc(instanceRequests.id))
        .limit(100);
    } catch (error) {
      this.#log.error({ err: error }, `could not read requests for this instance: ${errorMessage(error)}`);
      return;
    }
    for (const request of pending) {
      if (this.#stopped) return;
      let outcome: RequestOutcome;
      try {
        outcome = await carryOut(request);
      } catch (error) {
        outcome = { state: "failed", result: errorMessage(error) };
      }
      if (outcome.state === "wait") continue;
      try {
        await database.db
          .update(instanceRequests)
          .set({ state: outcome.state, result: outcome.result, finishedAt: sql`now()` })
          .where(and(eq(instanceRequests.id, request.id), eq(instanceRequests.state, "pending")));
        this.#log.info(
          { requestId: request.id, kind: request.kind, state: outcome.state, result: outcome.result },
          `request ${request.id} (${request.kind}) ${outcome.state}: ${outcome.result}`,
        );
      } catch (error) {
        this.#log.error({ err: error, requestId: request.id }, `could not record request ${request.id}'s result`);
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    const unlisten = this.#unlisten;
    this.#unlisten = undefined;
    await unlisten?.();
    await this.#draining;
  }
}

/** What carrying out a request needs from the rest of the server. */
export interface OwnerActionDeps {
  instanceId: string;
  runs: {
    get(id: number): Promise<{ id: number; status: string; instanceId: string | null }>;
    cancel(id: number): Promise<{ run: { status: string; instanceId: string | null } }>;
  };
  worker: { activeRunIds: number[] };
  worktrees: {
    purge(opts: {
      ids: number[];
      by: "api";
      projects: readonly ProjectConfig[];
    }): Promise<{ purged: { path: string }[]; kept: { reason: string }[] }>;
  };
  projects: readonly ProjectConfig[];
}

const FINAL = new Set<string>(FINAL_RUN_STATUSES);

/** How the owner carries out each kind of request. */
export function ownerActions(deps: OwnerActionDeps): (request: InstanceRequest) => Promise<RequestOutcome> {
  return async (request) => {
    if (request.kind === "cancel_run") {
      const id = Number(request.runId);
      const run = await deps.runs.get(id);
      if (FINAL.has(run.status)) return { state: "done", result: `run ${id} had already ended (${run.status})` };
      if (run.status === "running") {
        // Taken over just now and not launched yet: the worker launches it within a loop.
        if (run.instanceId === deps.instanceId && !deps.worker.activeRunIds.includes(id)) return { state: "wait" };
        // Moved on to yet another instance: asking from here would bounce between instances.
        if (run.instanceId !== deps.instanceId)
          return { state: "failed", result: `run ${id} runs on instance ${run.instanceId} now` };
      }
      const { run: after } = await deps.runs.cancel(id);
      return { state: "done", result: `run ${id} ${after.status}` };
    }
    const id = Number(request.worktreeId);
    const { purged, kept } = await deps.worktrees.purge({ ids: [id], by: "api", projects: deps.projects });
    if (purged[0]) return { state: "done", result: `removed ${purged[0].path}` };
    const reason = kept[0]?.reason ?? "not removed";
    return { state: reason.startsWith("already removed") ? "done" : "failed", result: reason };
  };
}
