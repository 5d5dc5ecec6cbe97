import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { asc } from "drizzle-orm";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Database, openDatabase } from "../../db/client.js";
import { type Run, runs, scheduleSlots } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import type { Formula } from "../../src/formulas/schema.js";
import { FormulaStore } from "../../src/formulas/store.js";
import { createLogger, silentLogger } from "../../src/logger.js";
import { Scheduler, type SchedulerDeps } from "../../src/scheduler/scheduler.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

type ScheduleEntry = string | { cron: string; timezone: string };

/** testFormula with an `[on] schedule` list. */
function scheduledFormula(name: string, schedule: ScheduleEntry[], fields: Record<string, unknown> = {}): string {
  const entries = schedule.map((entry) =>
    typeof entry === "string"
      ? JSON.stringify(entry)
      : `{ cron = ${JSON.stringify(entry.cron)}, timezone = ${JSON.stringify(entry.timezone)} }`,
  );
  const text = testFormula(name, fields);
  if (!text.includes("[on]\n")) throw new Error("testFormula no longer writes an [on] table");
  return text.replace("[on]\n", `[on]\nschedule = [${entries.join(", ")}]\n`);
}

const project = (name: string, formulas: string[] = ["*"]): ProjectConfig => ({
  name,
  repoPath: `/nonexistent/${name}`,
  primaryBranch: "main",
  forge: "github",
  forgeUrl: "https://api.github.com",
  repo: `acme/${name}`,
  tokenEnv: undefined,
  token: undefined,
  webhookSecretEnv: undefined,
  webhookSecret: undefined,
  botLogin: undefined,
  escalationIssue: undefined,
  formulas,
});

const ALPHA = project("alpha");
const BETA = project("beta");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const eventually = async <T>(probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(50);
  }
};

/** Timers of this process (croner holds one per job). */
const activeTimeouts = () => process.getActiveResourcesInfo().filter((kind) => kind === "Timeout").length;

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

