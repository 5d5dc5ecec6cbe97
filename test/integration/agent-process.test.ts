import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import {
  type AgentProcess,
  type AgentProcessOptions,
  OutputTail,
  startAgentProcess,
} from "../../src/sessions/agent-process.js";
import {
  groupAlive,
  liveGroupMembers,
  processHasEnv,
  processRunning,
  signalGroup,
  stopGroup,
} from "../../src/sessions/process-group.js";
import { agentPath, type TestAgent } from "../helpers/agents/index.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const started: AgentProcess[] = [];
/** Grandchildren the tests learnt about, checked dead after each test. */
const grandchildren: number[] = [];

afterEach(async () => {
  for (const agent of started.splice(0)) {
    await agent.stop("test cleanup");
    if (agent.pid !== undefined) expect(groupAlive(agent.pid)).toBe(false);
  }
  for (const pid of grandchildren.splice(0)) expect(processRunning(pid)).toBe(false);
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

async function waitFor<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 5_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, "utf8");
  } catch {
    return undefined;
  }
}

interface Setup {
  dir: string;
  phaseFile: string;
  logFile: string;
  env: Record<string, string>;
}

async function setup(): Promise<Setup> {
  const dir = await makeTempDir("fr-agent-");
  const phaseFile = join(dir, "run", "phase");
  await mkdir(join(dir, "run"));
  return {
    dir,
    phaseFile,
    logFile: join(dir, "run", "log"),
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PHASE_FILE: phaseFile },
  };
}

function start(s: Setup, overrides: Partial<AgentProcessOptions> & { agent?: TestAgent } = {}): AgentProcess {
  const { agent, ...rest } = overrides;
  const process = startAgentProcess({
    command: agent ? [agentPath(agent)] : ["true"],
    cwd: s.dir,
    env: s.env,
    input: "the prompt\n",
    logFile: s.logFile,
    ...rest,
  });
  started.push(process);
  return process;
}

describe("exit classes", () => {
  it("reports the exit code of an agent that exits", async () => {
    const s = await setup();
    expect(await start(s, { agent: "crash-always" }).exited).toEqual({ kind: "exited", code: 7 });
    expect(await start(s, { agent: "done" }).exited).toEqual({ kind: "exited", code: 0 });
    expect(await readFile(s.phaseFile, "utf8")).toBe("PHASE:done\n");
  });

  it("reports the signal of an agent killed by one", async () => {
    const s = await setup();
    const agent = start(s, { command: ["bash", "-c", "kill -USR1 $$"] });
    expect(await agent.exited).toEqual({ kind: "signaled", signal: "SIGUSR1" });
  });

  it("never throws for a program that cannot start, and says which program and why", async () => {
    const s = await setup();
    const missing = start(s, { command: ["formula-runner-no-such-program", "--flag"] });
    expect(missing.pid).toBeUndefined();
    const exit = await missing.exited;
    expect(exit.kind).toBe("spawn_failed");
    expect(exit.kind === "spawn_failed" && exit.message).toMatch(/"formula-runner-no-such-program".*not found.*ENOENT/);
    // stop() on an agent that never ran answers with the same exit.
    expect(await missing.stop("not needed")).toEqual(exit);
    expect(missing.stopReason).toBeUndefined();

    const notExecutable = join(s.dir, "plain.txt");
    await writeFile(notExecutable, "echo hi\n");
    await chmod(notExecutable, 0o644);
    const denied = await start(s, { command: [notExecutable] }).exited;
    expect(denied).toEqual({ kind: "spawn_failed", message: expect.stringMatching(/plain\.txt.*EACCES/) });

    expect(await start(s, { command: [] }).exited).toEqual({
      kind: "spawn_failed",
      message: expect.stringContaining("empty"),
    });
  });

  it("tells a missing working directory from a missing program", async () => {
    const s = await setup();
    const gone = join(s.dir, "no-such-dir");
    const exit = await start(s, { agent: "done", cwd: gone }).exited;
    expect(exit.kind).toBe("spawn_failed");
    expect(exit.kind === "spawn_failed" && exit.message).toContain(`working directory ${gone}`);
    expect(exit.kind === "spawn_failed" && exit.message).toContain("done.sh");

    const file = join(s.dir, "a-file");
    await writeFile(file, "");
    const notDir = await start(s, { agent: "done", cwd: file }).exited;
    expect(notDir).toEqual({
      kind: "spawn_failed",
      message: expect.stringContaining(`working directory ${file} is not a directory`),
    });
  });

  it("fails to start when the log file cannot be opened", async () => {
    const s = await setup();
    const blocker = join(s.dir, "blocker");
    await writeFile(blocker, "");
    const exit = await start(s, { agent: "done", logFile: join(blocker, "log") }).exited;
    expect(exit).toEqual({ kind: "spawn_failed", message: expect.stringContaining("cannot open log file") });
    expect(await readIfExists(s.phaseFile)).toBeUndefined();
  });
});

