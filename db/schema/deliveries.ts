import { index, jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

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
    /** `queued` when it fired at least one run, `answered` when its comment answered a run's question, else `ignored` (see `reason`). */
    outcome: text("outcome").notNull(),
    reason: text("reason"),
    receivedAt: timestamp("received_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index("deliveries_received_at_idx").on(t.receivedAt)],
);

export type Delivery = typeof deliveries.$inferSelect;
export type NewDelivery = typeof deliveries.$inferInsert;
