import { sql } from "drizzle-orm";
import { check, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core";

export const INSTANCE_STATES = ["live", "dead"] as const;
export type InstanceState = (typeof INSTANCE_STATES)[number];

/** One row per server process identity (stable across restarts of the same host). */
export const instances = pgTable(
  "instances",
  {
    id: text("id").primaryKey(),
    hostname: text("hostname").notNull(),
    pid: integer("pid").notNull(),
    version: text("version").notNull(),
    startedAt: timestamp("started_at", { withTimezone: true }).notNull().defaultNow(),
    heartbeatAt: timestamp("heartbeat_at", { withTimezone: true }).notNull().defaultNow(),
    stoppedAt: timestamp("stopped_at", { withTimezone: true }),
    /**
     * `dead` once another instance found its heartbeat older than INSTANCE_DEAD_AFTER and
     * took its runs over; the instance itself sets `live` again when it comes back.
     */
    state: text("state").$type<InstanceState>().notNull().default("live"),
    deadAt: timestamp("dead_at", { withTimezone: true }),
    /** The live instance that declared it dead (and took its runs over). */
    deadBy: text("dead_by"),
  },
  (t) => [check("instances_state_check", sql`${t.state} in ('live', 'dead')`)],
);

export type Instance = typeof instances.$inferSelect;
export type NewInstance = typeof instances.$inferInsert;
