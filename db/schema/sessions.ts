import { bigint, doublePrecision, integer, jsonb, pgTable, text, timestamp, unique } from "drizzle-orm/pg-core";
import { runs } from "./runs.js";

export const SESSION_KINDS = ["initial", "recovery", "resume"] as const;
export type SessionKind = (typeof SESSION_KINDS)[number];

/** One agent process of a run. */
export const sessions = pgTable(
  "sessions",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    runId: bigint("run_id", { mode: "number" })
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    seq: integer("seq").notNull(),
    kind: text("kind").$type<SessionKind>().notNull(),
    instanceId: text("instance_id").notNull(),
    pid: integer("pid"),
    startedAt: timestamp("started_at", { withTimezone: true }).notNull().defaultNow(),
    endedAt: timestamp("ended_at", { withTimezone: true }),
    exitCode: integer("exit_code"),
    signal: text("signal"),
    /** How the session ended: done, failed, crashed, timed_out, cancelled, escalated, interrupted. */
    outcome: text("outcome"),
    detail: text("detail"),
    /** The agent's own session id (Claude Code `session_id`), used for `--resume`. */
    agentSessionId: text("agent_session_id"),
    numTurns: integer("num_turns"),
    toolCalls: integer("tool_calls"),
    costUsd: doublePrecision("cost_usd"),
    result: jsonb("result"),
    /** Bounded tail of the session's output, kept for the record. */
    outputTail: text("output_tail"),
  },
  (t) => [unique("sessions_run_seq_unique").on(t.runId, t.seq)],
);

export type Session = typeof sessions.$inferSelect;
export type NewSession = typeof sessions.$inferInsert;
