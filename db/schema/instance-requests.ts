import { sql } from "drizzle-orm";
import { bigint, check, index, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/** What one instance asks of the instance that owns a resource. */
export const INSTANCE_REQUEST_KINDS = ["cancel_run", "delete_worktree"] as const;
export type InstanceRequestKind = (typeof INSTANCE_REQUEST_KINDS)[number];

export const INSTANCE_REQUEST_STATES = ["pending", "done", "failed"] as const;
export type InstanceRequestState = (typeof INSTANCE_REQUEST_STATES)[number];

/**
 * A request for something only the owning instance can do (stop an agent it runs, delete a
 * directory on its disk). Written by whichever instance the API call reached, carried out
 * by `instance_id` (woken by NOTIFY on PostgreSQL, by polling on PGlite), which records
 * the result. A dead owner's pending requests pass to the instance that takes over.
 */
export const instanceRequests = pgTable(
  "instance_requests",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    kind: text("kind").$type<InstanceRequestKind>().notNull(),
    /** The instance that must carry it out. */
    instanceId: text("instance_id").notNull(),
    runId: bigint("run_id", { mode: "number" }),
    worktreeId: bigint("worktree_id", { mode: "number" }),
    /** The instance whose API took the request. */
    requestedBy: text("requested_by").notNull(),
    state: text("state").$type<InstanceRequestState>().notNull().default("pending"),
    /** What happened, in words (the run's final status, the purge's reason). */
    result: text("result"),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
  },
  (t) => [
    index("instance_requests_pending_idx").on(t.instanceId).where(sql`${t.state} = 'pending'`),
    check("instance_requests_kind_check", sql`${t.kind} in ('cancel_run', 'delete_worktree')`),
    check("instance_requests_state_check", sql`${t.state} in ('pending', 'done', 'failed')`),
  ],
);

export type InstanceRequest = typeof instanceRequests.$inferSelect;
export type NewInstanceRequest = typeof instanceRequests.$inferInsert;
