import { sql } from "drizzle-orm";
import { bigint, check, index, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";

export const WORKTREE_STATES = ["active", "preserved", "removed"] as const;
export type WorktreeState = (typeof WORKTREE_STATES)[number];

/**
 * Who removed a worktree: a successful run, the hourly housekeeping, an API/CLI call, or
 * the takeover of a dead instance (its disk is out of reach: the row is closed, nothing deleted).
 */
export type WorktreeRemover = "success" | "housekeeping" | "api" | "takeover";

/** A `git worktree add --detach` made for one run. */
export const worktrees = pgTable(
  "worktrees",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" }).references(() => runs.id, { onDelete: "set null" }),
    project: text("project").notNull(),
    formula: text("formula").notNull(),
    path: text("path").notNull(),
    state: text("state").$type<WorktreeState>().notNull().default("active"),
    /** Why it was preserved (the run outcome) or adopted. */
    reason: text("reason"),
    instanceId: text("instance_id").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    preservedAt: timestamp("preserved_at", { withTimezone: true }),
    expiresAt: timestamp("expires_at", { withTimezone: true }),
    removedAt: timestamp("removed_at", { withTimezone: true }),
    removedBy: text("removed_by").$type<WorktreeRemover>(),
    /** Size on disk when it was preserved (walked once, not on every listing). */
    sizeBytes: bigint("size_bytes", { mode: "number" }),
  },
  (t) => [
    index("worktrees_state_expires_idx").on(t.state, t.expiresAt),
    index("worktrees_run_id_idx").on(t.runId),
    uniqueIndex("worktrees_path_idx").on(t.path),
    check("worktrees_state_check", sql`${t.state} in ('active', 'preserved', 'removed')`),
  ],
);

export type Worktree = typeof worktrees.$inferSelect;
export type NewWorktree = typeof worktrees.$inferInsert;