describe("input and output", () => {
  it("delivers the input on stdin and closes it", async () => {
    const s = await setup();
    const copy = join(s.dir, "prompt-copy");
    const input = "# Prompt\n\nline two — with ünïcödé\n".repeat(1000);
    const agent = start(s, { agent: "done", input, env: { ...s.env, PROMPT_COPY: copy } });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    expect(await readFile(copy, "utf8")).toBe(input);
  });

  it("copes with an agent that never reads its input", async () => {
    const s = await setup();
    const agent = start(s, { command: ["bash", "-c", "echo ignoring stdin"], input: "x".repeat(4 * 1024 * 1024) });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    expect(agent.tail()).toBe("ignoring stdin\n");
  });

  it("appends stdout and stderr to one log file in arrival order, creating its directory", async () => {
    const s = await setup();
    const logFile = join(s.dir, "deep", "er", "log");
    await mkdir(join(s.dir, "deep", "er"), { recursive: true });
    await writeFile(logFile, "=== header by the caller ===\n");
    const agent = start(s, {
      logFile,
      command: [
        "bash",
        "-c",
        "echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three; sleep 0.05; printf 'four' >&2",
      ],
    });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    // `exited` resolves only once the log is on disk.
    expect(await readFile(logFile, "utf8")).toBe("=== header by the caller ===\none\ntwo\nthree\nfour");

    const fresh = join(s.dir, "new", "dir", "log");
    expect(await start(s, { agent: "done", logFile: fresh }).exited).toEqual({ kind: "exited", code: 0 });
    const log = await readFile(fresh, "utf8");
    expect(log).toContain("done.sh: starting");
    expect(log).toContain("done.sh: work finished"); // stderr
  });

  it("calls onOutput for every chunk of both streams and tracks the last output time", async () => {
    const s = await setup();
    const chunks: { text: string; stream: string }[] = [];
    const agent = start(s, {
      agent: "fail",
      onOutput: (text, stream) => chunks.push({ text, stream }),
    });
    expect(agent.lastOutputAt).toBe(agent.startedAt);
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    const joined = (stream: string) =>
      chunks
        .filter((c) => c.stream === stream)
        .map((c) => c.text)
        .join("");
    expect(joined("stdout")).toBe("fail.sh: running the tests\nfail.sh: exiting 0\n");
    expect(joined("stderr")).toBe("fail.sh: 3 tests failed\n");
    expect(agent.lastOutputAt).toBeGreaterThanOrEqual(agent.startedAt);
    expect(agent.tail()).toContain("fail.sh: 3 tests failed");
  });

  it("gives onOutput whole characters when a multi-byte character is split across writes", async () => {
    const s = await setup();
    let text = "";
    // "é" is C3 A9: write the two bytes apart.
    const agent = start(s, {
      command: ["bash", "-c", "printf '\\xc3'; sleep 0.1; printf '\\xa9!'"],
      onOutput: (t) => (text += t),
    });
    await agent.exited;
    expect(text).toBe("é!");
  });

  it("keeps a bounded tail of the output", async () => {
    const s = await setup();
    const agent = start(s, {
      tailBytes: 1024,
      command: ["bash", "-c", 'for i in $(seq 1 5000); do echo "line $i"; done'],
    });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    const tail = agent.tail();
    expect(Buffer.byteLength(tail)).toBeLessThanOrEqual(1024);
    expect(Buffer.byteLength(tail)).toBeGreaterThan(1000);
    expect(tail.endsWith("line 5000\n")).toBe(true);
    // The whole output is still in the log.
    expect((await readFile(s.logFile, "utf8")).split("\n")).toHaveLength(5001);
  });

  it("gets exactly the environment it is given", async () => {
    const s = await setup();
    const envCopy = join(s.dir, "env");
    const agent = start(s, {
      agent: "env-dump",
      env: { ...s.env, ENV_COPY: envCopy, RUN_ID: "42", WITH_SPACE: "a b" },
    });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    const lines = (await readFile(envCopy, "utf8")).split("\n");
    expect(lines).toContain("RUN_ID=42");
    expect(lines).toContain("WITH_SPACE=a b");
    expect(lines).toContain(`PATH=${s.env.PATH}`);
    // Nothing of the server's own environment leaks in (bash itself adds PWD, SHLVL and _).
    expect(process.env.HOME).toBeDefined();
    expect(lines.some((line) => line.startsWith("HOME="))).toBe(false);
    expect(lines).toContain(`PWD=${s.dir}`);
  });
});

