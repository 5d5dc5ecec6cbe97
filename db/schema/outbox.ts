import { sql } from "drizzle-orm";
import { bigint, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";

/**
 * `status`: the run's status comment, rendered from the run's current state when sent
 * (created the first time, edited after), so a burst of phases costs one edit;
 * `comment`: a new comment (an escalation question, an acknowledgement);
 * `comment_edit`: an edit of a known comment; `label`: labels added to an issue.
 */
export const OUTBOX_KINDS = ["status", "comment", "comment_edit", "label", "pull_request", "issue"] as const;
export type OutboxKind = (typeof OUTBOX_KINDS)[number];

export const OUTBOX_STATES = ["pending", "sent", "failed"] as const;
export type OutboxState = (typeof OUTBOX_STATES)[number];

/** Forge writes waiting to be sent (or sent, for the record), retried with backoff. */
export const outbox = pgTable(
  "outbox",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    project: text("project").notNull(),
    runId: bigint("run_id", { mode: "number" }).references(() => runs.id, { onDelete: "set null" }),
    kind: text("kind").$type<OutboxKind>().notNull(),
    issue: integer("issue").notNull(),
    payload: jsonb("payload").notNull(),
    state: text("state").$type<OutboxState>().notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: timestamp("next_attempt_at", { withTimezone: true }).notNull().defaultNow(),
    lastError: text("last_error"),
    /** What the forge answered that later writes need (the id of a created comment). */
    result: jsonb("result"),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    sentAt: timestamp("sent_at", { withTimezone: true }),
  },
  (t) => [
    index("outbox_state_next_idx").on(t.state, t.nextAttemptAt),
    index("outbox_run_id_idx").on(t.runId),
    // At most one pending status write per run: more phases just make it due again.
    uniqueIndex("outbox_status_pending_idx").on(t.runId).where(sql`${t.kind} = 'status' and ${t.state} = 'pending'`),
  ],
);

export type OutboxEntry = typeof outbox.$inferSelect;
export type NewOutboxEntry = typeof outbox.$inferInsert;
