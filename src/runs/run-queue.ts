import { and, asc, eq, exists, inArray, isNotNull, not, sql } from "drizzle-orm";
import { alias } from "drizzle-orm/pg-core";
import type { Database, Db, Tx } from "../../db/client.js";
import {
  KEY_HOLDING_STATUSES,
  type NewRun,
  type OnBusy,
  type Run,
  runs,
  type TriggerKind,
} from "../../db/schema/index.js";
import { fillPlaceholders } from "../formulas/placeholders.js";
import type { Formula } from "../formulas/schema.js";
import type { RunEvent } from "./run-event.js";

/** What starts a run: who or what, and the reference kept with it. */
export interface RunTrigger {
  kind: TriggerKind;
  /** The delivery id, the slot time in ISO 8601, or who dispatched. */
  ref: string;
}

export interface EnqueueRequest {
  formula: Formula;
  project: string;
  issue?: number | undefined;
  trigger: RunTrigger;
  event?: RunEvent | undefined;
  deliveryId?: string | undefined;
}

/** The concurrency key of a run of `formula`, or null when the formula sets no limit. */
export function concurrencyKey(formula: Formula, project: string, issue: number | undefined): string | null {
  const template = formula.guards.concurrency;
  if (template === "") return null;
  return fillPlaceholders(template, { formula: formula.name, project, issue });
}

/**
 * Inserts a queued run. Takes a transaction so a trigger can record its delivery or slot
 * and the run together. With `on_busy = "cancel-running"` the runs holding the key are
 * asked to stop (the new run waits in the queue until the key is free).
 */
export async function enqueueRun(tx: Db | Tx, request: EnqueueRequest): Promise<Run> {
  const key = concurrencyKey(request.formula, request.project, request.issue);
  const row: NewRun = {
    formula: request.formula.name,
    project: request.project,
    issue: request.issue ?? null,
    triggerKind: request.trigger.kind,
    triggerRef: request.trigger.ref,
    deliveryId: request.deliveryId ?? null,
    event: request.event ?? null,
    concurrencyKey: key,
    onBusy: request.formula.guards.onBusy,
  };
  const [run] = await tx.insert(runs).values(row).returning();
  if (!run) throw new Error("insert into runs returned nothing");
  if (key !== null && request.formula.guards.onBusy === "cancel-running") {
    await tx
      .update(runs)
      .set({ cancelRequestedAt: sql`now()`, updatedAt: sql`now()` })
      .where(and(eq(runs.concurrencyKey, key), inArray(runs.status, [...KEY_HOLDING_STATUSES])));
  }
  return run;
}

/** Why a claimed run did not start, or the run that did. */
export type ClaimResult =
  | { kind: "started"; run: Run }
  | { kind: "skipped"; run: Run }
  | { kind: "failed"; run: Run }
  | { kind: "none" };

/** What the claim needs to know about a run before it may start. */
export interface GuardCheck {
  formula: Formula | undefined;
  projectKnown: boolean;
  /** Available memory in MiB, read only when the formula sets a minimum. */
  availableMemoryMb: () => Promise<number>;
}

const holder = alias(runs, "holder");

const isUniqueViolation = (error: unknown): boolean => {
  for (let e: unknown = error; e; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: string }).code === "23505") return true;
  }
  return false;
};

/**
 * Claims the oldest queued run this instance may start (`FOR UPDATE SKIP LOCKED`, so any
 * number of workers on any number of instances each get a different one), checks its
 * guards and moves it to `running`, `skipped` or `failed` in the same transaction. Runs
 * that wait for a busy key (`queue`, `cancel-running`) are passed over, not claimed.
 * The partial unique index on held keys settles the race of two instances starting runs
 * of one key at the same moment.
 */
export async function claimNextRun(
  database: Database,
  instanceId: string,
  guards: (run: Run) => GuardCheck,
): Promise<ClaimResult> {
  return database.db.transaction(async (tx) => {
    const waitsForKey = and(
      inArray(runs.onBusy, ["queue", "cancel-running"] satisfies OnBusy[]),
      isNotNull(runs.concurrencyKey),
      exists(
        tx
          .select({ one: sql`1` })
          .from(holder)
          .where(
            and(eq(holder.concurrencyKey, runs.concurrencyKey), inArray(holder.status, [...KEY_HOLDING_STATUSES])),
          ),
      ),
    );
    const [run] = await tx
      .select()
      .from(runs)
      .where(and(eq(runs.status, "queued"), not(waitsForKey as never)))
      .orderBy(asc(runs.queuedAt), asc(runs.id))
      .limit(1)
      .for("update", { skipLocked: true });
    if (!run) return { kind: "none" };

    const finish = async (status: "skipped" | "failed", detail: string, skipReason?: "busy" | "low_memory") => {
      const [updated] = await tx
        .update(runs)
        .set({
          status,
          skipReason: skipReason ?? null,
          detail,
          finishedAt: sql`now()`,
          updatedAt: sql`now()`,
          instanceId,
        })
        .where(eq(runs.id, run.id))
        .returning();
      return updated as Run;
    };

    const check = guards(run);
    if (!check.formula)
      return { kind: "failed", run: await finish("failed", `formula "${run.formula}" is not loaded`) };
    if (!check.projectKnown)
      return { kind: "failed", run: await finish("failed", `project "${run.project}" is not configured`) };

    if (run.concurrencyKey !== null) {
      const [busy] = await tx
        .select({ id: runs.id })
        .from(runs)
        .where(and(eq(runs.concurrencyKey, run.concurrencyKey), inArray(runs.status, [...KEY_HOLDING_STATUSES])))
        .limit(1);
      if (busy) {
        return {
          kind: "skipped",
          run: await finish("skipped", `concurrency key "${run.concurrencyKey}" is held by run ${busy.id}`, "busy"),
        };
      }
    }

    const minimum = check.formula.guards.minMemoryMb;
    if (minimum > 0) {
      const available = await check.availableMemoryMb();
      if (available < minimum) {
        return {
          kind: "skipped",
          run: await finish(
            "skipped",
            `${available} MiB of memory available, the formula needs ${minimum} MiB`,
            "low_memory",
          ),
        };
      }
    }

    try {
      const started = await tx.transaction(async (savepoint) => {
        const [row] = await savepoint
          .update(runs)
          .set({ status: "running", startedAt: sql`now()`, updatedAt: sql`now()`, instanceId, detail: null })
          .where(eq(runs.id, run.id))
          .returning();
        return row as Run;
      });
      return { kind: "started", run: started };
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      // Another instance started a run of the same key between our check and our update.
      if (run.onBusy === "skip") {
        return {
          kind: "skipped",
          run: await finish("skipped", `concurrency key "${run.concurrencyKey}" is held`, "busy"),
        };
      }
      return { kind: "none" };
    }
  });
}
