import { bigint, index, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";
import { sessions } from "./sessions.js";

/** Every phase an agent signalled, in order. */
export const phases = pgTable(
  "phases",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" })
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    sessionId: bigint("session_id", { mode: "number" }).references(() => sessions.id, { onDelete: "cascade" }),
    phase: text("phase").notNull(),
    detail: text("detail"),
    at: timestamp("at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index("phases_run_id_idx").on(t.runId, t.id)],
);

export type Phase = typeof phases.$inferSelect;
export type NewPhase = typeof phases.$inferInsert;
