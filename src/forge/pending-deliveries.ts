import { and, asc, eq, inArray, lte, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Delivery, deliveries } from "../../db/schema/index.js";
import { FORGES, type Forge, type ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import { formatDuration } from "../formulas/duration.js";
import { runEventOf } from "../formulas/triggers.js";
import type { Logger } from "../logger.js";
import { enqueueRun } from "../runs/run-queue.js";
import { WakeableSleep } from "../worktrees/concurrency.js";
import { normalizeEvent } from "./normalize.js";
import { uncheckedReason, type WebhookService } from "./webhook-service.js";

export interface PendingDeliveriesOptions {
  database: Database;
  projects: readonly ProjectConfig[];
  webhooks: Pick<WebhookService, "decide">;
  log: Logger;
  /** Runs were queued: wake the run worker. */
  onQueued: () => void;
  now?: () => Date;
  /** Jitter source, [0, 1). */
  random?: () => number;
  /** How often due deliveries are looked for without a notify(); default 5 s. */
  pollMs?: number;
  /** Wait before the first retry; it doubles per attempt (with jitter) up to `maxBackoffMs`. Default 15 s. */
  backoffMs?: number;
  /** Default 10 min. */
  maxBackoffMs?: number;
  /** Retries after which a delivery still undecided is recorded `failed`; default 100. */
  maxAttempts?: number;
  /** Age (from receipt) after which a delivery still undecided is recorded `failed`; default 24 h. */
  maxAgeMs?: number;
  /** How long a claimed delivery is this instance's to decide; default 60 s. */
  leaseMs?: number;
}

/** Deliveries claimed per pass. */
const CLAIM_BATCH = 20;

/** The first retry of a delivery recorded pending now (what POST /webhooks stores). */
export function firstRetryAt(now: Date, backoffMs = 15_000): Date {
  return new Date(now.getTime() + backoffMs);
}

/**
 * Decides the deliveries recorded `pending` because the forge could not answer their
 * sender's permission check (a forge outage, a timeout). The forge will not deliver them
 * again, so they are kept and tried with backoff until the forge answers: then they
 * become `queued` (with their runs, in the same transaction that ends `pending`, so a
 * delivery fires once however many instances retry it) or `ignored`. One still undecided
 * after `maxAttempts` retries or `maxAgeMs` is recorded `failed` with the reason. The
 * loop never dies: errors are logged and the next pass tries again.
 */
export class PendingDeliveries {
  readonly #o: Required<Omit<PendingDeliveriesOptions, "now" | "random">>;
  readonly #now: () => Date;
  readonly #random: () => number;
  #loop: Promise<void> | undefined;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  readonly #idle = new WakeableSleep();
  #inflight: Promise<number> | undefined;

  constructor(options: PendingDeliveriesOptions) {
    this.#o = {
      pollMs: 5_000,
      backoffMs: 15_000,
      maxBackoffMs: 10 * 60_000,
      maxAttempts: 100,
      maxAgeMs: 24 * 3_600_000,
      leaseMs: 60_000,
      ...options,
    };
    this.#now = options.now ?? (() => new Date());
    this.#random = options.random ?? Math.random;
  }

  async start(): Promise<void> {
    if (this.#loop) return;
    this.#stopping = false;
    this.#stopped = undefined;
    this.#loop = this.#run();
  }

  /** Wakes the loop now (a delivery was just recorded pending). */
  notify(): void {
    this.#idle.wake();
  }

  /** Stops the loop and waits for the pass in flight. Idempotent. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stopping = true;
      this.#idle.wake();
      await this.#loop;
      this.#loop = undefined;
      await this.#inflight?.catch(() => {});
    })();
    return this.#stopped;
  }

  /** One pass: claims due pending deliveries and tries to decide each; how many were tried. */
  drainOnce(): Promise<number> {
    const pass = this.#drain();
    this.#inflight = pass;
    return pass;
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      let tried = 0;
      try {
        tried = await this.drainOnce();
      } catch (error) {
        this.#o.log.error({ err: error }, `pending deliveries: ${errorMessage(error)}; trying again`);
      }
      if (this.#stopping) break;
      if (tried >= CLAIM_BATCH) continue;
      await this.#idle.sleep(this.#o.pollMs);
    }
  }

  async #drain(): Promise<number> {
    const claimed = await this.#claim();
    for (const row of claimed) {
      try {
        await this.#decide(row);
      } catch (error) {
        // Left pending: its lease runs out and a later pass tries again.
        this.#o.log.error({ err: error, delivery: row.id }, `pending delivery ${row.id}: ${errorMessage(error)}`);
      }
    }
    return claimed.length;
  }

  /** Due pending deliveries, leased to this instance; `attempts` counts the retry. */
  async #claim(): Promise<Delivery[]> {
    const now = this.#now();
    const lease = new Date(now.getTime() + this.#o.leaseMs);
    return this.#o.database.db.transaction(async (tx) => {
      const due = await tx
        .select({ id: deliveries.id })
        .from(deliveries)
        .where(
          and(
            eq(deliveries.outcome, "pending"),
            lte(deliveries.nextAttemptAt, sql`greatest(${now.toISOString()}::timestamptz, now())`),
          ),
        )
        .orderBy(asc(deliveries.nextAttemptAt))
        .limit(CLAIM_BATCH)
        .for("update", { skipLocked: true });
      if (due.length === 0) return [];
      return tx
        .update(deliveries)
        .set({ nextAttemptAt: lease, attempts: sql`${deliveries.attempts} + 1` })
        .where(
          inArray(
            deliveries.id,
            due.map((d) => d.id),
          ),
        )
        .returning();
    });
  }

  async #decide(row: Delivery): Promise<void> {
    const { database, log } = this.#o;
    const lease = row.nextAttemptAt as Date;
    // Only while the lease is still ours and the delivery still pending.
    const ours = and(eq(deliveries.id, row.id), eq(deliveries.outcome, "pending"), eq(deliveries.nextAttemptAt, lease));
    const fields = { delivery: row.id, project: row.project, event: row.event, attempt: row.attempts };
    const project = this.#o.projects.find((p) => p.name === row.project);
    if (!project || !(FORGES as readonly string[]).includes(row.forge)) {
      await this.#fail(row, ours, `project ${row.project ?? "?"} is no longer configured`);
      return;
    }
    const event = normalizeEvent(row.forge as Forge, row.event, row.id, row.payload);
    const decision = await this.#o.webhooks.decide(event, project, async () => false);

    if (decision.kind === "unchecked") {
      const reason = uncheckedReason(event.sender?.login ?? "?", decision.error);
      const now = this.#now();
      const age = now.getTime() - row.receivedAt.getTime();
      if (row.attempts >= this.#o.maxAttempts || age >= this.#o.maxAgeMs) {
        await this.#fail(
          row,
          ours,
          `undecided: ${row.attempts} retries over ${formatDuration(Math.max(Math.round(age / 1000) * 1000, 0))} got no permission answer; last: ${reason}`,
        );
        return;
      }
      const at = new Date(now.getTime() + this.#backoff(row.attempts));
      await database.db.update(deliveries).set({ nextAttemptAt: at, reason }).where(ours);
      log.warn(
        { ...fields, err: decision.error, nextAttemptAt: at.toISOString() },
        `delivery ${row.id} still pending (retry ${row.attempts}): ${reason}; next try at ${at.toISOString()}`,
      );
      return;
    }

    const { fired, ignored } = decision;
    const runIds = await database.db.transaction(async (tx) => {
      const [decided] = await tx
        .update(deliveries)
        .set({
          outcome: fired.length > 0 ? "queued" : "ignored",
          reason: fired.length > 0 ? null : (ignored ?? "fired nothing"),
          nextAttemptAt: null,
        })
        .where(ours)
        .returning({ id: deliveries.id });
      if (!decided) return undefined;
      const ids: number[] = [];
      for (const m of fired) {
        const run = await enqueueRun(tx, {
          formula: m.formula,
          project: project.name,
          issue: m.issue,
          trigger: { kind: "webhook", ref: row.id },
          event: runEventOf(event),
          deliveryId: row.id,
        });
        ids.push(run.id);
      }
      return ids;
    });
    if (runIds === undefined) return;
    if (runIds.length > 0) {
      log.info(
        { ...fields, runs: runIds, formulas: fired.map((m) => m.formula.name) },
        `pending delivery ${row.id} decided after ${row.attempts} retries: queued ${runIds.length} run(s)`,
      );
      this.#o.onQueued();
    } else {
      log.info({ ...fields, reason: ignored }, `pending delivery ${row.id} decided: fired nothing (${ignored})`);
    }
  }

  async #fail(row: Delivery, ours: ReturnType<typeof and>, reason: string): Promise<void> {
    const [failed] = await this.#o.database.db
      .update(deliveries)
      .set({ outcome: "failed", reason, nextAttemptAt: null })
      .where(ours)
      .returning({ id: deliveries.id });
    if (failed) {
      this.#o.log.error(
        { delivery: row.id, project: row.project, event: row.event, attempt: row.attempts },
        `delivery ${row.id} failed: ${reason}`,
      );
    }
  }

  /** Exponential backoff with jitter: `backoffMs` doubling per retry, capped, times 0.5 to 1.5. */
  #backoff(attempts: number): number {
    const base = Math.min(this.#o.backoffMs * 2 ** Math.min(Math.max(0, attempts - 1), 30), this.#o.maxBackoffMs);
    return Math.round(base * (0.5 + this.#random()));
  }
}
