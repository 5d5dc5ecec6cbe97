import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { asc, eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, redactUrl } from "../../db/client.js";
import { migrate } from "../../db/migrate.js";
import { deliveries, runs, scheduleSlots } from "../../db/schema/index.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";

describe.each(testBackends())("database on %s", (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it("is migrated, and migrating again applies nothing", async () => {
    const again = await migrate(t.database);
    expect(again).toEqual({ applied: [], edited: [] });
    const tables = await t.database.rows<{ table_name: string }>(
      sql`select table_name from information_schema.tables where table_schema = current_schema() order by 1`,
    );
    expect(tables.map((r) => r.table_name)).toEqual([
      "deliveries",
      "escalation_replies",
      "escalations",
      "formula_runner_migrations",
      "instance_requests",
      "instances",
      "outbox",
      "outputs",
      "phases",
      "run_log_chunks",
      "runs",
      "schedule_slots",
      "sessions",
      "worktrees",
    ]);
  });

  it("answers ping and raw rows the same way on both drivers", async () => {
    await t.database.ping();
    const rows = await t.database.rows<{ n: number }>(sql`select 41 + 1 as n`);
    expect(rows).toEqual([{ n: 42 }]);
  });

  it("stores runs with defaults and rejects an unknown status", async () => {
    const [run] = await t.database.db
      .insert(runs)
      .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "cli:alice" })
      .returning();
    expect(run).toMatchObject({ status: "queued", attempt: 0, issue: null });
    expect(run?.queuedAt).toBeInstanceOf(Date);
    await expect(
      t.database.db.insert(runs).values({
        formula: "dev",
        project: "demo",
        triggerKind: "dispatch",
        triggerRef: "x",
        status: "bogus" as never,
      }),
    ).rejects.toThrow();
  });

  it("makes a duplicate delivery id or schedule slot collide instead of firing twice", async () => {
    const delivery = { id: "d-1", forge: "github", event: "ping", payload: {}, outcome: "ignored" as const };
    await t.database.db.insert(deliveries).values(delivery);
    const again = await t.database.db.insert(deliveries).values(delivery).onConflictDoNothing().returning();
    expect(again).toEqual([]);

    const slot = { formula: "planner", project: "demo", slotAt: new Date("2026-11-25T06:00:00Z"), instanceId: "i1" };
    expect(await t.database.db.insert(scheduleSlots).values(slot).onConflictDoNothing().returning()).toHaveLength(1);
    expect(
      await t.database.db
        .insert(scheduleSlots)
        .values({ ...slot, instanceId: "i2" })
        .onConflictDoNothing()
        .returning(),
    ).toHaveLength(0);
  });

  it("rolls a failed transaction back", async () => {
    const before = await t.database.db.select().from(runs);
    await expect(
      t.database.db.transaction(async (tx) => {
        await tx.insert(runs).values({ formula: "f", project: "p", triggerKind: "dispatch", triggerRef: "x" });
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(await t.database.db.select().from(runs)).toHaveLength(before.length);
  });

  it("claims each queued run once with FOR UPDATE SKIP LOCKED", async () => {
    await t.database.db.delete(runs);
    await t.database.db.insert(runs).values(
      Array.from({ length: 6 }, (_, i) => ({
        formula: "f",
        project: "p",
        triggerKind: "dispatch" as const,
        triggerRef: `r${i}`,
      })),
    );
    const claim = () =>
      t.database.db.transaction(async (tx) => {
        const [next] = await tx
          .select({ id: runs.id })
          .from(runs)
          .where(eq(runs.status, "queued"))
          .orderBy(asc(runs.queuedAt), asc(runs.id))
          .limit(1)
          .for("update", { skipLocked: true });
        if (!next) return undefined;
        await tx.update(runs).set({ status: "running" }).where(eq(runs.id, next.id));
        return next.id;
      });
    const claimed = await Promise.all(Array.from({ length: 8 }, claim));
    const ids = claimed.filter((id): id is number => id !== undefined);
    expect(new Set(ids).size).toBe(ids.length);
    const left = await t.database.db.select().from(runs).where(eq(runs.status, "queued"));
    expect(ids.length + left.length).toBe(6);
  });
});

describe("PGlite on disk", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fr-pglite-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("refuses a second opener of the same data directory, and takes over a stale lock", async () => {
    const dataDir = path.join(dir, "pgdata");
    const first = await openDatabase({ dataDir });
    await expect(openDatabase({ dataDir })).rejects.toThrow(/already open in this process/);
    await first.close();

    // Held by another live process: refused, naming it.
    const other = spawn("sleep", ["30"], { stdio: "ignore" });
    try {
      await writeFile(path.join(dataDir, "formula-runner.lock"), String(other.pid));
      await expect(openDatabase({ dataDir })).rejects.toThrow(
        new RegExp(`in use by process ${other.pid}.*DATABASE_URL`, "s"),
      );
    } finally {
      other.kill("SIGKILL");
    }

    // A lock left by a process that died (pid 2^22+ is above pid_max on Linux defaults).
    await writeFile(path.join(dataDir, "formula-runner.lock"), "4194999");
    const second = await openDatabase({ dataDir });
    await migrate(second);
    await second.ping();
    await second.close();
  });
});

// Only PostgreSQL has several connections that can race; PGlite serialises everything.
const postgresOnly = testBackends().includes("postgres") ? describe : () => {};

postgresOnly("migrations on PostgreSQL", () => {
  it("two instances migrating the same empty schema at once apply each migration once", async () => {
    const t = await openTestDatabase("postgres");
    try {
      await t.database.rows(sql`drop table formula_runner_migrations`);
      await t.database.rows(
        sql.raw(
          "drop table instance_requests, run_log_chunks, outputs, escalation_replies, phases, escalations, sessions, worktrees, outbox, schedule_slots, runs, deliveries, instances cascade",
        ),
      );
      const url = t.url as string;
      const a = await openDatabase({ url });
      const b = await openDatabase({ url });
      const [ra, rb] = await Promise.all([migrate(a), migrate(b)]);
      expect([...ra.applied, ...rb.applied].sort()).toEqual([
        "0000_init",
        "0001_run-engine",
        "0002_forge-writes",
        "0003_containment",
        "0004_run-logs",
        "0005_forge-integrity",
        "0006_fleet",
      ]);
      await a.close();
      await b.close();
    } finally {
      await t.cleanup();
    }
  });
});

describe("redactUrl", () => {
  it("never prints the password of a URL", () => {
    expect(redactUrl("postgres://fr:hunter2@db:5432/fr")).toBe("postgres://fr:redacted@db:5432/fr");
  });
});
