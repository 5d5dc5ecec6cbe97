import { randomBytes } from "node:crypto";
import { access, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { groupAlive, processRunning } from "../../src/sessions/process-group.js";
import { agentPath } from "../helpers/agents/index.js";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { createTestRepo, listWorktrees, type TestRepo } from "../helpers/git.js";
import { testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const TOKEN = "restart-test-token-0123456789";

const eventually = async <T>(probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe.each(testBackends())("restart after kill -9 (real server processes, %s)", (backend) => {
  let dir: string;
  let repo: TestRepo;
  let db: TestDatabase | undefined;
  let servers: ServerProcess[] = [];
  const grandchildFile = path.join(os.tmpdir(), `fr-restart-gc-${randomBytes(4).toString("hex")}`);

  beforeEach(async () => {
    dir = await makeTempDir("fr-restart-");
    repo = await createTestRepo();
    await mkdir(path.join(dir, "formulas"));
    await writeFile(
      path.join(dir, "formulas", "slow.toml"),
      // Unsandboxed: this follows the agent's process group and its grandchild (by host pid)
      // across a kill -9 of the server; containment.test.ts covers the sandboxed tree.
      testFormula("slow", {
        agent: "hang-once",
        timeout: "60s",
        env: { GRANDCHILD_PID_FILE: grandchildFile },
        sandbox: { mode: "off" },
      }),
    );
    await writeFile(path.join(dir, "formulas", "quick.toml"), testFormula("quick"));
    await writeFile(
      path.join(dir, "formula-runner.toml"),
      [
        "[[projects]]",
        'name = "demo"',
        `repo_path = ${JSON.stringify(repo.clone)}`,
        'repo = "acme/demo"',
        "[agents.hang-once]",
        `command = ["bash", ${JSON.stringify(agentPath("hang-once"))}]`,
        "[agents.done]",
        `command = ["bash", ${JSON.stringify(agentPath("done"))}]`,
      ].join("\n"),
    );
    if (backend === "postgres") db = await openTestDatabase("postgres");
  });
  afterEach(async () => {
    for (const s of servers) await s.stop("SIGKILL");
    servers = [];
    await db?.cleanup();
    db = undefined;
    await repo.cleanup();
    await removeTempDir(dir);
    await rm(grandchildFile, { force: true });
  });

  const start = async (extra: Record<string, string> = {}) => {
    const server = await startServerProcess({
      cwd: dir,
      env: {
        ...extra,
        API_TOKEN: TOKEN,
        MAX_SESSIONS: "1",
        KILL_GRACE: "1s",
        ...(db?.url ? { DATABASE_URL: db.url } : {}),
      },
    });
    servers.push(server);
    const api = async (method: string, route: string, body?: unknown) => {
      const res = await fetch(`${server.url}${route}`, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return (await res.json()) as any;
    };
    return { server, api };
  };

  it("takes over the run it left running: stops the orphaned agent group, recovers it, and runs the queued one", async () => {
    const first = await start();
    const slow = await first.api("POST", "/api/runs", { formula: "slow" });
    const quick = await first.api("POST", "/api/runs", { formula: "quick" });
    const running = await eventually(async () => {
      const run = await first.api("GET", `/api/runs/${slow.id}`);
      return run.phase === "working" ? run : undefined;
    });
    const agentPid = running.sessions[0].pid as number;
    const grandchild = Number((await readFile(grandchildFile, "utf8")).trim());
    expect((await first.api("GET", `/api/runs/${quick.id}`)).status).toBe("queued");

    expect(await first.server.stop("SIGKILL")).toEqual({ code: null, signal: "SIGKILL" });
    // The agent lives in its own process group: the kill of the server does not reach it.
    expect(groupAlive(agentPid)).toBe(true);

    const second = await start();
    const recovered = await eventually(async () => {
      const run = await second.api("GET", `/api/runs/${slow.id}`);
      return run.status === "done" ? run : undefined;
    });
    expect(groupAlive(agentPid)).toBe(false);
    expect(processRunning(grandchild)).toBe(false);
    expect(recovered.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "interrupted"],
      ["recovery", "done"],
    ]);
    expect(recovered.worktree).toMatchObject({ state: "removed", removed_by: "success" });
    const prompt = await readFile(path.join(dir, ".formula-runner", "runs", String(slow.id), "prompt.md"), "utf8");
    expect(prompt).toContain("## Recovery");
    expect(prompt).toContain("Last phase it wrote: working.");

    const quickRun = await eventually(async () => {
      const run = await second.api("GET", `/api/runs/${quick.id}`);
      return run.status === "done" ? run : undefined;
    });
    expect(quickRun.attempt).toBe(1);
    expect(await listWorktrees(repo.clone)).toEqual([repo.clone]);
    await access(path.join(dir, ".formula-runner", "instance-id"));
    expect(second.server.lines.some((l) => l.includes("taking over a run left running by this instance"))).toBe(true);
    // Two real server starts (each opens the embedded database from disk) on a loaded host.
  }, 150_000);

  it("on SIGTERM waits for the grace period, stops the session, and the next start finishes the run", async () => {
    const first = await start({ SHUTDOWN_GRACE: "3s" });
    const slow = await first.api("POST", "/api/runs", { formula: "slow" });
    await eventually(async () =>
      (await first.api("GET", `/api/runs/${slow.id}`)).phase === "working" ? true : undefined,
    );
    const started = Date.now();
    expect(await first.server.stop("SIGTERM")).toEqual({ code: 0, signal: null });
    // The agent does not end by itself: the server waited the whole grace, then stopped it.
    expect(Date.now() - started).toBeGreaterThanOrEqual(3_000);
    expect(first.server.lines.some((l) => l.includes("shutdown grace over: stopping the sessions still running"))).toBe(
      true,
    );
    const second = await start();
    const done = await eventually(async () => {
      const run = await second.api("GET", `/api/runs/${slow.id}`);
      return run.status === "done" ? run : undefined;
    });
    expect(done.sessions.map((s: { outcome: string }) => s.outcome)).toEqual(["interrupted", "done"]);
  }, 150_000);
});
