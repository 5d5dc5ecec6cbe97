import { bigint, index, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import { escalations } from "./escalations.js";

/**
 * Every comment considered as an answer to an open escalation, delivered or not: a reply
 * from someone without write access, a bot, or a second answer is kept with the reason.
 */
export const escalationReplies = pgTable(
  "escalation_replies",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    escalationId: bigint("escalation_id", { mode: "number" })
      .notNull()
      .references(() => escalations.id, { onDelete: "cascade" }),
    /** `comment` (an issue comment) or `api` (POST /api/runs/:id/reply). */
    source: text("source").notNull(),
    commentId: bigint("comment_id", { mode: "number" }),
    author: text("author").notNull(),
    body: text("body").notNull(),
    /** `delivered`, or why not: `not permitted`, `bot`, `already answered`, ... */
    outcome: text("outcome").notNull(),
    receivedAt: timestamp("received_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index("escalation_replies_escalation_idx").on(t.escalationId)],
);

export type EscalationReply = typeof escalationReplies.$inferSelect;
export type NewEscalationReply = typeof escalationReplies.$inferInsert;
