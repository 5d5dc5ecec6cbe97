import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sessions } from "../../db/schema/index.js";
import { oneBackend } from "../helpers/db.js";
import { cutFirstWrite } from "../helpers/db-faults.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

/**
 * A connection cut while the server records a just-started agent's pid: the session goes
 * on. Before, the execution ended there and the run sweep stopped the live agent and took
 * the run over as a crash (a `done` agent's run ended `crashed` in the chaos run).
 */
describe.each(oneBackend())("a cut while recording a session's pid, on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: { done: testFormula("done", { agent: "done" }) },
      agents: { done: "done" },
      runSweepMs: 200,
      wrapDatabase: (database) => cutFirstWrite(database, { method: "update", table: sessions, commit: false }),
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("does not end the session: the run ends done in its one session", async () => {
    const { status, body } = await t.api("POST", "/api/runs", { formula: "done" });
    expect(status).toBe(201);
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);
    expect(run.status).toBe("done");
    expect(run.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "done"],
    ]);
  });
});
