import { bigint, pgTable, primaryKey, text, timestamp } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";

/**
 * One row per (formula, project, slot time): the primary key makes each schedule slot
 * fire once however many instances tick at that moment.
 */
export const scheduleSlots = pgTable(
  "schedule_slots",
  {
    formula: text("formula").notNull(),
    project: text("project").notNull(),
    slotAt: timestamp("slot_at", { withTimezone: true }).notNull(),
    runId: bigint("run_id", { mode: "number" }).references(() => runs.id, { onDelete: "set null" }),
    instanceId: text("instance_id").notNull(),
    /** `fired` on time, or `missed` when caught up after downtime. */
    note: text("note").notNull().default("fired"),
    claimedAt: timestamp("claimed_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ name: "schedule_slots_pk", columns: [t.formula, t.project, t.slotAt] })],
);

export type ScheduleSlot = typeof scheduleSlots.$inferSelect;
export type NewScheduleSlot = typeof scheduleSlots.$inferInsert;
