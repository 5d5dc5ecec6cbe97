import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { type AgentProcess, startAgentProcess } from "../../src/sessions/agent-process.js";
import { PhaseWatcher, type PhaseWatcherOptions, type TimedPhaseSignal } from "../../src/sessions/phase-watcher.js";
import { groupAlive } from "../../src/sessions/process-group.js";
import { agentPath, type TestAgent } from "../helpers/agents/index.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const watchers: PhaseWatcher[] = [];
const agents: AgentProcess[] = [];

afterEach(async () => {
  for (const agent of agents.splice(0)) {
    await agent.stop("test cleanup");
    if (agent.pid !== undefined) expect(groupAlive(agent.pid)).toBe(false);
  }
  for (const watcher of watchers.splice(0)) await watcher.stop();
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

interface Watched {
  dir: string;
  file: string;
  watcher: PhaseWatcher;
  seen: TimedPhaseSignal[];
  errors: Error[];
  phases: () => string[];
}

async function watched(options: Partial<PhaseWatcherOptions> & { subdir?: string } = {}): Promise<Watched> {
  const dir = await makeTempDir("fr-phase-");
  const file = join(dir, options.subdir ?? "", "phase");
  const seen: TimedPhaseSignal[] = [];
  const errors: Error[] = [];
  const watcher = new PhaseWatcher({ file, onPhase: (s) => seen.push(s), onError: (e) => errors.push(e), ...options });
  watchers.push(watcher);
  return { dir, file, watcher, seen, errors, phases: () => seen.map((s) => s.phase) };
}

async function waitFor(what: string, probe: () => boolean, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function runAgent(agent: TestAgent, file: string, cwd: string): AgentProcess {
  const process_ = startAgentProcess({
    command: [agentPath(agent)],
    cwd,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PHASE_FILE: file },
    input: "",
    logFile: join(cwd, "agent.log"),
  });
  agents.push(process_);
  return process_;
}

/** Writes like `printf > f.tmp && mv f.tmp f`. */
async function replace(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text);
  await rename(`${file}.tmp`, file);
}

describe("PhaseWatcher", () => {
  it("emits each phase of an agent, in order, as it is written", async () => {
    const w = await watched();
    await w.watcher.start();
    const agent = runAgent("phases", w.file, w.dir);
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    await w.watcher.stop();
    expect(w.phases()).toEqual(["planning", "implementing", "testing", "reviewing", "done"]);
    // Timestamps are in order (how far apart depends on the host's load, not asserted).
    const at = w.seen.map((s) => s.at.getTime());
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(w.watcher.last?.phase).toBe("done");
  });

  it("strips trailing spaces and CRLF", async () => {
    const w = await watched();
    await w.watcher.start();
    await runAgent("crlf", w.file, w.dir).exited;
    await w.watcher.stop();
    expect(w.seen).toEqual([{ phase: "done", detail: "with CRLF", body: "Reason: with CRLF", at: expect.any(Date) }]);
  });

  it("emits the failure reason and an escalation's question", async () => {
    const w = await watched();
    await w.watcher.start();
    await runAgent("fail", w.file, w.dir).exited;
    await waitFor("failed", () => w.seen.length === 1);
    await replace(w.file, "PHASE:escalate\nShould I?\nReally?\n");
    await waitFor("escalate", () => w.seen.length === 2);
    expect(w.seen.map(({ at: _at, ...rest }) => rest)).toEqual([
      { phase: "failed", detail: "tests are red", body: "Reason: tests are red" },
      { phase: "escalate", detail: "Should I?", body: "Should I?\nReally?" },
    ]);
  });

  it("sees a file created after start, and reacts within a few milliseconds", async () => {
    const w = await watched({ pollMs: 60_000 });
    await w.watcher.start();
    expect(w.seen).toEqual([]);
    const t0 = performance.now();
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1);
    // fs.watch, not the (here one-minute) poll.
    expect(performance.now() - t0).toBeLessThan(500);
    expect(w.phases()).toEqual(["working"]);
  });

  it("follows a file replaced by rename again and again", async () => {
    const w = await watched({ pollMs: 60_000 });
    await w.watcher.start();
    for (const phase of ["one", "two", "three"]) {
      await replace(w.file, `PHASE:${phase}\n`);
      await waitFor(phase, () => w.watcher.last?.phase === phase);
    }
    // And a direct write after the renames (the watch is on the directory, not an old inode).
    await writeFile(w.file, "PHASE:four\n");
    await waitFor("four", () => w.watcher.last?.phase === "four");
    expect(w.phases()).toEqual(["one", "two", "three", "four"]);
  });

  it("does not emit the same phase twice, but does when the detail changes", async () => {
    const w = await watched({ pollMs: 20 });
    await w.watcher.start();
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1);
    await writeFile(w.file, "PHASE:working\n");
    await replace(w.file, "PHASE: working  \r\n");
    await writeFile(w.file, ""); // a truncation on its way to a rewrite is not news either
    await writeFile(w.file, "PHASE:working\n");
    await sleep(150);
    expect(w.seen).toHaveLength(1);
    await writeFile(w.file, "PHASE:working\nReason: second try\n");
    await waitFor("the new detail", () => w.seen.length === 2);
    expect(w.seen[1]?.detail).toBe("second try");
  });

  it("emits what is already in the file at start, unless primed", async () => {
    const fresh = await watched();
    await writeFile(fresh.file, "PHASE:working\n");
    await fresh.watcher.start();
    expect(fresh.phases()).toEqual(["working"]);

    const primed = await watched();
    await writeFile(primed.file, "PHASE:done\nReason: previous session\n");
    await primed.watcher.prime();
    expect(primed.watcher.last).toMatchObject({ phase: "done", detail: "previous session" });
    await primed.watcher.start();
    await writeFile(primed.file, "PHASE:done\nReason: previous session\n");
    await sleep(50);
    expect(primed.seen).toEqual([]);
    await writeFile(primed.file, "PHASE:working\n");
    await waitFor("working", () => primed.seen.length === 1);
    expect(primed.phases()).toEqual(["working"]);
  });

  it("after a clear and prime(), the same phase as before is news again", async () => {
    const w = await watched();
    await w.watcher.start();
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1);
    await writeFile(w.file, "");
    await w.watcher.prime();
    expect(w.watcher.last).toBeUndefined();
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working again", () => w.seen.length === 2);
  });

  it("detects changes by the stat poll alone when fs.watch is off", async () => {
    const w = await watched({ useFsWatch: false, pollMs: 25 });
    await w.watcher.start();
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1, 1_000);
    await replace(w.file, "PHASE:testing\n");
    await waitFor("testing", () => w.seen.length === 2, 1_000);
    // Same size, new content, same inode.
    await writeFile(w.file, "PHASE:tasting\n");
    await waitFor("tasting", () => w.seen.length === 3, 1_000);
    expect(w.phases()).toEqual(["working", "testing", "tasting"]);
  });

  it("starts watching a directory that appears after start (the poll retries the watch)", async () => {
    const w = await watched({ subdir: "later", pollMs: 25 });
    await w.watcher.start();
    await mkdir(join(w.dir, "later"));
    await sleep(100); // let the poll set up the watch
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1, 1_000);
    expect(w.errors).toEqual([]);
  });

  it("stop() takes a last look, so a phase written just before it is not lost", async () => {
    const w = await watched({ pollMs: 60_000 });
    await w.watcher.start();
    await writeFile(w.file, "PHASE:done\n");
    await w.watcher.stop();
    expect(w.phases()).toEqual(["done"]);
  });

  it("emits nothing after stop, which is idempotent and leaves no watcher or timer", async () => {
    const before = handles();
    const w = await watched({ pollMs: 10 });
    await w.watcher.stop(); // before start: fine
    await w.watcher.start();
    await w.watcher.start(); // idempotent too
    expect(handles().FSEventWrap).toBe((before.FSEventWrap ?? 0) + 1);
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1);
    await Promise.all([w.watcher.stop(), w.watcher.stop()]);
    await w.watcher.stop();
    await writeFile(w.file, "PHASE:done\n");
    await sleep(60);
    expect(w.phases()).toEqual(["working"]);
    const after = handles();
    expect(after.FSEventWrap ?? 0).toBe(before.FSEventWrap ?? 0);
    expect(after.Timeout ?? 0).toBeLessThanOrEqual(before.Timeout ?? 0);
  });

  it("reports a file it cannot read once, and goes on", async () => {
    const w = await watched({ pollMs: 20 });
    await mkdir(w.file); // a directory where the file should be: EISDIR
    await w.watcher.start();
    await sleep(100);
    expect(w.errors).toHaveLength(1);
    expect(w.errors[0]?.message).toContain(w.file);
    await rm(w.file, { recursive: true });
    await writeFile(w.file, "PHASE:working\n");
    await waitFor("working", () => w.seen.length === 1);
  });

  it("reports an onPhase that throws and keeps watching", async () => {
    const errors: Error[] = [];
    let calls = 0;
    const w = await watched({
      onPhase: () => {
        calls++;
        throw new Error("listener bug");
      },
      onError: (e) => errors.push(e),
    });
    await w.watcher.start();
    await writeFile(w.file, "PHASE:one\n");
    await waitFor("one", () => calls === 1);
    await writeFile(w.file, "PHASE:two\n");
    await waitFor("two", () => calls === 2);
    expect(errors[0]?.message).toContain("listener bug");
  });
});

/** Counts of the libuv handles and timers the process holds, by type. */
function handles(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}
