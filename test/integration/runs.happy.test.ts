import { access, readFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testBackends } from "../helpers/db.js";
import { listWorktrees } from "../helpers/git.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

const exists = (file: string) =>
  access(file).then(
    () => true,
    () => false,
  );

describe.each(testBackends())("runs that succeed, on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: {
        hello: testFormula("hello", {
          context: {
            files: ["AGENTS.md", "MISSING.md"],
            commands: [["git", "-C", "{worktree}", "log", "--oneline", "-n", "1"]],
          },
          env: { PROMPT_COPY: "/dev/null" },
          // Unsandboxed so the agent can reach the API and hold each phase until it is
          // recorded (test/helpers/agents/lib.sh); the sandbox is envdump's subject below.
          sandbox: { mode: "off" },
        }),
        phases: testFormula("phases", { agent: "phases", sandbox: { mode: "off" } }),
        crlf: testFormula("crlf", { agent: "crlf" }),
        recover: testFormula("recover", { agent: "crash-once" }),
        envdump: testFormula("envdump", { agent: "env-dump" }),
        parallel: testFormula("parallel", { agent: "phases", guards: { concurrency: "" }, sandbox: { mode: "off" } }),
      },
      agents: { phases: "phases", crlf: "crlf", "crash-once": "crash-once", "env-dump": "env-dump" },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("runs an agent to done in a fresh worktree of origin's head, then removes the worktree", async () => {
    // The clone is behind origin: the worktree must still have the new commit.
    const head = await t.repo.push({ "NEW.md": "fresh\n" }, "a commit the clone has not fetched");
    const created = await t.api("POST", "/api/runs", { formula: "hello", project: "demo", actor: "alice" });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      formula: "hello",
      project: "demo",
      status: "queued",
      trigger: { kind: "dispatch", ref: "alice" },
    });
    const run = await t.waitForRun(created.body.id);
    expect(run).toMatchObject({
      status: "done",
      phase: "done",
      detail: null,
      attempt: 1,
      instance_id: t.server.services.instanceId,
    });
    expect(run.phases.map((p: { phase: string }) => p.phase)).toEqual(["working", "done"]);
    expect(run.sessions).toHaveLength(1);
    expect(run.sessions[0]).toMatchObject({ seq: 1, kind: "initial", exit_code: 0, outcome: "done" });
    expect(run.sessions[0].output_tail).toContain("done.sh: exiting 0");
    expect(run.worktree).toMatchObject({ state: "removed", removed_by: "success" });
    expect(await exists(run.worktree.path)).toBe(false);
    expect(await listWorktrees(t.repo.clone)).toEqual([t.repo.clone]);

    const runDir = path.join(t.dataDir, "runs", String(run.id));
    const prompt = await readFile(path.join(runDir, "prompt.md"), "utf8");
    expect(prompt).toContain('You are the "hello" agent');
    expect(prompt).toContain("## Context: AGENTS.md\n\nBe careful.");
    expect(prompt).toContain("## Context: MISSING.md\n\n(not available: not found)");
    expect(prompt).toContain(`## Context: output of \`git -C ${run.worktree.path} log --oneline -n 1\``);
    expect(prompt).toContain(head.slice(0, 7));
    expect(prompt).toContain("### 1. Work [work]");
    expect(prompt).toContain(path.join(runDir, "agent", "phase"));
    expect(await exists(path.join(runDir, "agent", "scratch.md"))).toBe(false);
    const log = await t.api("GET", `/api/runs/${run.id}/log`);
    expect(log.body).toContain("done.sh: work finished");
  });

  it("stores every phase in order with its time", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "phases" });
    const run = await t.waitForRun(body.id);
    expect(run.status).toBe("done");
    expect(run.phases.map((p: { phase: string }) => p.phase)).toEqual([
      "planning",
      "implementing",
      "testing",
      "reviewing",
      "done",
    ]);
    const times = run.phases.map((p: { at: string }) => Date.parse(p.at));
    expect([...times].sort((a, b) => a - b)).toEqual(times);
  });

  it("reads a phase written with CRLF and trailing spaces", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "crlf" });
    const run = await t.waitForRun(body.id);
    expect(run).toMatchObject({ status: "done", phase: "done" });
    expect(run.phases).toEqual([expect.objectContaining({ phase: "done", detail: "with CRLF" })]);
  });

  it("recovers a crash once in the same worktree, with a recovery prompt", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "recover" });
    const run = await t.waitForRun(body.id);
    expect(run.status).toBe("done");
    expect(run.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "crashed"],
      ["recovery", "done"],
    ]);
    expect(run.sessions[0].exit_code).toBe(3);
    expect(run.attempt).toBe(2);
    const prompt = await readFile(path.join(t.dataDir, "runs", String(run.id), "prompt.md"), "utf8");
    expect(prompt).toContain("## Recovery");
    expect(prompt).toContain("Last phase it wrote: working.");
    expect(prompt).toContain("exit code 3");
    const log = await t.api("GET", `/api/runs/${run.id}/log`);
    expect(log.body).toMatch(/session 1 \(initial\) started[\s\S]*session 2 \(recovery\) started/);
  });

  it("gives the agent the environment of the design and keeps the server's secrets out", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "envdump", issue: 42 });
    const run = await t.waitForRun(body.id);
    expect(run.status).toBe("done");
    const runDir = path.join(t.dataDir, "runs", String(run.id));
    const env = Object.fromEntries(
      (await readFile(path.join(runDir, "agent", "tmp", "env.txt"), "utf8"))
        .split("\n")
        .filter((line) => line.includes("="))
        .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
    );
    expect(env).toMatchObject({
      PHASE_FILE: path.join(runDir, "agent", "phase"),
      SCRATCH_FILE: path.join(runDir, "agent", "scratch.md"),
      OUTPUTS_FILE: path.join(runDir, "agent", "outputs.jsonl"),
      TMPDIR: path.join(runDir, "agent", "tmp"),
      // Set by the sandbox: the agent ran inside it.
      SANDBOX_RUNTIME: "1",
      RUN_ID: String(run.id),
      FORMULA: "envdump",
      PROJECT: "demo",
      PROJECT_REPO_ROOT: t.repo.clone,
      WORKTREE: run.worktree.path,
      PRIMARY_BRANCH: "main",
      ISSUE: "42",
      FORMULA_RUNNER_URL: t.url,
    });
    expect(run).toMatchObject({ sandboxed: true, sandbox_note: null, forge_token: false });
    expect(env.FORMULA_RUNNER_TOKEN).toMatch(new RegExp(`^frr_${run.id}_`));
    expect(env.PWD).toBe(run.worktree.path);
    // The server's own settings and secrets never reach the agent.
    for (const name of [
      "API_TOKEN",
      "DATABASE_URL",
      "KILL_GRACE",
      "DATA_DIR",
      "FORMULAS_DIR",
      "WORKTREE_ROOT",
      "SSH_AUTH_SOCK",
    ]) {
      expect(env[name], name).toBeUndefined();
    }
  });

  it("runs two runs of one project at once in separate worktrees", async () => {
    const [a, b] = await Promise.all([
      t.api("POST", "/api/runs", { formula: "parallel" }),
      t.api("POST", "/api/runs", { formula: "parallel" }),
    ]);
    const [ra, rb] = await Promise.all([t.waitForRun(a.body.id), t.waitForRun(b.body.id)]);
    expect([ra.status, rb.status]).toEqual(["done", "done"]);
    expect(ra.worktree.path).not.toBe(rb.worktree.path);
    const overlap =
      Date.parse(ra.finished_at) > Date.parse(rb.started_at) && Date.parse(rb.finished_at) > Date.parse(ra.started_at);
    expect(overlap).toBe(true);
    const left = await listWorktrees(t.repo.clone);
    expect(left).not.toContain(ra.worktree.path);
    expect(left).not.toContain(rb.worktree.path);
  });

  it("lists runs newest first with filters and a cursor", async () => {
    const all = await t.api("GET", "/api/runs?limit=500");
    expect(all.status).toBe(200);
    const ids = all.body.runs.map((r: { id: number }) => r.id);
    expect([...ids].sort((x: number, y: number) => y - x)).toEqual(ids);
    const first = await t.api("GET", "/api/runs?limit=2");
    expect(first.body.runs).toHaveLength(2);
    const second = await t.api("GET", `/api/runs?limit=2&cursor=${first.body.next_cursor}`);
    expect(second.body.runs[0].id).toBeLessThan(first.body.runs[1].id);
    const filtered = await t.api("GET", "/api/runs?formula=phases&status=done");
    expect(
      filtered.body.runs.every(
        (r: { formula: string; status: string }) => r.formula === "phases" && r.status === "done",
      ),
    ).toBe(true);
    expect(filtered.body.runs.length).toBeGreaterThan(0);
    const bad = await t.api("GET", "/api/runs?status=bogus&limit=0");
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe("validation_failed");
    expect(bad.body.error.problems.map((p: { field: string }) => p.field).sort()).toEqual(["limit", "status"]);
  });

  it("streams a log with ?follow=1 as server-sent events until the run ends", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "phases" });
    const res = await fetch(`${t.url}/api/runs/${body.id}/log?follow=1`, {
      headers: { authorization: "Bearer test-server-token-0123456789" },
    });
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const text = await res.text();
    expect(text).toMatch(/event: log\n(data: .*\n)*data: === formula-runner: session 1 \(initial\) started/);
    expect(text).toMatch(/event: end\ndata: \{"status":"done"\}/);
    // The closing line names the phase the agent wrote.
    expect(text).toMatch(/data: === formula-runner: session 1 ended: exit code 0; phase done ===/);
  });
});