describe.each(testBackends())("scheduler on %s", (backend) => {
  let db: TestDatabase;
  let dir: string;
  let store: FormulaStore;
  let lines: LogLine[];
  let queued: Run[];
  let schedulers: Scheduler[];
  let extraDatabases: Database[];

  beforeEach(async () => {
    db = await openTestDatabase(backend);
    dir = await makeTempDir("fr-scheduler-");
    store = new FormulaStore(dir, silentLogger());
    lines = [];
    queued = [];
    schedulers = [];
    extraDatabases = [];
  });
  afterEach(async () => {
    for (const scheduler of schedulers) await scheduler.stop();
    for (const database of extraDatabases) await database.close();
    await db.cleanup();
    await removeTempDir(dir);
  });

  const writeFormulas = async (files: Record<string, string>) => {
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, `${name}.toml`), text);
    const { problems } = await store.reload();
    expect(problems).toEqual([]);
  };

  const formula = (name: string): Formula => {
    const found = store.get(name);
    if (!found) throw new Error(`formula ${name} is not loaded`);
    return found;
  };

  const makeScheduler = (overrides: Partial<SchedulerDeps> = {}) => {
    const scheduler = new Scheduler({
      database: db.database,
      formulas: store,
      projects: [ALPHA, BETA],
      instanceId: "instance-a",
      log: createLogger({
        level: "debug",
        destination: { write: (line: string) => lines.push(JSON.parse(line) as LogLine) },
      }),
      onQueued: (run) => queued.push(run),
      ...overrides,
    });
    schedulers.push(scheduler);
    return scheduler;
  };

  const allRuns = () => db.database.db.select().from(runs).orderBy(asc(runs.id));
  const allSlots = () =>
    db.database.db.select().from(scheduleSlots).orderBy(asc(scheduleSlots.slotAt), asc(scheduleSlots.project));

  it("fires a slot once: the second fire of the same slot queues nothing", async () => {
    await writeFormulas({ nightly: scheduledFormula("nightly", ["0 3 * * *"]) });
    const scheduler = makeScheduler();
    // The key is whole seconds: a slot time with milliseconds is the same slot.
    const first = await scheduler.fire(formula("nightly"), ALPHA, new Date("2026-03-01T03:00:00.250Z"));
    const second = await scheduler.fire(formula("nightly"), ALPHA, new Date("2026-03-01T03:00:00.000Z"));
    expect(first).toEqual(expect.any(Number));
    expect(second).toBeUndefined();

    const [run, ...more] = await allRuns();
    expect(more).toEqual([]);
    expect(run).toMatchObject({
      id: first,
      formula: "nightly",
      project: "alpha",
      status: "queued",
      triggerKind: "schedule",
      triggerRef: "2026-03-01T03:00:00.000Z",
      event: { kind: "schedule", slot: "2026-03-01T03:00:00.000Z" },
      concurrencyKey: "nightly-alpha",
    });
    expect(await allSlots()).toEqual([
      expect.objectContaining({
        formula: "nightly",
        project: "alpha",
        slotAt: new Date("2026-03-01T03:00:00.000Z"),
        runId: first,
        instanceId: "instance-a",
        note: "fired",
      }),
    ]);
    expect(queued.map((r) => r.id)).toEqual([first]);

    const fireLines = lines.filter((l) => l.component === "scheduler" && l.formula === "nightly");
    expect(fireLines.map((l) => [l.project, l.slot, l.runId, l.msg])).toEqual([
      [
        "alpha",
        "2026-03-01T03:00:00.000Z",
        first,
        `schedule slot 2026-03-01T03:00:00.000Z of nightly/alpha: queued run ${first}`,
      ],
      [
        "alpha",
        "2026-03-01T03:00:00.000Z",
        undefined,
        "schedule slot 2026-03-01T03:00:00.000Z of nightly/alpha: claimed elsewhere",
      ],
    ]);

    // The same slot for another project is another run.
    expect(await scheduler.fire(formula("nightly"), BETA, new Date("2026-03-01T03:00:00Z"))).toEqual(
      expect.any(Number),
    );
    expect((await allRuns()).map((r) => r.project)).toEqual(["alpha", "beta"]);
  });

  it("two instances firing the same slots at the same moment queue exactly one run per slot", async () => {
    await writeFormulas({ busy: scheduledFormula("busy", ["* * * * *"], { guards: { concurrency: "" } }) });
    // On PostgreSQL the second instance has its own connection pool, as a second process would.
    let second = db.database;
    if (db.url) {
      second = await openDatabase({ url: db.url, max: 5 });
      extraDatabases.push(second);
    }
    const a = makeScheduler({ instanceId: "instance-a" });
    const b = makeScheduler({ instanceId: "instance-b", database: second });
    const slots = Array.from({ length: 20 }, (_, i) => new Date(Date.UTC(2026, 2, 1, 10, i)));
    const results = await Promise.all(
      slots.map(async (slot) => {
        const [fromA, fromB] = await Promise.all([
          a.fire(formula("busy"), ALPHA, slot),
          b.fire(formula("busy"), ALPHA, slot),
        ]);
        return { slot, fromA, fromB };
      }),
    );
    for (const { fromA, fromB } of results) {
      // Exactly one of the two got a run id.
      expect([fromA, fromB].filter((id) => id !== undefined)).toHaveLength(1);
    }
    const recorded = await allSlots();
    expect(recorded).toHaveLength(20);
    const all = await allRuns();
    expect(all).toHaveLength(20);
    expect(new Set(all.map((r) => r.triggerRef)).size).toBe(20);
    for (const { slot, fromA, fromB } of results) {
      const row = recorded.find((r) => r.slotAt.getTime() === slot.getTime());
      expect(row?.runId).toBe(fromA ?? fromB);
      expect(row?.instanceId).toBe(fromA !== undefined ? "instance-a" : "instance-b");
    }
    // The loser of each race was told by the key, not by an error.
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
    expect(lines.filter((l) => l.msg.endsWith(": claimed elsewhere"))).toHaveLength(20);
  });

  it("a per-second schedule started for 3.5 s queues a run per second and project, each on a whole second", async () => {
    await writeFormulas({
      ticker: scheduledFormula("ticker", ["* * * * * *"], { guards: { concurrency: "" } }),
      idle: testFormula("idle"),
    });
    const scheduler = makeScheduler();
    const began = Date.now();
    await scheduler.start();
    await sleep(3_500);
    await scheduler.stop();
    const ended = Date.now();

    const all = await allRuns();
    for (const name of ["alpha", "beta"]) {
      const mine = all.filter((r) => r.project === name);
      expect(mine.length).toBeGreaterThanOrEqual(3);
      expect(mine.length).toBeLessThanOrEqual(4);
      const times = mine.map((r) => new Date(r.triggerRef).getTime());
      expect(new Set(times).size).toBe(mine.length);
      for (const run of mine) {
        expect(run).toMatchObject({
          formula: "ticker",
          triggerKind: "schedule",
          event: { kind: "schedule", slot: run.triggerRef },
        });
        expect(run.triggerRef).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
      }
      // Consecutive seconds within the time the scheduler ran: no slot skipped, none invented.
      const sorted = [...times].sort((x, y) => x - y);
      sorted.forEach((t, i) => {
        if (i > 0) expect(t - (sorted[i - 1] as number)).toBe(1_000);
        expect(t).toBeGreaterThanOrEqual(Math.floor(began / 1000) * 1000);
        expect(t).toBeLessThanOrEqual(ended);
      });
    }
    const slots = await allSlots();
    expect(slots).toHaveLength(all.length);
    for (const slot of slots) {
      const run = all.find((r) => r.id === slot.runId);
      expect(run?.triggerRef).toBe(slot.slotAt.toISOString());
      expect(run?.project).toBe(slot.project);
      expect(slot.note).toBe("fired");
    }
    expect(queued.map((r) => r.id).sort((x, y) => x - y)).toEqual(all.map((r) => r.id));
    // One log line per fire, naming the run.
    expect(lines.filter((l) => typeof l.runId === "number" && l.formula === "ticker")).toHaveLength(all.length);
    // The formula without a schedule got no job.
    expect(lines.filter((l) => l.msg.startsWith("schedule added"))).toEqual([
      expect.objectContaining({ formula: "ticker" }),
    ]);
  });

  it("after downtime catches up exactly one missed slot per formula and project, and never a formula's first", async () => {
    await writeFormulas({
      // Two entries: the catch-up takes the latest slot due of either, one run in all.
      hourly: scheduledFormula("hourly", ["0 * * * *", "0 12 * * *"]),
      fresh: scheduledFormula("fresh", ["0 * * * *"]),
    });
    const before = makeScheduler();
    for (const hour of ["08", "09", "10"]) {
      expect(await before.fire(formula("hourly"), ALPHA, new Date(`2026-03-02T${hour}:00:00Z`))).toEqual(
        expect.any(Number),
      );
    }
    const recordedBefore = (await allRuns()).length;

    let clock = new Date("2026-03-02T13:30:00Z");
    const scheduler = makeScheduler({ now: () => clock });
    await scheduler.start();
    const added = (await allRuns()).slice(recordedBefore);
    // alpha fired before: 11:00, 12:00 and 13:00 were missed, only 13:00 is caught up.
    // beta never fired `hourly`, and `fresh` never fired at all: they wait for their next slot.
    expect(added).toEqual([
      expect.objectContaining({
        formula: "hourly",
        project: "alpha",
        triggerKind: "schedule",
        triggerRef: "2026-03-02T13:00:00.000Z",
      }),
    ]);
    const missed = (await allSlots()).filter((s) => s.note === "missed");
    expect(missed).toEqual([
      expect.objectContaining({
        formula: "hourly",
        project: "alpha",
        slotAt: new Date("2026-03-02T13:00:00Z"),
        runId: added[0]?.id,
      }),
    ]);
    expect(
      lines.some(
        (l) => l.msg === `missed schedule slot 2026-03-02T13:00:00.000Z of hourly/alpha: queued run ${added[0]?.id}`,
      ),
    ).toBe(true);

    // Starting again adds nothing: the same scheduler (idempotent) or a restarted one.
    await scheduler.start();
    await scheduler.stop();
    clock = new Date("2026-03-02T13:59:59Z");
    await makeScheduler({ now: () => clock, instanceId: "instance-b" }).start();
    expect(await allRuns()).toHaveLength(recordedBefore + 1);

    // An hour later the next slot is missed too: again exactly one.
    clock = new Date("2026-03-02T16:10:00Z");
    await makeScheduler({ now: () => clock }).start();
    expect((await allRuns()).slice(recordedBefore + 1).map((r) => [r.project, r.triggerRef])).toEqual([
      ["alpha", "2026-03-02T16:00:00.000Z"],
    ]);
  });

  it("fires a schedule only on the projects that opted in: a project listing no formula gets no run", async () => {
    await writeFormulas({
      listed: scheduledFormula("listed", ["* * * * * *"], { guards: { concurrency: "" } }),
      unlisted: scheduledFormula("unlisted", ["* * * * * *"], { guards: { concurrency: "" } }),
      opted: scheduledFormula("opted", ["* * * * * *"], { projects: ["quiet"], guards: { concurrency: "" } }),
    });
    const quiet = project("quiet", []);
    const picky = project("picky", ["listed"]);
    const scheduler = makeScheduler({ projects: [quiet, picky] });
    await scheduler.start();
    const fired = async () => (await allRuns()).map((r) => `${r.formula}/${r.project}`);
    await eventually(async () => {
      const names = await fired();
      return names.filter((n) => n === "listed/picky").length >= 2 &&
        names.filter((n) => n === "opted/quiet").length >= 2
        ? true
        : undefined;
    });
    await scheduler.stop();
    expect([...new Set(await fired())].sort()).toEqual(["listed/picky", "opted/quiet"]);
    const added = lines.filter((l) => l.msg.startsWith("schedule added")).map((l) => l.formula);
    expect(added.sort()).toEqual(["listed", "opted"]);
  });

  it("sync() replaces changed schedules, stops removed ones and keeps unchanged ones ticking", async () => {
    await writeFormulas({
      steady: scheduledFormula("steady", ["* * * * * *"], { guards: { concurrency: "" } }),
      // Once a year: does not fire during the test until it is edited.
      edited: scheduledFormula("edited", ["0 0 1 1 *"], { guards: { concurrency: "" } }),
      removed: scheduledFormula("removed", ["* * * * * *"], { guards: { concurrency: "" } }),
    });
    const scheduler = makeScheduler({ projects: [ALPHA] });
    await scheduler.start();
    const countOf = async (name: string) => (await allRuns()).filter((r) => r.formula === name).length;
    await eventually(async () => ((await countOf("removed")) >= 1 ? true : undefined));
    expect(await countOf("edited")).toBe(0);

    await writeFile(
      path.join(dir, "edited.toml"),
      scheduledFormula("edited", ["* * * * * *"], { guards: { concurrency: "" } }),
    );
    await rm(path.join(dir, "removed.toml"));
    await store.reload();
    await scheduler.sync();
    expect(scheduler.nextRuns("edited", 1)).toEqual([
      { cron: "* * * * * *", timezone: "UTC", next: [expect.any(String)] },
    ]);
    expect(scheduler.nextRuns("removed")).toEqual([]);

    // A fire of `removed` may have been in flight during the sync; after that, none.
    await sleep(300);
    const removedRuns = await countOf("removed");
    await eventually(async () => ((await countOf("edited")) >= 2 ? true : undefined));
    expect(await countOf("removed")).toBe(removedRuns);
    await scheduler.stop();

    const added = lines.filter((l) => l.msg.startsWith("schedule added")).map((l) => `${l.formula} ${l.cron}`);
    expect(added.sort()).toEqual([
      "edited * * * * * *",
      "edited 0 0 1 1 *",
      "removed * * * * * *",
      "steady * * * * * *",
    ]);
    const dropped = lines.filter((l) => l.msg.startsWith("schedule removed")).map((l) => `${l.formula} ${l.cron}`);
    expect(dropped.sort()).toEqual(["edited 0 0 1 1 *", "removed * * * * * *"]);
    // `steady` kept its job: one slot a second with no gap across the sync.
    const steady = (await allRuns()).filter((r) => r.formula === "steady").map((r) => new Date(r.triggerRef).getTime());
    expect(steady.length).toBeGreaterThanOrEqual(2);
    steady.forEach((t, i) => {
      if (i > 0) expect(t - (steady[i - 1] as number)).toBe(1_000);
    });
  });

  it("nextRuns reports croner's next fire times in UTC, reading the entry's time zone", async () => {
    await writeFormulas({
      berlin: scheduledFormula("berlin", [{ cron: "0 9 * * *", timezone: "Europe/Berlin" }, "30 6 * * 1"]),
      manual: testFormula("manual"),
    });
    let clock = new Date("2026-01-10T12:00:00Z"); // a Saturday in winter: Berlin is UTC+1
    const scheduler = makeScheduler({ now: () => clock });
    expect(scheduler.nextRuns("berlin", 2)).toEqual([
      { cron: "0 9 * * *", timezone: "Europe/Berlin", next: ["2026-01-11T08:00:00.000Z", "2026-01-12T08:00:00.000Z"] },
      { cron: "30 6 * * 1", timezone: "UTC", next: ["2026-01-12T06:30:00.000Z", "2026-01-19T06:30:00.000Z"] },
    ]);
    clock = new Date("2026-07-10T12:00:00Z"); // summer: UTC+2
    expect(scheduler.nextRuns("berlin", 1)[0]?.next).toEqual(["2026-07-11T07:00:00.000Z"]);
    expect(scheduler.nextRuns("berlin")[0]?.next).toHaveLength(5);
    expect(scheduler.nextRuns("manual")).toEqual([]);
    expect(scheduler.nextRuns("unknown")).toEqual([]);
  });

  it("stop() clears every croner timer and waits for fires in flight; stop and start are idempotent", async () => {
    await writeFormulas({
      ticker: scheduledFormula("ticker", ["* * * * * *"]),
      yearly: scheduledFormula("yearly", ["0 0 1 1 *", { cron: "0 9 * * *", timezone: "Europe/Berlin" }]),
    });
    const timersBefore = activeTimeouts();
    const scheduler = makeScheduler();
    await Promise.all([scheduler.start(), scheduler.start()]);
    expect(activeTimeouts()).toBeGreaterThanOrEqual(timersBefore + 3);
    const inFlight = scheduler.fire(formula("yearly"), ALPHA, new Date("2026-01-01T00:00:00Z"));
    let settled = false;
    void inFlight.then(() => (settled = true));
    await Promise.all([scheduler.stop(), scheduler.stop()]);
    expect(settled).toBe(true);
    expect(await inFlight).toEqual(expect.any(Number));
    expect(activeTimeouts()).toBe(timersBefore);
    await scheduler.stop();
    // sync() while stopped creates nothing.
    await scheduler.sync();
    expect(activeTimeouts()).toBe(timersBefore);
    // Started again after a stop, it ticks again.
    await scheduler.start();
    expect(activeTimeouts()).toBeGreaterThanOrEqual(timersBefore + 3);
    await scheduler.stop();
    expect(activeTimeouts()).toBe(timersBefore);
  });

  it("a fire that fails (database gone) is logged with its slot, not thrown, and the scheduler keeps going", async () => {
    await writeFormulas({ ticker: scheduledFormula("ticker", ["* * * * * *"]) });
    const scheduler = makeScheduler({ projects: [ALPHA] });
    await scheduler.start();
    await db.database.close();

    await expect(scheduler.fire(formula("ticker"), ALPHA, new Date("2026-03-01T10:00:00Z"))).resolves.toBeUndefined();
    const direct = lines.find((l) => l.level === 50 && l.slot === "2026-03-01T10:00:00.000Z");
    expect(direct).toMatchObject({ formula: "ticker", project: "alpha", err: expect.anything() });
    expect(direct?.msg).toMatch(/^schedule slot 2026-03-01T10:00:00\.000Z of ticker\/alpha could not be recorded: /);

    // The per-second job's ticks fail the same way, each logged, and the process lives on.
    await eventually(async () => {
      const failed = lines.filter((l) => l.level === 50 && l.slot !== "2026-03-01T10:00:00.000Z");
      return failed.length >= 2 ? failed : undefined;
    });
    // sync() on a database that is gone logs the failed catch-up and still replaces the jobs.
    await expect(scheduler.sync()).resolves.toBeUndefined();
    expect(lines.some((l) => l.msg.startsWith("catching up missed schedule slots failed"))).toBe(true);
    await scheduler.stop();
    expect(queued).toEqual([]);
  });
});
