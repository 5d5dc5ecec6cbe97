import { mkdir, writeFile } from "node:fs/promises";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runs, sessions } from "../../db/schema/index.js";
import { runPaths } from "../../src/runs/run-paths.js";
import { testBackends } from "../helpers/db.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

describe.each(testBackends())("runs whose end the database missed, on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: { done: testFormula("done", { agent: "done", guards: { on_busy: "queue" } }) },
      agents: { done: "done" },
      runSweepMs: 200,
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  /** A run of this instance left `running` with a session that never ended, as a lost write leaves it. */
  async function stranded(phaseFileText: string, concurrencyKey: string): Promise<number> {
    const instanceId = t.server.services.instanceId;
    const [run] = await t.db.database.db
      .insert(runs)
      .values({
        formula: "done",
        project: "demo",
        // Made `running` only once its session and phase file exist, so the sweep never sees it half-made.
        status: "escalated",
        triggerKind: "dispatch",
        triggerRef: "test",
        concurrencyKey,
        onBusy: "queue",
        instanceId,
        startedAt: new Date(),
      })
      .returning({ id: runs.id });
    const id = (run as { id: number }).id;
    await t.db.database.db.insert(sessions).values({ runId: id, seq: 1, kind: "initial", instanceId });
    const paths = runPaths(t.dataDir, id);
    await mkdir(paths.agentDir, { recursive: true });
    await writeFile(paths.phaseFile, phaseFileText);
    await t.db.database.db.update(runs).set({ status: "running" }).where(eq(runs.id, id));
    return id;
  }

  it("the sweep settles a run nobody executes; PHASE:done on disk ends it done and frees its key", async () => {
    const id = await stranded("PHASE:done\n", "done-demo");
    // Queued behind the stranded run's concurrency key.
    const { status, body } = await t.api("POST", "/api/runs", { formula: "done" });
    expect(status).toBe(201);
    const settled = await t.waitForRun(id, ["done", "failed", "crashed"], 15_000);
    expect(settled).toMatchObject({ status: "done", detail: null });
    expect(await t.waitForRun(body.id, ["done", "failed", "crashed", "skipped"], 15_000)).toMatchObject({
      status: "done",
    });
  });

  it("a stranded run whose agent wrote no terminal phase is taken over as a crash", async () => {
    const id = await stranded("PHASE:working\n", "stranded-2");
    const settled = await t.waitForRun(id, ["done", "failed", "crashed"], 15_000);
    // No worktree survived: nothing to recover in, so it is crashed with the reason.
    expect(settled.status).toBe("crashed");
    expect(settled.detail).toMatch(/worktree is gone/);
  });
});
