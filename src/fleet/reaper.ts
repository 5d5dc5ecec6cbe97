/**
 * The fleet's membership check: every live instance looks periodically for instances
 * whose heartbeat is older than INSTANCE_DEAD_AFTER. One conditional UPDATE declares such
 * an instance dead, so exactly one live instance wins however many look at once, and the
 * same transaction moves the dead instance's `running` and `escalated` runs and its
 * pending requests to the winner and closes the rows of the worktrees on its disk. The
 * run worker then carries the runs on (a crash recovered in a fresh worktree, a resumed
 * answer in a fresh worktree): see RunExecution.
 */
import { and, eq, inArray, lt, ne, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { instanceRequests, instances, runs, worktrees } from "../../db/schema/index.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";

/** What one declaration of death moved to the instance that made it. */
export interface Takeover {
  deadInstance: string;
  /** When the dead instance last beat, and its host (its agents may still run there). */
  heartbeatAt: Date;
  hostname: string;
  running: number[];
  escalated: number[];
  /** Worktree rows on the dead instance's disk, now `removed` by `takeover` (nothing deleted). */
  worktrees: number[];
  /** Pending requests addressed to the dead instance, now addressed to this one. */
  requests: number[];
}

const interval = (ms: number) => sql`(${ms}::double precision * interval '1 millisecond')`;

/**
 * Declares dead every live instance (other than `me`) whose heartbeat is older than
 * `deadAfterMs`, in the database's clock, and takes over what it owned, all in one
 * transaction. Only a live instance with a fresh heartbeat of its own may declare: one
 * that was away itself must first notice it (its heartbeat) before it takes anything.
 */
export async function declareDeadInstances(database: Database, me: string, deadAfterMs: number): Promise<Takeover[]> {
  return database.db.transaction(async (tx) => {
    const self = await tx
      .select({ id: instances.id })
      .from(instances)
      .where(
        and(
          eq(instances.id, me),
          eq(instances.state, "live"),
          sql`${instances.heartbeatAt} >= now() - ${interval(deadAfterMs)}`,
        ),
      );
    if (self.length === 0) return [];
    // The conditional UPDATE is the whole agreement: a second reaper blocks on the row
    // lock, then finds the state no longer `live` and updates nothing.
    const dead = await tx
      .update(instances)
      .set({ state: "dead", deadAt: sql`now()`, deadBy: me })
      .where(
        and(
          eq(instances.state, "live"),
          ne(instances.id, me),
          lt(instances.heartbeatAt, sql`now() - ${interval(deadAfterMs)}`),
        ),
      )
      .returning({ id: instances.id, heartbeatAt: instances.heartbeatAt, hostname: instances.hostname });
    const takeovers: Takeover[] = [];
    for (const instance of dead) {
      const moved = await tx
        .update(runs)
        .set({ instanceId: me, updatedAt: sql`now()` })
        .where(and(eq(runs.instanceId, instance.id), inArray(runs.status, ["running", "escalated"])))
        .returning({ id: runs.id, status: runs.status });
      const closed = await tx
        .update(worktrees)
        .set({ state: "removed", removedAt: sql`now()`, removedBy: "takeover" })
        .where(and(eq(worktrees.instanceId, instance.id), inArray(worktrees.state, ["active", "preserved"])))
        .returning({ id: worktrees.id });
      const requests = await tx
        .update(instanceRequests)
        .set({ instanceId: me })
        .where(and(eq(instanceRequests.instanceId, instance.id), eq(instanceRequests.state, "pending")))
        .returning({ id: instanceRequests.id });
      takeovers.push({
        deadInstance: instance.id,
        heartbeatAt: instance.heartbeatAt,
        hostname: instance.hostname,
        running: moved.filter((r) => r.status === "running").map((r) => Number(r.id)),
        escalated: moved.filter((r) => r.status === "escalated").map((r) => Number(r.id)),
        worktrees: closed.map((w) => Number(w.id)),
        requests: requests.map((r) => Number(r.id)),
      });
    }
    return takeovers;
  });
}

export interface InstanceReaperOptions {
  database: Database;
  instanceId: string;
  deadAfterMs: number;
  /** How often it looks (a quarter of deadAfterMs, at most 15 s, by default). */
  intervalMs: number;
  log: Logger;
  /** Runs were moved here: the run worker takes them over now. */
  onTakeover: (takeover: Takeover) => void;
}

/** Looks for dead instances every `intervalMs`; `start()`/`stop()` like every component. */
export class InstanceReaper {
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<void> | undefined;
  readonly #options: InstanceReaperOptions;

  constructor(options: InstanceReaperOptions) {
    this.#options = options;
  }

  async start(): Promise<void> {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.tick(), this.#options.intervalMs);
    this.#timer.unref();
  }

  /** One look; concurrent calls share it. Never throws: a failure is logged and the next tick tries again. */
  tick(): Promise<void> {
    this.#tick ??= this.#look().finally(() => {
      this.#tick = undefined;
    });
    return this.#tick;
  }

  async #look(): Promise<void> {
    const { database, instanceId, deadAfterMs, log } = this.#options;
    let takeovers: Takeover[];
    try {
      takeovers = await declareDeadInstances(database, instanceId, deadAfterMs);
    } catch (error) {
      log.error({ err: error }, `looking for dead instances failed: ${errorMessage(error)}`);
      return;
    }
    for (const t of takeovers) {
      const silentS = Math.round((Date.now() - t.heartbeatAt.getTime()) / 1000);
      log.warn(
        {
          deadInstance: t.deadInstance,
          heartbeatAt: t.heartbeatAt,
          running: t.running,
          escalated: t.escalated,
          worktrees: t.worktrees.length,
          requests: t.requests.length,
        },
        `declared instance ${t.deadInstance} dead (no heartbeat for about ${silentS} s): taking over ` +
          `${t.running.length} running and ${t.escalated.length} escalated run(s), ` +
          `${t.requests.length} pending request(s); ${t.worktrees.length} worktree(s) on its disk marked out of reach`,
      );
      this.#options.onTakeover(t);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#tick;
  }
}