describe("OutputTail", () => {
  it("never cuts a character in half", () => {
    const tail = new OutputTail(7);
    tail.push(Buffer.from("ééééé")); // 10 bytes: the 7 kept start in the middle of an é
    expect(tail.text()).toBe("ééé");
    const partial = new OutputTail(16);
    partial.push(Buffer.from([0x61, 0xe2, 0x82])); // "a" + the first two bytes of "€"
    expect(partial.text()).toBe("a");
    partial.push(Buffer.from([0xac]));
    expect(partial.text()).toBe("a€");
  });

  it("stays bounded however much is pushed", () => {
    const tail = new OutputTail(100);
    for (let i = 0; i < 10_000; i++) tail.push(Buffer.from(`${i}\n`));
    expect(tail.text()).toHaveLength(100);
    expect(tail.text().endsWith("9999\n")).toBe(true);
    tail.push(Buffer.alloc(1000, "x"));
    expect(tail.text()).toBe("x".repeat(100));
    expect(new OutputTail(0).text()).toBe("");
  });
});

describe("stop", () => {
  it("stops a running agent with SIGTERM and records the reason", async () => {
    const s = await setup();
    const agent = start(s, { agent: "hang", killGraceMs: 5_000 });
    await waitFor("PHASE:working", () => readIfExists(s.phaseFile));
    const t0 = Date.now();
    expect(await agent.stop("idle timeout")).toEqual({ kind: "signaled", signal: "SIGTERM" });
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(agent.stopReason).toBe("idle timeout");
  });

  it("escalates to SIGKILL after killGraceMs when SIGTERM is ignored", async () => {
    const s = await setup();
    const agent = start(s, { agent: "ignore-term", killGraceMs: 300 });
    await waitFor("the trap", () => agent.tail().includes("sleeping"));
    const t0 = Date.now();
    expect(await agent.stop("max_duration")).toEqual({ kind: "signaled", signal: "SIGKILL" });
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(3_000);
    expect(agent.tail()).toContain("SIGTERM ignored");
    expect(await readFile(s.logFile, "utf8")).toContain("SIGTERM ignored");
  });

  it("is idempotent: every call answers the same exit and the first reason stays", async () => {
    const s = await setup();
    const agent = start(s, { agent: "hang" });
    await waitFor("PHASE:working", () => readIfExists(s.phaseFile));
    const first = agent.stop("cancelled");
    const second = agent.stop("timeout");
    expect(second).toBe(first);
    const exit = await first;
    expect(await agent.stop("again")).toEqual(exit);
    expect(await agent.exited).toEqual(exit);
    expect(agent.stopReason).toBe("cancelled");
  });

  it("records no reason when the agent had already exited by itself", async () => {
    const s = await setup();
    const agent = start(s, { agent: "done" });
    const exit = await agent.exited;
    expect(await agent.stop("too late")).toEqual(exit);
    expect(agent.stopReason).toBeUndefined();
  });
});

