import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { Cron } from "croner";
import { asc, eq } from "drizzle-orm";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runs, scheduleSlots } from "../../db/schema/index.js";
import { FormulaStore } from "../../src/formulas/store.js";
import { silentLogger } from "../../src/logger.js";
import { agentPath } from "../helpers/agents/index.js";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { createTestRepo, type TestRepo } from "../helpers/git.js";
import { testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const TOKEN = "schedule-instances-token-0123456789";

/** A formula that fires every second (testFormula plus an `[on] schedule`). */
const perSecondFormula = (name: string) => testFormula(name).replace("[on]\n", '[on]\nschedule = ["* * * * * *"]\n');

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface LogLine {
  msg?: string;
  formula?: string;
}

const parseLines = (lines: readonly string[]): LogLine[] =>
  lines.flatMap((line) => {
    try {
      return [JSON.parse(line) as LogLine];
    } catch {
      return [];
    }
  });

/**
 * SIGTERM, then wait until the server has exited or logged that it stopped everything;
 * a process that lingers after that (a stray timer of a finished session) is killed.
 */
async function stopServer(server: ServerProcess): Promise<void> {
  server.child.kill("SIGTERM");
  const deadline = Date.now() + 15_000;
  while (server.child.exitCode === null && server.child.signalCode === null && Date.now() < deadline) {
    if (parseLines(server.lines).some((l) => l.msg === "stopped")) break;
    await sleep(100);
  }
  await server.stop("SIGKILL");
}

// Runs on every backend, so the file always has a test: the formula the processes share
// is valid and fires every second.
describe("the per-second formula of the multi-instance test", () => {
  it("loads and is due every second", async () => {
    const dir = await makeTempDir("fr-sched-formula-");
    try {
      await writeFile(path.join(dir, "tick.toml"), perSecondFormula("tick"));
      const store = new FormulaStore(dir, silentLogger());
      expect((await store.reload()).problems).toEqual([]);
      const schedule = store.get("tick")?.on.schedule;
      expect(schedule).toEqual([{ cron: "* * * * * *", timezone: "UTC" }]);
      const cron = new Cron("* * * * * *", { paused: true, timezone: "UTC" });
      const [first, second] = cron.nextRuns(2, new Date("2026-03-01T10:00:00.400Z"));
      cron.stop();
      expect([first?.toISOString(), second?.toISOString()]).toEqual([
        "2026-03-01T10:00:01.000Z",
        "2026-03-01T10:00:02.000Z",
      ]);
    } finally {
      await removeTempDir(dir);
    }
  });
});

// Several processes on one database need PostgreSQL: PGlite has one opener at a time.
if (testBackends().includes("postgres")) {
  describe("two server processes on one PostgreSQL database fire each schedule slot once", () => {
    let dir: string;
    let repo: TestRepo;
    let db: TestDatabase;
    let servers: ServerProcess[] = [];

    beforeEach(async () => {
      dir = await makeTempDir("fr-sched-instances-");
      repo = await createTestRepo();
      db = await openTestDatabase("postgres");
      await mkdir(path.join(dir, "formulas"));
      await writeFile(path.join(dir, "formulas", "tick.toml"), perSecondFormula("tick"));
      await writeFile(
        path.join(dir, "formula-runner.toml"),
        [
          "[[projects]]",
          'name = "demo"',
          `repo_path = ${JSON.stringify(repo.clone)}`,
          'repo = "acme/demo"',
          'formulas = ["*"]',
          "[agents.done]",
          `command = ["bash", ${JSON.stringify(agentPath("done"))}]`,
        ].join("\n"),
      );
    });
    afterEach(async () => {
      for (const server of servers) await server.stop("SIGKILL");
      servers = [];
      await db.cleanup();
      await repo.cleanup();
      await removeTempDir(dir);
    });

    it("every slot has exactly one run, whichever instance claimed it", { timeout: 90_000 }, async () => {
      const start = (instance: string) =>
        startServerProcess({
          cwd: dir,
          env: {
            DATABASE_URL: db.url as string,
            DATA_DIR: path.join(dir, `data-${instance}`),
            INSTANCE_ID: instance,
            API_TOKEN: TOKEN,
            SHUTDOWN_GRACE: "3s",
            KILL_GRACE: "1s",
          },
        });
      servers = await Promise.all([start("sched-a"), start("sched-b")]);
      await sleep(5_000);
      await Promise.all(servers.map((server) => stopServer(server)));

      const { db: sql } = db.database;
      const slots = await sql
        .select()
        .from(scheduleSlots)
        .where(eq(scheduleSlots.formula, "tick"))
        .orderBy(asc(scheduleSlots.slotAt));
      const scheduled = await sql.select().from(runs).where(eq(runs.triggerKind, "schedule")).orderBy(asc(runs.id));
      expect(slots.length).toBeGreaterThanOrEqual(3);
      expect(scheduled).toHaveLength(slots.length);

      // One run per slot, one slot per run, and no two runs for the same slot time.
      expect(new Set(scheduled.map((r) => r.triggerRef)).size).toBe(scheduled.length);
      expect(new Set(slots.map((s) => s.runId)).size).toBe(slots.length);
      for (const slot of slots) {
        expect(slot.slotAt.getMilliseconds()).toBe(0);
        expect(["sched-a", "sched-b"]).toContain(slot.instanceId);
        const run = scheduled.find((r) => r.id === slot.runId);
        expect(run).toMatchObject({ formula: "tick", project: "demo", triggerRef: slot.slotAt.toISOString() });
      }

      // Both instances ticked: the slots one of them queued, the other found claimed.
      const firesOf = (server: ServerProcess) =>
        parseLines(server.lines).filter((l) => l.formula === "tick" && l.msg?.includes("schedule slot"));
      const fires = servers.flatMap(firesOf);
      expect(fires.filter((l) => l.msg?.includes(": queued run "))).toHaveLength(slots.length);
      expect(fires.some((l) => l.msg?.endsWith(": claimed elsewhere"))).toBe(true);
      for (const server of servers) expect(firesOf(server).length).toBeGreaterThan(0);
    });
  });
}
