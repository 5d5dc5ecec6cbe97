import { sql } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  escalations,
  type NewRun,
  type NewSession,
  outbox,
  type Run,
  runs,
  type Session,
  sessions,
  worktrees,
} from "../../db/schema/index.js";
import { createApp } from "../../src/app.js";
import { createLogger } from "../../src/logger.js";
import { Metrics } from "../../src/metrics.js";
import type { Services } from "../../src/services.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { testServices } from "../helpers/services.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** The samples of one metric in a Prometheus text answer. */
function samples(text: string, name: string): Sample[] {
  const found: Sample[] = [];
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[key as string] = value as string;
    found.push({ labels, value: Number(match[3]) });
  }
  return found;
}

/** The value of the sample with exactly these labels, or undefined when there is none. */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  return samples(text, name).find(
    (s) => JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort()),
  )?.value;
}

const at = (iso: string) => new Date(iso);

describe.each(testBackends())("GET /metrics on %s", (backend) => {
  let t: TestDatabase;
  let services: Services;
  let logLines: string[];

  beforeEach(async () => {
    t = await openTestDatabase(backend);
    logLines = [];
    services = testServices({ database: t.database, logLines });
  });
  afterEach(async () => {
    await t.cleanup();
  });

  const scrape = async () => {
    const res = await createApp(services).request("/metrics");
    return { status: res.status, contentType: res.headers.get("content-type"), text: await res.text() };
  };

  const insertRun = async (values: Partial<NewRun> = {}): Promise<Run> => {
    const [row] = await t.database.db
      .insert(runs)
      .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "alice", ...values })
      .returning();
    return row as Run;
  };

  const insertSession = async (run: Run, values: Partial<NewSession>): Promise<Session> => {
    const [row] = await t.database.db
      .insert(sessions)
      .values({ runId: run.id, seq: 1, kind: "initial", instanceId: "test-instance", ...values })
      .returning();
    return row as Session;
  };

  it("answers without a token, in Prometheus text format, with process metrics and every run status", async () => {
    const { status, contentType, text } = await scrape();
    expect(status).toBe(200);
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(metricValue(text, "formula_runner_runs", { status: "queued" })).toBe(0);
    // Every status DESIGN lists is there, at zero when no run has it.
    for (const s of [
      "queued",
      "running",
      "escalated",
      "done",
      "failed",
      "crashed",
      "timed_out",
      "cancelled",
      "skipped",
    ]) {
      expect(metricValue(text, "formula_runner_runs", { status: s }), s).toBe(0);
    }
    expect(metricValue(text, "formula_runner_outbox_pending")).toBe(0);
    expect(metricValue(text, "formula_runner_escalations_open")).toBe(0);
    // Node.js process metrics, under the same prefix.
    expect(metricValue(text, "formula_runner_process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(metricValue(text, "formula_runner_process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(text).toContain("# TYPE formula_runner_nodejs_heap_size_used_bytes gauge");
    // The token-guarded API is still guarded: /metrics is the exception, not a hole.
    expect((await createApp(services).request("/api/runs")).status).toBe(401);
  });

  it("counts ended sessions, agent cost, turns and tool calls per formula and project", async () => {
    const m = services.metrics;
    const devRun = await insertRun({ issue: 4242, event: { sender: "mallory-the-login" } });
    const crashed = await insertSession(devRun, {
      outcome: "crashed",
      costUsd: 0.5,
      numTurns: 3,
      toolCalls: 5,
      startedAt: at("2030-01-01T10:00:00Z"),
      endedAt: at("2030-01-01T10:02:00Z"),
    });
    const recovered = await insertSession(devRun, {
      seq: 2,
      kind: "recovery",
      outcome: "done",
      costUsd: 0.25,
      numTurns: 4,
      toolCalls: 6,
      startedAt: at("2030-01-01T10:05:00Z"),
      endedAt: at("2030-01-01T10:15:00Z"),
    });
    const reviewRun = await insertRun({ formula: "review" });
    const review = await insertSession(reviewRun, { outcome: "done", costUsd: 1.125, numTurns: 1, toolCalls: 0 });
    const otherRun = await insertRun({ project: "other" });
    const other = await insertSession(otherRun, { outcome: "done", costUsd: 2 });
    // A script agent reports nothing: the session counts, the cost does not.
    const scriptRun = await insertRun({ formula: "gardener" });
    const script = await insertSession(scriptRun, { outcome: "failed" });

    m.sessionEnded(devRun, crashed);
    m.sessionEnded(devRun, recovered);
    m.sessionEnded(reviewRun, review);
    m.sessionEnded(otherRun, other);
    m.sessionEnded(scriptRun, script);

    const { text } = await scrape();
    const dev = { formula: "dev", project: "demo" };
    expect(metricValue(text, "formula_runner_sessions_total", { ...dev, kind: "initial", outcome: "crashed" })).toBe(1);
    expect(metricValue(text, "formula_runner_sessions_total", { ...dev, kind: "recovery", outcome: "done" })).toBe(1);
    expect(
      metricValue(text, "formula_runner_sessions_total", {
        formula: "gardener",
        project: "demo",
        kind: "initial",
        outcome: "failed",
      }),
    ).toBe(1);
    expect(samples(text, "formula_runner_sessions_total")).toHaveLength(5);

    expect(metricValue(text, "formula_runner_agent_cost_usd_total", dev)).toBe(0.75);
    expect(metricValue(text, "formula_runner_agent_cost_usd_total", { formula: "review", project: "demo" })).toBe(
      1.125,
    );
    expect(metricValue(text, "formula_runner_agent_cost_usd_total", { formula: "dev", project: "other" })).toBe(2);
    expect(
      metricValue(text, "formula_runner_agent_cost_usd_total", { formula: "gardener", project: "demo" }),
    ).toBeUndefined();
    expect(metricValue(text, "formula_runner_agent_turns_total", dev)).toBe(7);
    expect(metricValue(text, "formula_runner_agent_tool_calls_total", dev)).toBe(11);
    expect(metricValue(text, "formula_runner_agent_tool_calls_total", { formula: "review", project: "demo" })).toBe(0);

    // 2 min crashed, 10 min done.
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_count", { formula: "dev", outcome: "crashed" }),
    ).toBe(1);
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_sum", { formula: "dev", outcome: "crashed" }),
    ).toBe(120);
    expect(metricValue(text, "formula_runner_session_duration_seconds_sum", { formula: "dev", outcome: "done" })).toBe(
      600,
    );
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_bucket", {
        formula: "dev",
        outcome: "done",
        le: "300",
      }),
    ).toBe(0);
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_bucket", {
        formula: "dev",
        outcome: "done",
        le: "600",
      }),
    ).toBe(1);
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_bucket", {
        formula: "dev",
        outcome: "done",
        le: "28800",
      }),
    ).toBe(1);

    // No issue numbers, run ids or logins in labels: only these label names exist.
    const ours = text
      .split("\n")
      .filter(
        (l) =>
          l.startsWith("formula_runner_") &&
          !l.startsWith("formula_runner_process_") &&
          !l.startsWith("formula_runner_nodejs_"),
      );
    const labelNames = new Set(ours.flatMap((l) => [...l.matchAll(/[{,](\w+)="/g)].map((x) => x[1])));
    expect([...labelNames].sort()).toEqual(["formula", "kind", "le", "outcome", "project", "state", "status"]);
    // In any label value (a sample's value, heap bytes say, may hold those digits by chance).
    const labelSets = [...text.matchAll(/\{[^}]*\}/g)].map((m) => m[0]).join("\n");
    expect(labelSets).not.toContain("4242");
    expect(text).not.toContain("mallory");
  });

  it("counts finished runs by status and skip reason, and how long they took", async () => {
    const m = services.metrics;
    m.runFinished(
      await insertRun({
        status: "done",
        startedAt: at("2030-01-01T10:00:00Z"),
        finishedAt: at("2030-01-01T10:01:30Z"),
      }),
    );
    m.runFinished(
      await insertRun({
        status: "done",
        startedAt: at("2030-01-01T11:00:00Z"),
        finishedAt: at("2030-01-01T13:00:00Z"),
      }),
    );
    m.runFinished(
      await insertRun({
        status: "failed",
        startedAt: at("2030-01-01T10:00:00Z"),
        finishedAt: at("2030-01-01T10:00:10Z"),
      }),
    );
    m.runFinished(await insertRun({ status: "skipped", skipReason: "busy", finishedAt: at("2030-01-01T10:00:00Z") }));
    m.runFinished(await insertRun({ status: "skipped", skipReason: "busy", finishedAt: at("2030-01-01T10:00:00Z") }));
    m.runFinished(await insertRun({ status: "skipped", skipReason: "low_memory", project: "other" }));

    const { text } = await scrape();
    const dev = { formula: "dev", project: "demo" };
    expect(metricValue(text, "formula_runner_runs_finished_total", { ...dev, status: "done", skip_reason: "" })).toBe(
      2,
    );
    expect(metricValue(text, "formula_runner_runs_finished_total", { ...dev, status: "failed", skip_reason: "" })).toBe(
      1,
    );
    expect(
      metricValue(text, "formula_runner_runs_finished_total", { ...dev, status: "skipped", skip_reason: "busy" }),
    ).toBe(2);
    expect(
      metricValue(text, "formula_runner_runs_finished_total", {
        formula: "dev",
        project: "other",
        status: "skipped",
        skip_reason: "low_memory",
      }),
    ).toBe(1);

    expect(metricValue(text, "formula_runner_run_duration_seconds_count", { formula: "dev", status: "done" })).toBe(2);
    expect(metricValue(text, "formula_runner_run_duration_seconds_sum", { formula: "dev", status: "done" })).toBe(
      90 + 7200,
    );
    expect(
      metricValue(text, "formula_runner_run_duration_seconds_bucket", { formula: "dev", status: "done", le: "300" }),
    ).toBe(1);
    expect(metricValue(text, "formula_runner_run_duration_seconds_sum", { formula: "dev", status: "failed" })).toBe(10);
    // A skipped run never started: no duration.
    expect(
      metricValue(text, "formula_runner_run_duration_seconds_count", { formula: "dev", status: "skipped" }),
    ).toBeUndefined();
  });

  it("reads the run, worktree, outbox and escalation gauges from the database at each scrape", async () => {
    for (const status of ["queued", "queued", "running", "done", "done", "done", "skipped"] as const) {
      await insertRun({ status, ...(status === "skipped" ? { skipReason: "busy" as const } : {}) });
    }
    const escalated = await insertRun({ status: "escalated" });
    for (const [i, state] of (["active", "preserved", "preserved", "removed"] as const).entries()) {
      await t.database.db
        .insert(worktrees)
        .values({ project: "demo", formula: "dev", path: `/tmp/metrics-test/${i}`, state, instanceId: "i1" });
    }
    for (const state of ["pending", "pending", "sent", "failed"] as const) {
      await t.database.db
        .insert(outbox)
        .values({ project: "demo", kind: "comment", issue: 1, payload: { body: "x" }, state });
    }
    for (const state of ["open", "answered"] as const) {
      await t.database.db
        .insert(escalations)
        .values({ runId: escalated.id, question: "?", deadlineAt: at("2030-01-02T00:00:00Z"), state });
    }

    let { text } = await scrape();
    expect(metricValue(text, "formula_runner_runs", { status: "queued" })).toBe(2);
    expect(metricValue(text, "formula_runner_runs", { status: "running" })).toBe(1);
    expect(metricValue(text, "formula_runner_runs", { status: "escalated" })).toBe(1);
    expect(metricValue(text, "formula_runner_runs", { status: "done" })).toBe(3);
    expect(metricValue(text, "formula_runner_runs", { status: "skipped" })).toBe(1);
    expect(metricValue(text, "formula_runner_runs", { status: "crashed" })).toBe(0);
    expect(samples(text, "formula_runner_runs")).toHaveLength(9);
    expect(metricValue(text, "formula_runner_worktrees", { state: "active" })).toBe(1);
    expect(metricValue(text, "formula_runner_worktrees", { state: "preserved" })).toBe(2);
    expect(samples(text, "formula_runner_worktrees")).toHaveLength(2);
    expect(metricValue(text, "formula_runner_outbox_pending")).toBe(2);
    expect(metricValue(text, "formula_runner_escalations_open")).toBe(1);

    // Read again at the next scrape, not cached.
    await t.database.db.update(runs).set({ status: "done" }).where(sql`${runs.status} = 'running'`);
    await t.database.db
      .insert(outbox)
      .values({ project: "demo", kind: "label", issue: 1, payload: { labels: ["blocked"] } });
    ({ text } = await scrape());
    expect(metricValue(text, "formula_runner_runs", { status: "running" })).toBe(0);
    expect(metricValue(text, "formula_runner_runs", { status: "done" })).toBe(4);
    expect(metricValue(text, "formula_runner_outbox_pending")).toBe(3);
  });

  it("still answers when the database is gone: the gauges are left out and the error logged once per scrape", async () => {
    services.metrics.runFinished(await insertRun({ status: "failed" }));
    expect(metricValue((await scrape()).text, "formula_runner_runs", { status: "failed" })).toBe(1);
    await t.database.close();

    for (const n of [1, 2]) {
      const { status, text } = await scrape();
      expect(status).toBe(200);
      for (const name of [
        "formula_runner_runs",
        "formula_runner_worktrees",
        "formula_runner_outbox_pending",
        "formula_runner_escalations_open",
        "formula_runner_deliveries_pending",
      ]) {
        expect(samples(text, name), name).toEqual([]);
      }
      // Everything else is still there.
      expect(
        metricValue(text, "formula_runner_runs_finished_total", {
          formula: "dev",
          project: "demo",
          status: "failed",
          skip_reason: "",
        }),
      ).toBe(1);
      expect(metricValue(text, "formula_runner_process_cpu_user_seconds_total")).toBeGreaterThan(0);
      const logged = logLines.filter((l) => l.includes("could not read the database gauges"));
      expect(logged).toHaveLength(n);
      expect(JSON.parse(logged[0] as string)).toMatchObject({ level: 40, err: { message: expect.any(String) } });
    }
  });

  it("leaves the gauges out when the database does not answer in time", async () => {
    const metrics = new Metrics({ database: t.database, log: services.log, queryTimeoutMs: 300 });
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const lockTaken = new Promise<void>((resolve) => (locked = resolve));
    // A transaction holding the runs table: the gauges' query waits behind it.
    const holder = t.database.db.transaction(async (tx) => {
      await tx.execute(sql`lock table ${runs} in access exclusive mode`);
      locked();
      await held;
    });
    try {
      await lockTaken;
      const started = performance.now();
      const text = await metrics.text();
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(samples(text, "formula_runner_runs")).toEqual([]);
      expect(samples(text, "formula_runner_outbox_pending")).toEqual([]);
      expect(logLines.filter((l) => l.includes("no answer within 300 ms"))).toHaveLength(1);
    } finally {
      release();
      await holder;
    }
    // Once the database answers again, so do the gauges.
    expect(metricValue(await metrics.text(), "formula_runner_runs", { status: "queued" })).toBe(0);
  });

  it("keeps each server's metrics to itself", async () => {
    const quiet = createLogger({ level: "silent" });
    const a = new Metrics({ database: t.database, log: quiet });
    const b = new Metrics({ database: t.database, log: quiet });
    a.runFinished(await insertRun({ status: "cancelled" }));
    expect(
      metricValue(await a.text(), "formula_runner_runs_finished_total", {
        formula: "dev",
        project: "demo",
        status: "cancelled",
        skip_reason: "",
      }),
    ).toBe(1);
    expect(samples(await b.text(), "formula_runner_runs_finished_total")).toEqual([]);
  });
});

describe.each(testBackends())("metrics of a running server on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ backend, formulas: { hello: testFormula("hello") } });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("counts a real run of a formula and its session", async () => {
    const created = await t.api("POST", "/api/runs", { formula: "hello", project: "demo" });
    expect(created.status).toBe(201);
    expect((await t.waitForRun(created.body.id)).status).toBe("done");

    const res = await fetch(`${t.url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const labels = { formula: "hello", project: "demo" };
    expect(
      metricValue(text, "formula_runner_runs_finished_total", { ...labels, status: "done", skip_reason: "" }),
    ).toBe(1);
    expect(metricValue(text, "formula_runner_run_duration_seconds_count", { formula: "hello", status: "done" })).toBe(
      1,
    );
    expect(metricValue(text, "formula_runner_sessions_total", { ...labels, kind: "initial", outcome: "done" })).toBe(1);
    expect(
      metricValue(text, "formula_runner_session_duration_seconds_count", { formula: "hello", outcome: "done" }),
    ).toBe(1);
    expect(metricValue(text, "formula_runner_runs", { status: "done" })).toBe(1);
    expect(metricValue(text, "formula_runner_worktrees", { state: "active" })).toBe(0);
  });
});
