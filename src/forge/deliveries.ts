import { and, desc, eq, inArray, type SQL, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type DeliveryOutcome, deliveries, runs } from "../../db/schema/index.js";
import { AppError } from "../errors.js";
import { unstorableText } from "../input-limits.js";

export interface DeliveryFilter {
  outcome?: DeliveryOutcome | undefined;
  project?: string | undefined;
  event?: string | undefined;
  limit?: number | undefined;
  cursor?: string | undefined;
}

const encode = (receivedAt: Date, id: string) =>
  Buffer.from(JSON.stringify([receivedAt.toISOString(), id])).toString("base64url");
function decode(cursor: string): { at: Date; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as [string, string];
    const date = new Date(at);
    // Inside what timestamptz holds and what this server writes; an id as delivery ids are.
    if (typeof at !== "string" || Number.isNaN(date.getTime())) throw new Error("bad cursor");
    if (date.getUTCFullYear() < 1970 || date.getUTCFullYear() > 9999) throw new Error("bad cursor");
    if (typeof id !== "string" || id.length > 200 || unstorableText(id) !== undefined) throw new Error("bad cursor");
    return { at: date, id };
  } catch {
    throw new AppError({ code: "bad_request", message: "cursor is not one this server gave out" });
  }
}

/**
 * Recorded deliveries, newest first, with the runs each fired and why the others fired
 * nothing (the payload itself stays in the database).
 */
export async function listDeliveries(database: Database, filter: DeliveryFilter) {
  const limit = filter.limit ?? 50;
  const conditions: SQL[] = [];
  if (filter.outcome) conditions.push(eq(deliveries.outcome, filter.outcome));
  if (filter.project) conditions.push(eq(deliveries.project, filter.project));
  if (filter.event) conditions.push(eq(deliveries.event, filter.event));
  if (filter.cursor) {
    const { at, id } = decode(filter.cursor);
    conditions.push(sql`(${deliveries.receivedAt}, ${deliveries.id}) < (${at.toISOString()}::timestamptz, ${id})`);
  }
  const rows = await database.db
    .select({
      id: deliveries.id,
      forge: deliveries.forge,
      event: deliveries.event,
      action: deliveries.action,
      project: deliveries.project,
      repository: deliveries.repository,
      sender: deliveries.sender,
      outcome: deliveries.outcome,
      reason: deliveries.reason,
      receivedAt: deliveries.receivedAt,
      nextAttemptAt: deliveries.nextAttemptAt,
    })
    .from(deliveries)
    .where(conditions.length > 0 ? and(...conditions) : undefined)
    .orderBy(desc(deliveries.receivedAt), desc(deliveries.id))
    .limit(limit + 1);
  const page = rows.slice(0, limit);
  const fired =
    page.length === 0
      ? []
      : await database.db
          .select({ id: runs.id, deliveryId: runs.deliveryId })
          .from(runs)
          .where(
            inArray(
              runs.deliveryId,
              page.map((d) => d.id),
            ),
          );
  const last = page[page.length - 1];
  return {
    deliveries: page.map((d) => ({
      id: d.id,
      forge: d.forge,
      event: d.event,
      action: d.action,
      project: d.project,
      repository: d.repository,
      sender: d.sender,
      outcome: d.outcome,
      reason: d.reason,
      received_at: d.receivedAt.toISOString(),
      next_attempt_at: d.outcome === "pending" ? (d.nextAttemptAt?.toISOString() ?? null) : null,
      runs: fired
        .filter((r) => r.deliveryId === d.id)
        .map((r) => r.id)
        .sort((a, b) => a - b),
    })),
    next_cursor: rows.length > limit && last ? encode(last.receivedAt, last.id) : null,
  };
}
