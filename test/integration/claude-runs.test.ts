/**
 * Runs of the built-in `claude` agent profile through the whole server, with the real
 * Claude Code CLI (the pinned devDependency) talking to the scripted fake Anthropic API:
 * phases written by its Bash tool, the stream-json record (session id, turns, cost), an
 * escalation answered and resumed with --resume, API errors, a CLI that lingers after its
 * result, and a crash recovered by resuming the crashed conversation.
 */
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { oneBackend } from "../helpers/db.js";
import { type FakeAnthropic, startFakeAnthropic, messageTexts as texts } from "../helpers/fake-anthropic.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const BIN = fileURLToPath(new URL("../../node_modules/.bin", import.meta.url));
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const CLAUDE_ARGS = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"];

const writePhase = (lines: string) => ({
  bash: `printf '${lines}' > "$PHASE_FILE"`,
  description: "Write the phase file",
});

// Each test runs the real CLI once or twice, sandboxed: minutes on a loaded 2-core host.
describe.each(oneBackend())("claude agent runs, on %s", { timeout: 120_000 }, (backend) => {
  let t: TestServer;
  let fake: FakeAnthropic;
  let home: string;

  beforeAll(async () => {
    fake = await startFakeAnthropic();
    home = await makeTempDir("fr-claude-home-");
    t = await startTestServer({
      backend,
      resultLingerMs: 1_000,
      env: {
        // `claude` from the devDependency, as an operator's PATH would have it.
        PATH: `${BIN}:${process.env.PATH ?? "/usr/bin:/bin"}`,
        HOME: home,
        ANTHROPIC_BASE_URL: fake.url,
        ANTHROPIC_API_KEY: "dummy-key",
        CLAUDE_CODE_MAX_RETRIES: "0",
        ...(process.getuid?.() === 0 ? { IS_SANDBOX: "1" } : {}),
      },
      formulas: {
        work: testFormula("work", { agent: "claude", model: "sonnet", timeout: "60s", max_duration: "120s" }),
        linger: testFormula("linger", { agent: "lingering", timeout: "60s", max_duration: "120s" }),
      },
      agents: {
        // The real CLI, then a wrapper that does not exit: the process outlives the result.
        lingering: { command: ["bash", "-c", 'claude "$@"; exec sleep 300', "claude", ...CLAUDE_ARGS] },
      },
    });
  });
  afterAll(async () => {
    await t?.stop();
    await fake?.close();
    if (home) await removeTempDir(home);
  });
  beforeEach(() => {
    expect(fake.remaining).toBe(0);
    fake.requests.length = 0;
  });

  it("records a done run's agent session id, turns, tool calls and cost, with the formula's model", async () => {
    fake.script([writePhase("PHASE:working\\n"), writePhase("PHASE:done\\n"), { text: "All done." }]);
    const { body } = await t.api("POST", "/api/runs", { formula: "work", issue: 3 });
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(run.status, JSON.stringify(run)).toBe("done");
    expect(run.phases.map((p: { phase: string }) => p.phase)).toEqual(["working", "done"]);
    expect(run.sessions).toHaveLength(1);
    const [session] = run.sessions;
    expect(session.agent_session_id).toMatch(SESSION_ID);
    expect(session).toMatchObject({ kind: "initial", outcome: "done", num_turns: 3, tool_calls: 2 });
    expect(session.cost_usd).toBeGreaterThan(0);
    expect(session.duration_ms).toBeGreaterThan(0);
    expect(session.result).toMatchObject({ subtype: "success", is_error: false, text: "All done." });
    expect(run).toMatchObject({ num_turns: 3, cost_usd: session.cost_usd });
    // Cost per formula on /metrics (counted from the sessions this instance ran).
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    const cost = /^formula_runner_agent_cost_usd_total\{formula="work",project="demo"\} (\S+)$/m.exec(metrics);
    expect(Number(cost?.[1])).toBeGreaterThanOrEqual(session.cost_usd);
    expect(fake.requests).toHaveLength(3);
    const first = fake.requests[0]?.body;
    expect(first.model).toContain("sonnet");
    // The whole prompt reached the model, with the exact phase file.
    expect(texts(first).join("\n")).toContain(path.join(t.dataDir, "runs", String(body.id), "agent", "phase"));
  });

  it("asks, gets the answer through --resume of the same conversation, and finishes", async () => {
    fake.script([
      writePhase("PHASE:escalate\\nPostgreSQL or SQLite?\\n"),
      { text: "I asked; waiting for the answer." },
    ]);
    const { body } = await t.api("POST", "/api/runs", { formula: "work", issue: 4 });
    const escalated = await t.waitForRun(body.id, ["escalated", "done", "failed", "crashed"], 60_000);
    expect(escalated.status, JSON.stringify(escalated)).toBe("escalated");
    expect(escalated.escalations[0]).toMatchObject({ state: "open", question: "PostgreSQL or SQLite?" });
    const firstId = escalated.sessions[0].agent_session_id;
    expect(firstId).toMatch(SESSION_ID);

    fake.script([writePhase("PHASE:done\\n"), { text: "Used PostgreSQL." }]);
    expect(
      (await t.api("POST", `/api/runs/${body.id}/reply`, { body: "PostgreSQL, please.", author: "alice" })).status,
    ).toBe(202);
    const done = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(done.status, JSON.stringify(done)).toBe("done");
    expect(done.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "escalated"],
      ["resume", "done"],
    ]);
    // --resume continued the same conversation: the same id, and the model saw the history.
    expect(done.sessions[1].agent_session_id).toBe(firstId);
    const resumed = texts(fake.requests[2]?.body).join("\n");
    expect(resumed).toContain("PostgreSQL or SQLite?");
    expect(resumed).toMatch(/<<<UNTRUSTED-INPUT \w+ \(reply by @alice\)\nPostgreSQL, please\.\nUNTRUSTED-INPUT \w+>>>/);
    // The continuation prompt does not repeat the steps, but does repeat the phase protocol.
    const lastUser = texts(fake.requests[2]?.body).filter(
      (line) => line.startsWith("user: ") && line.includes("Answer to your question"),
    );
    expect(lastUser).toHaveLength(1);
    expect(lastUser[0]).toContain("## Phase protocol");
    expect(lastUser[0]).not.toContain("## Steps");
  });

  it.each([
    {
      status: 529,
      type: "overloaded_error",
      message: "Overloaded",
      reason: /model API failed \(overloaded, HTTP 529\)/,
    },
    {
      status: 401,
      type: "authentication_error",
      message: "invalid x-api-key",
      reason: /model API failed \(authentication, HTTP 401\)/,
    },
  ])("fails without a recovery session when the API answers $status", async ({ status, type, message, reason }) => {
    fake.script([{ error: { status, type, message } }]);
    const { body } = await t.api("POST", "/api/runs", { formula: "work" });
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(run.status, JSON.stringify(run)).toBe("failed");
    expect(run.detail).toMatch(reason);
    expect(run.sessions).toHaveLength(1);
    expect(run.sessions[0]).toMatchObject({ outcome: "failed", exit_code: 1 });
    expect(run.worktree?.state).toBe("removed");
  });

  it("stops an agent that is still running after its final result", async () => {
    fake.script([{ text: "Finished, but I wrote no phase." }]);
    const started = Date.now();
    const { body } = await t.api("POST", "/api/runs", { formula: "linger" });
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(run.status, JSON.stringify(run)).toBe("failed");
    expect(run.detail).toContain(
      "reported its final result without writing a phase, then did not exit; it was stopped",
    );
    expect(run.sessions[0].signal).toBe("SIGTERM");
    expect(run.sessions[0].agent_session_id).toMatch(SESSION_ID);
    // The 300 s sleep was cut short by the 1 s result grace, not by the 60 s idle timeout.
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it("recovers a crashed session by resuming its conversation", async () => {
    // The Bash tool's shell kills the CLI itself: a crash in the middle of the conversation.
    fake.script([writePhase("PHASE:implementing\\n"), { bash: "kill -KILL $PPID", description: "Crash" }]);
    fake.script([writePhase("PHASE:done\\n"), { text: "Recovered." }]);
    const { body } = await t.api("POST", "/api/runs", { formula: "work" });
    const run = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(run.status, JSON.stringify(run)).toBe("done");
    expect(run.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "crashed"],
      ["recovery", "done"],
    ]);
    expect(run.sessions[1].agent_session_id).toBe(run.sessions[0].agent_session_id);
    const recovery = texts(fake.requests[2]?.body).join("\n");
    expect(recovery).toContain("## Recovery");
    expect(recovery).toContain("Last phase it wrote: implementing");
  });

  it("starts afresh with the full prompt when the conversation to resume is gone", async () => {
    fake.script([writePhase("PHASE:escalate\\nWhich port?\\n"), { text: "Asked." }]);
    const { body } = await t.api("POST", "/api/runs", { formula: "work", issue: 5 });
    await t.waitForRun(body.id, ["escalated"], 60_000);
    // Claude Code keeps conversations under its run's CLAUDE_CONFIG_DIR: gone, as on a fresh machine.
    const projects = path.join(t.dataDir, "runs", String(body.id), "agent", "claude", "projects");
    await rm(projects, { recursive: true, force: true });
    await mkdir(projects, { recursive: true });

    fake.script([writePhase("PHASE:done\\n"), { text: "Port 8080." }]);
    await t.api("POST", `/api/runs/${body.id}/reply`, { body: "8080" });
    const done = await t.waitForRun(body.id, ["done", "failed", "crashed", "timed_out"], 60_000);

    expect(done.status, JSON.stringify(done)).toBe("done");
    expect(done.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "escalated"],
      ["resume", "failed"],
      ["resume", "done"],
    ]);
    expect(done.sessions[1].detail).toMatch(/could not resume its conversation/);
    const fresh = texts(fake.requests.at(-2)?.body).join("\n");
    expect(fresh).toContain("## Steps");
    expect(fresh).toContain("## Answer to your question");
  });
});
