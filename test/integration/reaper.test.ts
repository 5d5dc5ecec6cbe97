import { eq, sql } from "drizzle-orm";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Database, openDatabase } from "../../db/client.js";
import { instanceRequests, instances, runs, worktrees } from "../../db/schema/index.js";
import { declareDeadInstances } from "../../src/fleet/reaper.js";
import { InstanceHeartbeat } from "../../src/instance.js";
import { silentLogger } from "../../src/logger.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";

const DEAD_AFTER_MS = 60_000;

/** An instance row whose last heartbeat was `agoMs` ago, in the database's clock. */
async function addInstance(database: Database, id: string, agoMs: number, state: "live" | "dead" = "live") {
  await database.db.insert(instances).values({
    id,
    hostname: "test-host",
    pid: 1,
    version: "test",
    state,
    heartbeatAt: sql`now() - (${agoMs}::double precision * interval '1 millisecond')`,
  });
}

async function addRun(database: Database, instanceId: string, status: "queued" | "running" | "escalated" | "done") {
  const [run] = await database.db
    .insert(runs)
    .values({ formula: "f", project: "demo", triggerKind: "dispatch", triggerRef: "test", status, instanceId })
    .returning();
  return run as typeof runs.$inferSelect;
}

describe.each(testBackends())("declaring an instance dead (%s)", (kind) => {
  let t: TestDatabase;
  /** Second connections to the same database (PostgreSQL), so the reapers really race. */
  let others: Database[] = [];

  beforeEach(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(async () => {
    for (const other of others) await other.close();
    others = [];
    await t.cleanup();
  });

  /** A separate pool on PostgreSQL; the same handle on PGlite (one process, one connection). */
  const connection = async (): Promise<Database> => {
    if (!t.url) return t.database;
    const other = await openDatabase({ url: t.url, max: 2 });
    others.push(other);
    return other;
  };

  it("two live instances race for a silent one: exactly one declares it dead and takes its runs over", async () => {
    const [a, b] = [await connection(), await connection()];
    await addInstance(t.database, "live-a", 0);
    await addInstance(t.database, "live-b", 0);
    for (let round = 0; round < 5; round++) {
      const dead = `silent-${round}`;
      await addInstance(t.database, dead, DEAD_AFTER_MS + 5_000);
      const running = await addRun(t.database, dead, "running");
      const escalated = await addRun(t.database, dead, "escalated");
      const queued = await addRun(t.database, "", "queued");
      const finished = await addRun(t.database, dead, "done");
      const [tree] = await t.database.db
        .insert(worktrees)
        .values({ runId: running.id, project: "demo", formula: "f", path: `/x/${dead}`, instanceId: dead })
        .returning();
      const [request] = await t.database.db
        .insert(instanceRequests)
        .values({ kind: "cancel_run", instanceId: dead, runId: running.id, requestedBy: "live-a" })
        .returning();

      const [fromA, fromB] = await Promise.all([
        declareDeadInstances(a, "live-a", DEAD_AFTER_MS),
        declareDeadInstances(b, "live-b", DEAD_AFTER_MS),
      ]);
      const all = [...fromA, ...fromB];
      expect(all.map((x) => x.deadInstance)).toEqual([dead]);
      const winner = fromA.length > 0 ? "live-a" : "live-b";
      expect(all[0]).toMatchObject({
        running: [running.id],
        escalated: [escalated.id],
        worktrees: [tree?.id],
        requests: [request?.id],
      });

      const [row] = await t.database.db.select().from(instances).where(eq(instances.id, dead));
      expect(row).toMatchObject({ state: "dead", deadBy: winner });
      const owners = await t.database.db.select({ id: runs.id, instanceId: runs.instanceId }).from(runs);
      const ownerOf = (id: number) => owners.find((r) => r.id === id)?.instanceId;
      expect([ownerOf(running.id), ownerOf(escalated.id)]).toEqual([winner, winner]);
      // Ended runs keep the instance that ran them; queued ones belong to nobody yet.
      expect(ownerOf(finished.id)).toBe(dead);
      expect(ownerOf(queued.id)).toBe("");
      const [closed] = await t.database.db
        .select()
        .from(worktrees)
        .where(eq(worktrees.id, tree?.id as number));
      expect(closed).toMatchObject({ state: "removed", removedBy: "takeover" });
      const [moved] = await t.database.db
        .select()
        .from(instanceRequests)
        .where(eq(instanceRequests.id, request?.id as number));
      expect(moved).toMatchObject({ instanceId: winner, state: "pending" });

      // Nothing left to declare: a second look finds nobody.
      expect(await declareDeadInstances(a, "live-a", DEAD_AFTER_MS)).toEqual([]);
    }
  });

  it("leaves instances with a fresh heartbeat alone, and a stale instance declares nobody", async () => {
    await addInstance(t.database, "fresh", 1_000);
    await addInstance(t.database, "silent", DEAD_AFTER_MS + 5_000);
    await addInstance(t.database, "was-away", DEAD_AFTER_MS + 5_000);
    // An instance that was away itself must notice that first: it declares nothing.
    expect(await declareDeadInstances(t.database, "was-away", DEAD_AFTER_MS)).toEqual([]);
    const taken = await declareDeadInstances(t.database, "fresh", DEAD_AFTER_MS);
    expect(taken.map((x) => x.deadInstance).sort()).toEqual(["silent", "was-away"]);
    const states = await t.database.db.select({ id: instances.id, state: instances.state }).from(instances);
    expect(Object.fromEntries(states.map((s) => [s.id, s.state]))).toEqual({
      fresh: "live",
      silent: "dead",
      "was-away": "dead",
    });
  });

  it("an instance that comes back after being declared dead notices on its next beat and registers again", async () => {
    const found: unknown[] = [];
    const heartbeat = new InstanceHeartbeat({
      database: t.database,
      id: "returning",
      version: "test",
      log: silentLogger(),
      intervalMs: 3_600_000,
      onDeclaredDead: (what) => {
        found.push(what);
      },
    });
    await heartbeat.start();
    try {
      await addInstance(t.database, "reaper", 0);
      const run = await addRun(t.database, "returning", "running");
      await t.database.db
        .update(instances)
        .set({ heartbeatAt: sql`now() - interval '2 minutes'` })
        .where(eq(instances.id, "returning"));
      expect((await declareDeadInstances(t.database, "reaper", DEAD_AFTER_MS)).map((x) => x.deadInstance)).toEqual([
        "returning",
      ]);

      await heartbeat.beat();
      expect(found).toEqual([{ deadAt: expect.any(Date), deadBy: "reaper" }]);
      const [row] = await t.database.db.select().from(instances).where(eq(instances.id, "returning"));
      expect(row?.state).toBe("live");
      // The run it had stays with the instance that took it over.
      const [after] = await t.database.db.select().from(runs).where(eq(runs.id, run.id));
      expect(after?.instanceId).toBe("reaper");
      // A further beat finds it live: nothing more to report.
      await heartbeat.beat();
      expect(found).toHaveLength(1);
    } finally {
      await heartbeat.stop();
    }
  });
});
