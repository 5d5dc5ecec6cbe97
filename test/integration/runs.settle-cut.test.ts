import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { worktrees } from "../../db/schema/index.js";
import { oneBackend } from "../helpers/db.js";
import { cutFirstWrite } from "../helpers/db-faults.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

/**
 * A connection cut while a finished run's worktree is marked removed: the write is
 * retried. Before, the run ended done with its worktree left `active` until a restart
 * (16 of them in a 10-minute chaos run).
 */
describe.each(oneBackend())("a cut while settling a finished run's worktree, on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: { done: testFormula("done", { agent: "done" }) },
      agents: { done: "done" },
      wrapDatabase: (database) => cutFirstWrite(database, { method: "update", table: worktrees, commit: false }),
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("records the worktree removed", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "done" });
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);
    expect(run.status).toBe("done");
    expect(run.worktree).toMatchObject({ state: "removed", removed_by: "success" });
  });
});
