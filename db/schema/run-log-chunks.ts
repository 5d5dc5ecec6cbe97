import { bigint, integer, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";

/**
 * A run's log (its sessions' output, secrets scrubbed), append-only in chunks, so any
 * instance serves any run's log. `offset` is the byte position of the chunk in the whole
 * log; when a run passes its cap the oldest chunks are deleted, so a log may start above 0.
 */
export const runLogChunks = pgTable(
  "run_log_chunks",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" })
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    offset: bigint("offset", { mode: "number" }).notNull(),
    /** UTF-8 length of `data`. */
    bytes: integer("bytes").notNull(),
    data: text("data").notNull(),
    at: timestamp("at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [uniqueIndex("run_log_chunks_run_offset_idx").on(t.runId, t.offset)],
);

export type RunLogChunk = typeof runLogChunks.$inferSelect;
