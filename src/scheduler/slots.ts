import { and, eq, inArray, max } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Run, scheduleSlots } from "../../db/schema/index.js";
import type { Formula } from "../formulas/schema.js";
import { enqueueRun } from "../runs/run-queue.js";

/** `fired`: on time; `missed`: caught up after downtime. */
export type SlotNote = "fired" | "missed";

/** One schedule slot of one formula for one project. */
export interface SlotClaim {
  formula: Formula;
  project: string;
  /** Whole seconds, UTC: the key every instance computes for the same tick. */
  slotAt: Date;
  instanceId: string;
  note: SlotNote;
}

/** The slot key: the scheduled time truncated to whole seconds. */
export function slotTime(at: Date): Date {
  return new Date(Math.floor(at.getTime() / 1000) * 1000);
}

/**
 * Records the slot and queues its run in one transaction; returns the run, or undefined
 * when the slot was recorded before (by another instance or an earlier fire). The primary
 * key decides, not a read before the write: on PostgreSQL a second instance inserting the
 * same slot waits for the first one's transaction and then inserts nothing.
 */
export async function claimSlot(database: Database, claim: SlotClaim): Promise<Run | undefined> {
  const slotAt = slotTime(claim.slotAt);
  const slot = slotAt.toISOString();
  return database.db.transaction(async (tx) => {
    const [inserted] = await tx
      .insert(scheduleSlots)
      .values({
        formula: claim.formula.name,
        project: claim.project,
        slotAt,
        instanceId: claim.instanceId,
        note: claim.note,
      })
      .onConflictDoNothing()
      .returning({ slotAt: scheduleSlots.slotAt });
    if (!inserted) return undefined;
    const run = await enqueueRun(tx, {
      formula: claim.formula,
      project: claim.project,
      trigger: { kind: "schedule", ref: slot },
      event: { kind: "schedule", slot },
    });
    await tx
      .update(scheduleSlots)
      .set({ runId: run.id })
      .where(
        and(
          eq(scheduleSlots.formula, claim.formula.name),
          eq(scheduleSlots.project, claim.project),
          eq(scheduleSlots.slotAt, slotAt),
        ),
      );
    return run;
  });
}

/** `formula` and `project` joined, as the key of {@link latestSlots}. */
export function slotKey(formula: string, project: string): string {
  return `${formula}\u0000${project}`;
}

/**
 * The latest recorded slot of each (formula, project) among `formulas`, keyed by
 * {@link slotKey}; pairs that never fired are absent.
 */
export async function latestSlots(database: Database, formulas: readonly string[]): Promise<Map<string, Date>> {
  const latest = new Map<string, Date>();
  if (formulas.length === 0) return latest;
  const rows = await database.db
    .select({ formula: scheduleSlots.formula, project: scheduleSlots.project, latest: max(scheduleSlots.slotAt) })
    .from(scheduleSlots)
    .where(inArray(scheduleSlots.formula, [...formulas]))
    .groupBy(scheduleSlots.formula, scheduleSlots.project);
  for (const row of rows) {
    if (row.latest !== null) latest.set(slotKey(row.formula, row.project), new Date(row.latest));
  }
  return latest;
}