describe("process group", () => {
  async function startGrandchild(
    s: Setup,
    extraEnv: Record<string, string> = {},
  ): Promise<{ agent: AgentProcess; grandchild: number }> {
    const pidFile = join(s.dir, "grandchild.pid");
    const agent = start(s, { agent: "grandchild", env: { ...s.env, GRANDCHILD_PID_FILE: pidFile, ...extraEnv } });
    const grandchild = Number(await waitFor("the grandchild pid", () => readIfExists(pidFile)));
    grandchildren.push(grandchild);
    return { agent, grandchild };
  }

  it("starts the agent as the leader of its own group", async () => {
    const s = await setup();
    const { agent, grandchild } = await startGrandchild(s);
    const pid = agent.pid as number;
    expect(pid).toBeGreaterThan(1);
    expect(groupAlive(pid)).toBe(true);
    const members = await waitFor("both members", () => {
      const m = liveGroupMembers(pid);
      return m?.includes(grandchild) && m;
    });
    expect(members).toContain(pid);
    expect(members).toContain(grandchild);
    expect(liveGroupMembers(process.pid) ?? []).not.toContain(pid);
  });

  it("kills the grandchild when the agent is stopped", async () => {
    const s = await setup();
    const { agent, grandchild } = await startGrandchild(s);
    expect(processRunning(grandchild)).toBe(true);
    expect(await agent.stop("cancel")).toEqual({ kind: "signaled", signal: "SIGTERM" });
    await waitFor("the grandchild to die", () => !processRunning(grandchild), 2_000);
    expect(groupAlive(agent.pid as number)).toBe(false);
  });

  it("kills the grandchild an agent leaves behind when it exits, without waiting on the pipes it holds", async () => {
    const s = await setup();
    const t0 = Date.now();
    const { agent, grandchild } = await startGrandchild(s, { EXIT_AFTER_SPAWN: "1" });
    expect(await agent.exited).toEqual({ kind: "exited", code: 0 });
    // The sweep closes the pipes the grandchild held; no waiting for the 2 s fallback.
    expect(Date.now() - t0).toBeLessThan(1_500);
    await waitFor("the grandchild to die", () => !processRunning(grandchild), 2_000);
    expect(groupAlive(agent.pid as number)).toBe(false);
    expect(agent.tail()).toContain("exiting, leaving the grandchild");
  });

  it("stopGroup and signalGroup answer for a group that is gone", async () => {
    const s = await setup();
    const agent = start(s, { agent: "no-phase" });
    await agent.exited;
    const pid = agent.pid as number;
    expect(groupAlive(pid)).toBe(false);
    expect(signalGroup(pid, "SIGTERM")).toBe(false);
    expect(await stopGroup(pid, 100)).toBe("gone");
    expect(() => signalGroup(1, "SIGTERM")).toThrow(RangeError);
    expect(() => signalGroup(0, "SIGTERM")).toThrow(RangeError);
  });

  it("processHasEnv recognises the agent by its environment, and nothing else", async () => {
    const s = await setup();
    const mark = `run-${process.pid}-${Date.now()}`;
    const agent = start(s, { agent: "hang", env: { ...s.env, RUN_ID: mark } });
    await waitFor("PHASE:working", () => readIfExists(s.phaseFile));
    const pid = agent.pid as number;
    expect(await processHasEnv(pid, "RUN_ID", mark)).toBe(true);
    expect(await processHasEnv(pid, "RUN_ID", `${mark}0`)).toBe(false);
    expect(await processHasEnv(pid, "RUN_I", mark)).toBe(false);
    expect(await processHasEnv(process.pid, "RUN_ID", mark)).toBe(false);
    expect(await processHasEnv(0, "RUN_ID", mark)).toBe(false);
    await agent.stop("done with it");
    expect(await processHasEnv(pid, "RUN_ID", mark)).toBe(false);
  });
});
