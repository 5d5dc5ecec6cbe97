import { randomBytes } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { and, eq, sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { instances } from "../db/schema/index.js";
import { errorMessage } from "./errors.js";
import type { Logger } from "./logger.js";

/**
 * The instance id: INSTANCE_ID when set, else the one kept in `$DATA_DIR/instance-id`
 * (created once), so a restarted server recognises the runs it left behind.
 */
export async function resolveInstanceId(dataDir: string, fromEnv: string | undefined): Promise<string> {
  if (fromEnv) return fromEnv;
  const file = path.join(dataDir, "instance-id");
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing?.trim()) return existing.trim();
  const host =
    os
      .hostname()
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, "-")
      .slice(0, 40) || "host";
  const id = `${host}-${randomBytes(4).toString("hex")}`;
  try {
    const handle = await open(file, "wx", 0o600);
    await handle.writeFile(`${id}\n`);
    await handle.close();
    return id;
  } catch (error) {
    // Another process created it first: use theirs.
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return (await readFile(file, "utf8")).trim();
    throw error;
  }
}

/** How often an instance beats when INSTANCE_DEAD_AFTER is `deadAfterMs`: four beats per period, at most 15 s apart. */
export function heartbeatIntervalMs(deadAfterMs: number): number {
  return Math.min(15_000, Math.max(250, Math.floor(deadAfterMs / 4)));
}

/** What the heartbeat found when the instance was declared dead while it was away. */
export interface DeclaredDead {
  deadAt: Date | null;
  deadBy: string | null;
}

export interface InstanceHeartbeatOptions {
  database: Database;
  id: string;
  version: string;
  log: Logger;
  intervalMs: number;
  /**
   * Called when a beat finds this instance declared dead (it was silent past
   * INSTANCE_DEAD_AFTER and another instance took its runs over), before it registers
   * again as live: the runs it still executes are no longer its own.
   */
  onDeclaredDead?: (found: DeclaredDead) => Promise<void> | void;
}

/**
 * Registers this instance in the database and keeps its heartbeat fresh. A beat only
 * refreshes a `live` row: when another instance has declared this one dead meanwhile,
 * the beat finds none, says so loudly, lets the server drop the runs it no longer owns,
 * and registers again as a new live member (leaving the runs taken over where they are).
 */
export class InstanceHeartbeat {
  #timer: NodeJS.Timeout | undefined;
  #beat: Promise<void> | undefined;
  readonly #options: InstanceHeartbeatOptions;

  constructor(options: InstanceHeartbeatOptions) {
    this.#options = options;
  }

  async start(): Promise<void> {
    if (this.#timer) return;
    const { database, id, log } = this.#options;
    const [before] = await database.db.select().from(instances).where(eq(instances.id, id));
    if (before?.state === "dead") {
      // A restart after the others gave up on this instance: its runs now belong to them.
      log.warn(
        { deadAt: before.deadAt, deadBy: before.deadBy },
        `this instance was declared dead by ${before.deadBy ?? "another instance"} at ${before.deadAt?.toISOString() ?? "?"}; ` +
          "its running and escalated runs were taken over there",
      );
    }
    await this.#register();
    this.#timer = setInterval(() => {
      this.#beat ??= this.beat().finally(() => {
        this.#beat = undefined;
      });
    }, this.#options.intervalMs);
    this.#timer.unref();
  }

  async #register(): Promise<void> {
    const { database, id, version } = this.#options;
    const row = { id, hostname: os.hostname(), pid: process.pid, version };
    await database.db
      .insert(instances)
      .values(row)
      .onConflictDoUpdate({
        target: instances.id,
        set: { ...row, startedAt: sql`now()`, heartbeatAt: sql`now()`, stoppedAt: null, state: "live" },
      });
  }

  /** One beat; exported for tests. Never throws. */
  async beat(): Promise<void> {
    const { database, id, log } = this.#options;
    try {
      const alive = await database.db
        .update(instances)
        .set({ heartbeatAt: sql`now()` })
        .where(and(eq(instances.id, id), eq(instances.state, "live")))
        .returning({ id: instances.id });
      if (alive.length > 0) return;
      const [row] = await database.db
        .select({ deadAt: instances.deadAt, deadBy: instances.deadBy })
        .from(instances)
        .where(eq(instances.id, id));
      log.error(
        { deadAt: row?.deadAt, deadBy: row?.deadBy },
        `THIS INSTANCE WAS DECLARED DEAD by ${row?.deadBy ?? "another instance"} at ${row?.deadAt?.toISOString() ?? "?"} ` +
          "(its heartbeat was older than INSTANCE_DEAD_AFTER): its runs were taken over; " +
          "stopping the sessions it still ran and registering again as a new live instance",
      );
      await this.#options.onDeclaredDead?.({ deadAt: row?.deadAt ?? null, deadBy: row?.deadBy ?? null });
      await this.#register();
    } catch (error) {
      log.warn({ err: error }, `heartbeat failed: ${errorMessage(error)}`);
    }
  }

  async stop(): Promise<void> {
    if (!this.#timer) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#beat;
    const { database, id } = this.#options;
    await database.db.update(instances).set({ stoppedAt: sql`now()` }).where(eq(instances.id, id));
  }
}
