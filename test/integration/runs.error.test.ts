import { randomBytes } from "node:crypto";
import { access, readdir, readFile, readlink, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { groupAlive, processRunning } from "../../src/sessions/process-group.js";
import { testBackends } from "../helpers/db.js";
import { listWorktrees } from "../helpers/git.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

const exists = (file: string) =>
  access(file).then(
    () => true,
    () => false,
  );
/** Whether any process on the host has its working directory in `dir`. */
async function processesIn(dir: string): Promise<boolean> {
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => "");
    if (cwd === dir || cwd.startsWith(`${dir}/`)) return true;
  }
  return false;
}

const eventually = async (check: () => boolean | Promise<boolean>, timeoutMs = 5_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe.each(testBackends())("runs that fail, on %s", (backend) => {
  let t: TestServer;
  const grandchildFile = path.join(os.tmpdir(), `fr-grandchild-${randomBytes(4).toString("hex")}`);
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: {
        fail: testFormula("fail", { agent: "fail" }),
        "fail-kept": testFormula("fail-kept", { agent: "fail", preserve_on: ["failed", "crashed"] }),
        silent: testFormula("silent", { agent: "no-phase" }),
        crash: testFormula("crash", { agent: "crash-always", retention: "2h" }),
        idle: testFormula("idle", { agent: "hang", timeout: "1s", guards: { concurrency: "" } }),
        noisy: testFormula("noisy", { agent: "hang-noisy", timeout: "1s", max_duration: "2s" }),
        // Process-group supervision of an unsandboxed agent: in the sandbox, stopping bubblewrap
        // kills everything inside at once (tested below with "boxed-family").
        stubborn: testFormula("stubborn", {
          agent: "ignore-term",
          timeout: "1s",
          preserve_on: [],
          sandbox: { mode: "off" },
        }),
        family: testFormula("family", {
          agent: "grandchild",
          timeout: "1s",
          env: { GRANDCHILD_PID_FILE: grandchildFile },
          sandbox: { mode: "off" },
        }),
        "boxed-family": testFormula("boxed-family", { agent: "grandchild", timeout: "1s" }),
        missing: testFormula("missing", { agent: "missing" }),
        cancel: testFormula("cancel", { agent: "hang", timeout: "60s", guards: { concurrency: "" } }),
        // Fails to load: a dispatch must say what is wrong, not that it is unknown.
        typo: testFormula("typo", { timeout: "20 minutes" }),
      },
      agents: {
        fail: "fail",
        "no-phase": "no-phase",
        "crash-always": "crash-always",
        hang: "hang",
        "hang-noisy": "hang-noisy",
        "ignore-term": "ignore-term",
        grandchild: "grandchild",
        missing: ["/nonexistent/agent-binary", "--flag"],
      },
    });
  });
  afterAll(async () => {
    await t?.stop();
    await rm(grandchildFile, { force: true });
  });

  const run = async (formula: string) => {
    const { status, body } = await t.api("POST", "/api/runs", { formula });
    expect(status).toBe(201);
    return t.waitForRun(body.id);
  };

  it("PHASE:failed -> failed with the reason; the worktree goes unless preserve_on keeps it", async () => {
    const failed = await run("fail");
    expect(failed).toMatchObject({ status: "failed", phase: "failed", detail: "tests are red" });
    expect(failed.worktree).toMatchObject({ state: "removed", removed_by: "success" });
    const kept = await run("fail-kept");
    expect(kept).toMatchObject({ status: "failed", detail: "tests are red" });
    expect(kept.worktree).toMatchObject({ state: "preserved", reason: "failed" });
    expect(await exists(kept.worktree.path)).toBe(true);
  });

  it("exit 0 without a phase -> failed, with the tail of the output", async () => {
    const silent = await run("silent");
    expect(silent.status).toBe("failed");
    expect(silent.detail).toMatch(/^the agent exited 0 without writing a phase; last output:\n/);
    expect(silent.detail).toContain("no-phase.sh");
    expect(silent.sessions).toHaveLength(1);
  });

  it("two crashes -> crashed after one recovery; the worktree is preserved and expires after the retention", async () => {
    const crashed = await run("crash");
    expect(crashed.status).toBe("crashed");
    expect(crashed.detail).toMatch(/crashed twice \(last: exit code 7\)/);
    expect(crashed.sessions.map((s: { kind: string; exit_code: number }) => [s.kind, s.exit_code])).toEqual([
      ["initial", 7],
      ["recovery", 7],
    ]);
    expect(crashed.worktree).toMatchObject({ state: "preserved", reason: "crashed" });
    expect(Date.parse(crashed.worktree.expires_at) - Date.parse(crashed.worktree.preserved_at)).toBe(2 * 3_600_000);
    expect(await exists(crashed.worktree.path)).toBe(true);
    expect(await listWorktrees(t.repo.clone)).toContain(crashed.worktree.path);
  });

  it("no output and no phase change for `timeout` -> timed_out", async () => {
    const idle = await run("idle");
    expect(idle).toMatchObject({ status: "timed_out", detail: "no phase change and no output for 1s (timeout)" });
    expect(idle.sessions[0].signal).toBe("SIGTERM");
    expect(idle.worktree.state).toBe("removed");
  });

  it("output without progress still ends at max_duration -> timed_out", async () => {
    const noisy = await run("noisy");
    expect(noisy).toMatchObject({ status: "timed_out", detail: "max_duration of 2s reached" });
    const took = Date.parse(noisy.sessions[0].ended_at) - Date.parse(noisy.sessions[0].started_at);
    expect(took).toBeGreaterThanOrEqual(2000);
  });

  it("an agent that ignores SIGTERM is killed after the grace period", async () => {
    const stubborn = await run("stubborn");
    expect(stubborn.status).toBe("timed_out");
    expect(stubborn.sessions[0].signal).toBe("SIGKILL");
    expect(groupAlive(stubborn.sessions[0].pid)).toBe(false);
  });

  it("a grandchild of the agent dies with it", async () => {
    const family = await run("family");
    expect(family.status).toBe("timed_out");
    const grandchild = Number((await readFile(grandchildFile, "utf8")).trim());
    expect(grandchild).toBeGreaterThan(0);
    await eventually(() => !processRunning(grandchild));
  });

  it("a sandboxed agent and everything it started are gone when it is stopped", async () => {
    const family = await run("boxed-family");
    expect(family).toMatchObject({ status: "timed_out", sandboxed: true });
    // The grandchild wrote its pid inside the sandbox's own pid namespace, in its run's agent dir.
    const inside = Number(
      (
        await readFile(path.join(t.dataDir, "runs", String(family.id), "agent", "tmp", "grandchild.pid"), "utf8")
      ).trim(),
    );
    expect(inside).toBeGreaterThan(0);
    // Nothing of the run is left on the host: no process works in its worktree.
    await eventually(async () => !(await processesIn(family.worktree.path)));
  });

  it("an agent that cannot start -> failed, saying which program and why", async () => {
    const missing = await run("missing");
    expect(missing.status).toBe("failed");
    expect(missing.detail).toMatch(/^could not start the agent: .*\/nonexistent\/agent-binary/);
  });

  it("cancel stops the agent group and records cancelled; a second cancel is a conflict", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "cancel" });
    const running = await t.waitForRun(body.id, ["running"]);
    await eventually(async () => (await t.api("GET", `/api/runs/${body.id}`)).body.phase === "working");
    const detail = (await t.api("GET", `/api/runs/${body.id}`)).body;
    const pid = detail.sessions[0].pid as number;
    expect(groupAlive(pid)).toBe(true);
    const cancelled = await t.api("POST", `/api/runs/${running.id}/cancel`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ status: "cancelled", detail: "cancelled on request" });
    expect(groupAlive(pid)).toBe(false);
    const again = await t.api("POST", `/api/runs/${running.id}/cancel`);
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe("conflict");
    const after = (await t.api("GET", `/api/runs/${body.id}`)).body;
    expect(after.worktree.state).toBe("removed");
  });

  it("a queued run can be cancelled before it starts", async () => {
    // Fill every session slot (MAX_SESSIONS = 4) so the next run waits in the queue.
    const blockers = await Promise.all([1, 2, 3, 4].map(() => t.api("POST", "/api/runs", { formula: "cancel" })));
    await Promise.all(blockers.map((b) => t.waitForRun(b.body.id, ["running"])));
    const queued = await t.api("POST", "/api/runs", { formula: "fail" });
    await new Promise((r) => setTimeout(r, 300));
    expect((await t.api("GET", `/api/runs/${queued.body.id}`)).body.status).toBe("queued");
    const cancelled = await t.api("POST", `/api/runs/${queued.body.id}/cancel`);
    expect(cancelled.body).toMatchObject({ status: "cancelled", started_at: null });
    await Promise.all(blockers.map((b) => t.api("POST", `/api/runs/${b.body.id}/cancel`)));
  });

  it("a git failure fails the run with git's message and leaves nothing behind", async () => {
    const clone = t.repo.clone;
    const moved = `${clone}-moved`;
    await import("node:fs/promises").then((fs) => fs.rename(clone, moved));
    try {
      const failed = await run("fail");
      expect(failed.status).toBe("failed");
      expect(failed.detail).toMatch(/git|clone|repository/i);
      expect(failed.worktree).toBeNull();
      expect(failed.sessions).toEqual([]);
      const dirs = await readdir(path.join(t.worktreeRoot, "demo")).catch(() => []);
      expect(dirs.filter((d) => d === `fail-${failed.id}`)).toEqual([]);
    } finally {
      await import("node:fs/promises").then((fs) => fs.rename(moved, clone));
    }
  });

  it("answers dispatch mistakes with clear errors", async () => {
    const unknown = await t.api("POST", "/api/runs", { formula: "nope" });
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.message).toMatch(/no formula "nope" \(known: .*fail/);
    const broken = await t.api("POST", "/api/runs", { formula: "typo" });
    expect(broken.status).toBe(409);
    expect(broken.body.error.message).toMatch(
      /^formula "typo" has errors: timeout: "20 minutes" is not a duration: .*\(fix the file, then `formula-runner formulas reload`\)$/,
    );
    expect(broken.body.error.problems).toEqual([expect.stringMatching(/typo\.toml:\d+: timeout: /)]);
    const project = await t.api("POST", "/api/runs", { formula: "fail", project: "other" });
    expect(project.status).toBe(404);
    const body = await t.api("POST", "/api/runs", { formula: 3, issue: -1, extra: true });
    expect(body.status).toBe(400);
    expect(body.body.error.problems.map((p: { field: string }) => p.field).sort()).toEqual([
      "extra",
      "formula",
      "issue",
    ]);
    const res = await fetch(`${t.url}/api/runs`, {
      method: "POST",
      headers: { authorization: "Bearer test-server-token-0123456789", "content-type": "application/json" },
      body: "{not json",
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_json");
    expect((await t.api("GET", "/api/runs/999999")).status).toBe(404);
    const notAnId = await t.api("GET", "/api/runs/abc");
    expect(notAnId.status).toBe(400);
    expect(notAnId.body.error).toMatchObject({
      code: "bad_request",
      message: '"abc" is not an id: ids are positive whole numbers',
    });
    expect((await t.api("GET", "/api/runs/0")).status).toBe(400);
  });
});

