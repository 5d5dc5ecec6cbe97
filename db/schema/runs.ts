import { randomBytes } from "node:crypto";
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
} from "drizzle-orm/pg-core";
import { deliveries } from "./deliveries.js";

export const RUN_STATUSES = [
  "queued",
  "running",
  "escalated",
  "done",
  "failed",
  "crashed",
  "timed_out",
  "cancelled",
  "skipped",
] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

/** Statuses after which a run never changes again. */
export const FINAL_RUN_STATUSES = ["done", "failed", "crashed", "timed_out", "cancelled", "skipped"] as const;

export const SKIP_REASONS = ["busy", "low_memory"] as const;
export type SkipReason = (typeof SKIP_REASONS)[number];

/** What a run does when its concurrency key is held: copied from the formula when queued. */
export const ON_BUSY_POLICIES = ["skip", "queue", "cancel-running"] as const;
export type OnBusy = (typeof ON_BUSY_POLICIES)[number];

/** Statuses that hold a run's concurrency key (a run waiting for a human still holds it). */
export const KEY_HOLDING_STATUSES = ["running", "escalated"] as const;

export const TRIGGER_KINDS = ["webhook", "schedule", "dispatch"] as const;
export type TriggerKind = (typeof TRIGGER_KINDS)[number];

const inList = (values: readonly string[]) => sql.raw(values.map((v) => `'${v}'`).join(", "));

/** One execution of one formula for one project. */
export const runs = pgTable(
  "runs",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    formula: text("formula").notNull(),
    project: text("project").notNull(),
    status: text("status").$type<RunStatus>().notNull().default("queued"),
    skipReason: text("skip_reason").$type<SkipReason>(),
    issue: integer("issue"),
    triggerKind: text("trigger_kind").$type<TriggerKind>().notNull(),
    /** Delivery id, schedule slot time (ISO 8601) or who dispatched. */
    triggerRef: text("trigger_ref").notNull(),
    deliveryId: text("delivery_id").references(() => deliveries.id),
    /** The normalised event that fired the run (issue, comment, pull request), for the prompt. */
    event: jsonb("event"),
    /** Number of sessions started so far. */
    attempt: integer("attempt").notNull().default(0),
    concurrencyKey: text("concurrency_key"),
    onBusy: text("on_busy").$type<OnBusy>().notNull().default("skip"),
    queuedAt: timestamp("queued_at", { withTimezone: true }).notNull().defaultNow(),
    startedAt: timestamp("started_at", { withTimezone: true }),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
    phase: text("phase"),
    detail: text("detail"),
    instanceId: text("instance_id"),
    cancelRequestedAt: timestamp("cancel_requested_at", { withTimezone: true }),
    /** Where the status comment lives: the run's issue, or the project's escalation_issue. */
    reportIssue: integer("report_issue"),
    /** The forge's id of the status comment, once it is posted. */
    statusCommentId: bigint("status_comment_id", { mode: "number" }),
    /**
     * Random part of the status comment's hidden marker, so nobody can post a run's marker
     * ahead of it (run ids are sequential). Null on runs made before it existed: their
     * comments carry the old marker without it.
     */
    statusNonce: text("status_nonce").$defaultFn(() => randomBytes(16).toString("base64url")),
    /** sha256 of the run token (`FORMULA_RUNNER_TOKEN`), rotated each session; null when the run has none. */
    tokenHash: text("token_hash"),
    /** Whether the agent ran inside the sandbox (null until a session starts). */
    sandboxed: boolean("sandboxed"),
    /** Why the agent ran unsandboxed, when it did (`auto` without bubblewrap, `mode = "off"`). */
    sandboxNote: text("sandbox_note"),
    /** The formula handed the raw forge token to the agent (`[sandbox] forge_token = true`). */
    forgeToken: boolean("forge_token").notNull().default(false),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    index("runs_status_queued_at_idx").on(t.status, t.queuedAt),
    index("runs_formula_project_idx").on(t.formula, t.project),
    index("runs_concurrency_key_idx").on(t.concurrencyKey),
    // One running (or escalated) run per key, across every instance: the database, not a
    // lock file, is what keeps two sessions off the same work.
    uniqueIndex("runs_concurrency_key_held_idx")
      .on(t.concurrencyKey)
      .where(sql`${t.concurrencyKey} is not null and ${t.status} in ('running', 'escalated')`),
    index("runs_instance_status_idx").on(t.instanceId, t.status),
    check("runs_status_check", sql`${t.status} in (${inList(RUN_STATUSES)})`),
    check("runs_trigger_kind_check", sql`${t.triggerKind} in (${inList(TRIGGER_KINDS)})`),
  ],
);

export type Run = typeof runs.$inferSelect;
export type NewRun = typeof runs.$inferInsert;
