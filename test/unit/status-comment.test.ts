import { describe, expect, it } from "vitest";
import type { Escalation, Phase, Run, Session, Worktree } from "../../db/schema/index.js";
import { statusMarker } from "../../src/forge/outbox.js";
import { renderStatus } from "../../src/forge/status-comment.js";

const T0 = new Date("2026-11-30T10:00:00Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

function run(overrides: Partial<Run> = {}): Run {
  return {
    id: 42,
    formula: "dev",
    project: "demo",
    status: "running",
    skipReason: null,
    issue: 7,
    triggerKind: "webhook",
    triggerRef: "delivery-1",
    deliveryId: "delivery-1",
    event: null,
    attempt: 1,
    concurrencyKey: null,
    onBusy: "skip",
    queuedAt: T0,
    startedAt: at(1),
    finishedAt: null,
    phase: null,
    detail: null,
    instanceId: "host-a",
    cancelRequestedAt: null,
    reportIssue: 7,
    statusCommentId: null,
    statusNonce: "n0nce",
    tokenHash: null,
    sandboxed: null,
    sandboxNote: null,
    forgeToken: false,
    updatedAt: T0,
    ...overrides,
  } as Run;
}

const phase = (name: string, seconds: number, detail: string | null = null): Phase =>
  ({ id: seconds, runId: 42, sessionId: 1, phase: name, detail, at: at(seconds) }) as Phase;

function session(overrides: Partial<Session> = {}): Session {
  return {
    id: 1,
    runId: 42,
    seq: 1,
    kind: "initial",
    instanceId: "host-a",
    pid: 100,
    startedAt: at(1),
    endedAt: null,
    exitCode: null,
    signal: null,
    outcome: null,
    detail: null,
    agentSessionId: null,
    numTurns: null,
    toolCalls: null,
    costUsd: null,
    result: null,
    outputTail: null,
    ...overrides,
  } as Session;
}

describe("renderStatus", () => {
  it("shows a running run's phase timeline and duration under its marker", () => {
    const text = renderStatus({
      run: run({ phase: "implementing" }),
      phases: [phase("planning", 5), phase("implementing", 65, "step 2 | tests")],
      sessions: [session()],
      worktree: undefined,
      escalations: [],
      now: at(121),
    });
    expect(text.startsWith(statusMarker(42, "n0nce"))).toBe(true);
    expect(text.startsWith("<!-- formula-runner:run:42:n0nce -->\n")).toBe(true);
    expect(text).toContain("`dev` run 42 — running");
    expect(text).toContain("**Trigger:** webhook delivery `delivery-1`");
    expect(text).toContain("**Running for:** 2m 0s");
    expect(text).toContain("| 10:00:05 | `planning` |  |");
    // A pipe in a detail cannot break the table.
    expect(text).toContain("| 10:01:05 | `implementing` | step 2 \\| tests |");
    expect(text).not.toContain("Outcome");
  });

  it("shows the outcome, the preserved worktree and the last output of a crashed run, in a fence its text cannot close", () => {
    const tail = `${Array.from({ length: 30 }, (_, i) => `line ${i + 1}`).join("\n")}\n\`\`\`\nstill inside`;
    const text = renderStatus({
      run: run({
        status: "crashed",
        finishedAt: at(3_700),
        detail: "the agent crashed twice (last: exit code 3)\nmore",
      }),
      phases: [],
      sessions: [
        session({ outcome: "crashed", outputTail: tail, numTurns: 4, costUsd: 0.1234 }),
        session({ id: 2, seq: 2, kind: "recovery", outcome: "crashed", numTurns: 3, costUsd: 0.05 }),
      ],
      worktree: {
        path: "/wt/demo/dev-42",
        state: "preserved",
        instanceId: "host-a",
        expiresAt: new Date("2026-12-01T11:00:00Z"),
      } as Worktree,
      escalations: [],
      now: at(4_000),
    });
    expect(text).toContain("**Took:** 1h 1m");
    expect(text).toContain("**Turns:** 7");
    expect(text).toContain("**Cost:** $0.17");
    expect(text).toContain("**Sessions:** 1 initial (crashed), 2 recovery (crashed)");
    expect(text).toContain("**Outcome:** crashed");
    expect(text).toContain("**Why:** the agent crashed twice (last: exit code 3)\n");
    expect(text).toContain(
      "**Worktree kept for debugging:** `/wt/demo/dev-42` (on host-a) until 2026-12-01T11:00:00.000Z",
    );
    expect(text).not.toContain("line 12\n");
    expect(text).toContain("line 13\n");
    expect(text).toContain("````\nline 13");
    expect(text).toContain("still inside\n````");
  });

  it("says the run waits for an answer while a question is open, and shows no output for a done run", () => {
    const waiting = renderStatus({
      run: run({ status: "escalated", phase: "escalate" }),
      phases: [phase("escalate", 10, "Which API?")],
      sessions: [session({ outcome: "escalated" })],
      worktree: undefined,
      escalations: [{ state: "open", deadlineAt: new Date("2026-12-01T10:00:00Z") } as Escalation],
      now: at(20),
    });
    expect(waiting).toContain("Waiting for an answer** (see the question below) until 2026-12-01T10:00:00.000Z");

    const done = renderStatus({
      run: run({ status: "done", finishedAt: at(30) }),
      phases: [phase("done", 29)],
      sessions: [session({ outcome: "done", outputTail: "secret-free output" })],
      worktree: undefined,
      escalations: [],
      now: at(40),
    });
    expect(done).toContain("**Outcome:** done");
    expect(done).not.toContain("Last lines of output");
  });
});

describe("the sandbox line", () => {
  const render = (overrides: Partial<Run>) =>
    renderStatus({ run: run(overrides), phases: [], sessions: [], worktree: undefined, escalations: [], now: at(5) });

  it("says whether the agent ran sandboxed, and warns when it holds the forge token", () => {
    expect(render({ sandboxed: true })).toContain("**Sandbox:** on");
    expect(render({ sandboxed: false })).toContain("**Sandbox:** ⚠️ off");
    expect(render({ sandboxed: null })).not.toContain("Sandbox");
    expect(render({ sandboxed: true, forgeToken: true })).toContain("**Forge token:** ⚠️ given to the agent");
  });
});
