import { randomBytes } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
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

const HEARTBEAT_INTERVAL_MS = 15_000;

/** Registers this instance in the database and keeps its heartbeat fresh. */
export class InstanceHeartbeat {
  #timer: NodeJS.Timeout | undefined;
  #beat: Promise<void> | undefined;

  constructor(
    private readonly database: Database,
    private readonly id: string,
    private readonly version: string,
    private readonly log: Logger,
    private readonly intervalMs = HEARTBEAT_INTERVAL_MS,
  ) {}

  async start(): Promise<void> {
    if (this.#timer) return;
    const row = { id: this.id, hostname: os.hostname(), pid: process.pid, version: this.version };
    await this.database.db
      .insert(instances)
      .values(row)
      .onConflictDoUpdate({
        target: instances.id,
        set: { ...row, startedAt: sql`now()`, heartbeatAt: sql`now()`, stoppedAt: null },
      });
    this.#timer = setInterval(() => {
      this.#beat = this.beat();
    }, this.intervalMs);
    this.#timer.unref();
  }

  private async beat(): Promise<void> {
    try {
      await this.database.db.update(instances).set({ heartbeatAt: sql`now()` }).where(eq(instances.id, this.id));
    } catch (error) {
      this.log.warn({ err: error }, `heartbeat failed: ${errorMessage(error)}`);
    }
  }

  async stop(): Promise<void> {
    if (!this.#timer) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#beat;
    await this.database.db.update(instances).set({ stoppedAt: sql`now()` }).where(eq(instances.id, this.id));
  }
}
