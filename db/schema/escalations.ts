import { bigint, index, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";
import { sessions } from "./sessions.js";

export const ESCALATION_STATES = ["open", "answered", "expired", "cancelled"] as const;
export type EscalationState = (typeof ESCALATION_STATES)[number];

/** A question an agent asked (PHASE:escalate) and the reply that answered it. */
export const escalations = pgTable(
  "escalations",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" })
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    sessionId: bigint("session_id", { mode: "number" }).references(() => sessions.id, { onDelete: "set null" }),
    state: text("state").$type<EscalationState>().notNull().default("open"),
    question: text("question").notNull(),
    issue: integer("issue"),
    /** Forge comment id of the question, filled in when the outbox has posted it. */
    commentId: bigint("comment_id", { mode: "number" }),
    askedAt: timestamp("asked_at", { withTimezone: true }).notNull().defaultNow(),
    deadlineAt: timestamp("deadline_at", { withTimezone: true }).notNull(),
    replyBody: text("reply_body"),
    replyAuthor: text("reply_author"),
    replyCommentId: bigint("reply_comment_id", { mode: "number" }),
    /** Set in the same transaction that queues the resumed session, so a claim is never lost. */
    claimedAt: timestamp("claimed_at", { withTimezone: true }),
    resumedSessionId: bigint("resumed_session_id", { mode: "number" }),
  },
  (t) => [
    index("escalations_run_id_idx").on(t.runId),
    index("escalations_state_deadline_idx").on(t.state, t.deadlineAt),
  ],
);

export type Escalation = typeof escalations.$inferSelect;
export type NewEscalation = typeof escalations.$inferInsert;