describe.each(testBackends())("guards, on %s", (backend) => {
  let t: TestServer;
  let memory = 8000;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      readMemory: async () => memory,
      formulas: {
        skip: testFormula("skip", { agent: "hang", timeout: "30s", guards: { on_busy: "skip" } }),
        queue: testFormula("queue", { agent: "phases", guards: { on_busy: "queue" } }),
        replace: testFormula("replace", { agent: "hang", timeout: "30s", guards: { on_busy: "cancel-running" } }),
        big: testFormula("big", { guards: { min_memory_mb: 2000 } }),
        private: testFormula("private", { on: { dispatch: false } }),
      },
      agents: { hang: "hang", phases: "phases" },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("skips a run whose concurrency key is held (on_busy = skip), saying by whom", async () => {
    const first = await t.api("POST", "/api/runs", { formula: "skip" });
    await t.waitForRun(first.body.id, ["running"]);
    const second = await t.api("POST", "/api/runs", { formula: "skip" });
    const skipped = await t.waitForRun(second.body.id);
    expect(skipped).toMatchObject({
      status: "skipped",
      skip_reason: "busy",
      detail: `concurrency key "skip-demo" is held by run ${first.body.id}`,
    });
    await t.api("POST", `/api/runs/${first.body.id}/cancel`);
  });

  it("queues a run behind the holder of its key (on_busy = queue)", async () => {
    const [a, b] = await Promise.all([
      t.api("POST", "/api/runs", { formula: "queue" }),
      t.api("POST", "/api/runs", { formula: "queue" }),
    ]);
    const [ra, rb] = await Promise.all([t.waitForRun(a.body.id, ["done"]), t.waitForRun(b.body.id, ["done"])]);
    const [first, second] = Date.parse(ra.started_at) < Date.parse(rb.started_at) ? [ra, rb] : [rb, ra];
    expect(Date.parse(second.started_at)).toBeGreaterThanOrEqual(Date.parse(first.finished_at) - 5);
  });

  it("cancels the holder of its key for a new run (on_busy = cancel-running)", async () => {
    const first = await t.api("POST", "/api/runs", { formula: "replace" });
    await t.waitForRun(first.body.id, ["running"]);
    const second = await t.api("POST", "/api/runs", { formula: "replace" });
    const old = await t.waitForRun(first.body.id, ["cancelled"]);
    expect(old.detail).toBe("cancel requested");
    const fresh = await t.waitForRun(second.body.id, ["running"]);
    expect(Date.parse(fresh.started_at)).toBeGreaterThanOrEqual(Date.parse(old.finished_at) - 5);
    await t.api("POST", `/api/runs/${second.body.id}/cancel`);
  });

  it("skips a run when available memory is under min_memory_mb, and runs it when there is enough", async () => {
    memory = 512;
    const low = await t.api("POST", "/api/runs", { formula: "big" });
    expect(await t.waitForRun(low.body.id)).toMatchObject({
      status: "skipped",
      skip_reason: "low_memory",
      detail: "512 MiB of memory available, the formula needs 2000 MiB",
    });
    memory = 4096;
    const enough = await t.api("POST", "/api/runs", { formula: "big" });
    expect((await t.waitForRun(enough.body.id)).status).toBe("done");
  });

  it("refuses to dispatch a formula without dispatch = true", async () => {
    const res = await t.api("POST", "/api/runs", { formula: "private" });
    expect(res.status).toBe(403);
    expect(res.body.error).toMatchObject({
      code: "forbidden",
      message: expect.stringContaining("does not allow dispatch"),
    });
  });
});
