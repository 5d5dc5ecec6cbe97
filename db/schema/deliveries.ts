import { sql } from "drizzle-orm";
import { index, integer, jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/**
 * What became of a delivery: `queued` (it fired at least one run), `answered` (its comment
 * answered a run's question), `ignored` (see `reason`), `pending` (the sender's permission
 * could not be checked yet: decided when the forge answers again), `failed` (still
 * undecided when the retries ran out; `reason` says why).
 */
export const DELIVERY_OUTCOMES = ["queued", "ignored", "answered", "pending", "failed"] as const;
export type DeliveryOutcome = (typeof DELIVERY_OUTCOMES)[number];

/**
 * Every webhook delivery the server accepted (signature valid). The primary key is the
 * forge's delivery id, so a redelivery collides instead of firing formulas twice.
 */
export const deliveries = pgTable(
  "deliveries",
  {
    id: text("id").primaryKey(),
    forge: text("forge").notNull(),
    event: text("event").notNull(),
    action: text("action"),
    project: text("project"),
    repository: text("repository"),
    sender: text("sender"),
    payload: jsonb("payload").notNull(),
    /** One of DELIVERY_OUTCOMES. */
    outcome: text("outcome").$type<DeliveryOutcome>().notNull(),
    reason: text("reason"),
    receivedAt: timestamp("received_at", { withTimezone: true }).notNull().defaultNow(),
    /** Permission checks tried for a `pending` delivery after the first one. */
    attempts: integer("attempts").notNull().default(0),
    /** When a `pending` delivery is tried again (also the lease of the instance trying it). */
    nextAttemptAt: timestamp("next_attempt_at", { withTimezone: true }),
  },
  (t) => [
    index("deliveries_received_at_idx").on(t.receivedAt),
    index("deliveries_pending_idx").on(t.nextAttemptAt).where(sql`${t.outcome} = 'pending'`),
  ],
);

export type Delivery = typeof deliveries.$inferSelect;
export type NewDelivery = typeof deliveries.$inferInsert;
