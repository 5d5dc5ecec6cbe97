import { sql } from "drizzle-orm";
import { bigint, check, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";
import { outbox } from "./outbox.js";
import { runs } from "./runs.js";

/** What an agent may ask the server to write to the forge (one JSON line of `$OUTPUTS_FILE` each). */
export const OUTPUT_TYPES = ["comment", "label", "pull_request", "issue"] as const;
export type OutputType = (typeof OUTPUT_TYPES)[number];

/**
 * `refused`: not allowed by the formula's `[outputs]`, malformed, or over `max`;
 * `queued`: handed to the outbox; `sent` / `failed`: what the outbox made of it.
 */
export const OUTPUT_STATUSES = ["refused", "queued", "sent", "failed"] as const;
export type OutputStatus = (typeof OUTPUT_STATUSES)[number];

/** One output request of an agent, with what the server decided about it. */
export const outputs = pgTable(
  "outputs",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" })
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    /** Line number in the run's outputs file (1-based): a line is decided once, across restarts. */
    seq: integer("seq").notNull(),
    /** The requested type as written (may be unknown, then `refused`). */
    type: text("type").notNull(),
    status: text("status").$type<OutputStatus>().notNull(),
    reason: text("reason"),
    /** The request as validated and scrubbed (null when it could not be parsed). */
    payload: jsonb("payload"),
    outboxId: bigint("outbox_id", { mode: "number" }).references(() => outbox.id, { onDelete: "set null" }),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("outputs_run_seq_idx").on(t.runId, t.seq),
    index("outputs_outbox_id_idx").on(t.outboxId),
    check("outputs_status_check", sql`${t.status} in ('refused', 'queued', 'sent', 'failed')`),
  ],
);

export type Output = typeof outputs.$inferSelect;
export type NewOutput = typeof outputs.$inferInsert;
