import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instances } from "../../db/schema/index.js";
import { groupAlive } from "../../src/sessions/process-group.js";
import { agentPath } from "../helpers/agents/index.js";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { createTestRepo, type TestRepo } from "../helpers/git.js";
import { testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const TOKEN = "fleet-test-token-0123456789";

const eventually = async <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not in time`);
    await new Promise((r) => setTimeout(r, 200));
  }
};

const api = async (server: ServerProcess, method: string, route: string, body?: unknown) => {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text.startsWith("{") ? JSON.parse(text) : text) as any };
};

// Several processes on one database need PostgreSQL: PGlite has one opener at a time.
if (testBackends().includes("postgres")) {
  /**
   * One fleet for the whole file: instance `victim` takes a run that hangs mid-session
   * and a run that waits for an answer, then is killed with SIGKILL and never restarted;
   * `keeper-a` and `keeper-b` share its database and must carry on without it.
   */
  describe("a fleet of three instances on one PostgreSQL (real processes)", () => {
    let dir: string;
    let repo: TestRepo;
    let db: TestDatabase;
    const servers: ServerProcess[] = [];
    let keepers: ServerProcess[] = [];
    let hanging: { id: number; pid: number };
    let escalated: { id: number };
    let killedAt = 0;
    /** The keeper that runs as `id`, and the other one. */
    const keeper = (id: string) => keepers[["keeper-a", "keeper-b"].indexOf(id)] as ServerProcess;
    const otherThan = (id: string) => keepers[id === "keeper-a" ? 1 : 0] as ServerProcess;

    const start = async (instance: string) => {
      const server = await startServerProcess({
        cwd: dir,
        timeoutMs: 150_000,
        env: {
          DATABASE_URL: db.url as string,
          DATA_DIR: path.join(dir, `data-${instance}`),
          INSTANCE_ID: instance,
          API_TOKEN: TOKEN,
          MAX_SESSIONS: "4",
          SHUTDOWN_GRACE: "2s",
          KILL_GRACE: "1s",
          // Small enough for a test: heartbeats and looks every second.
          INSTANCE_DEAD_AFTER: "4s",
        },
      });
      servers.push(server);
      return server;
    };

    beforeAll(async () => {
      dir = await makeTempDir("fr-fleet-");
      repo = await createTestRepo();
      db = await openTestDatabase("postgres");
      await mkdir(path.join(dir, "formulas"));
      // Unsandboxed: the takeover stops the dead instance's agent by its host pid (same host here).
      const formula = (name: string, fields: Record<string, unknown>) =>
        writeFile(
          path.join(dir, "formulas", `${name}.toml`),
          testFormula(name, { timeout: "120s", max_duration: "300s", sandbox: { mode: "off" }, ...fields }),
        );
      await formula("slow", { agent: "hang-once", env: { HANG_ONCE_MARKER: path.join(dir, "hang-once-marker") } });
      await formula("ask", { agent: "escalate", env: { PROMPT_COPY: path.join(dir, "ask-prompt.md") } });
      await formula("hang", { agent: "hang", guards: { concurrency: "" } });
      await formula("red", { agent: "fail", preserve_on: ["failed"], guards: { concurrency: "" } });
      await writeFile(
        path.join(dir, "formula-runner.toml"),
        [
          "[[projects]]",
          'name = "demo"',
          `repo_path = ${JSON.stringify(repo.clone)}`,
          'repo = "acme/demo"',
          ...["hang-once", "escalate", "hang", "fail"].map(
            (agent) => `[agents.${agent}]\ncommand = ["bash", ${JSON.stringify(agentPath(agent as never))}]`,
          ),
        ].join("\n"),
      );

      // The victim alone first, so both runs are its own.
      const victim = await start("victim");
      const slow = await api(victim, "POST", "/api/runs", { formula: "slow" });
      const ask = await api(victim, "POST", "/api/runs", { formula: "ask" });
      const working = await eventually("slow run working", async () => {
        const run = (await api(victim, "GET", `/api/runs/${slow.body.id}`)).body;
        return run.phase === "working" ? run : undefined;
      });
      hanging = { id: slow.body.id, pid: working.sessions[0].pid };
      await eventually("ask run escalated", async () => {
        const run = (await api(victim, "GET", `/api/runs/${ask.body.id}`)).body;
        return run.status === "escalated" ? run : undefined;
      });
      escalated = { id: ask.body.id };

      keepers = await Promise.all([start("keeper-a"), start("keeper-b")]);
      expect(await victim.stop("SIGKILL")).toEqual({ code: null, signal: "SIGKILL" });
      killedAt = Date.now();
    }, 300_000);

    afterAll(async () => {
      for (const server of servers) await server.stop("SIGKILL");
      // Nothing of the victim's agent may outlive the test, whatever happened above.
      if (hanging && groupAlive(hanging.pid)) process.kill(-hanging.pid, "SIGKILL");
      await db?.cleanup();
      await repo?.cleanup();
      if (dir) await removeTempDir(dir);
    });

    it("declares the killed instance dead exactly once and finishes its running run elsewhere", async () => {
      const [a] = keepers as [ServerProcess, ServerProcess];
      const done = await eventually(
        "slow run done",
        async () => {
          const run = (await api(a, "GET", `/api/runs/${hanging.id}`)).body;
          return run.status === "done" ? run : undefined;
        },
        120_000,
      );
      const takeoverSeconds = (Date.now() - killedAt) / 1000;
      expect(["keeper-a", "keeper-b"]).toContain(done.instance_id);
      expect(done.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
        ["initial", "interrupted"],
        ["recovery", "done"],
      ]);
      expect(done.sessions[0].detail).toBe("instance victim stopped during this session and was declared dead");
      // The agent it left on this host was stopped by the takeover (its pid still named the run).
      expect(groupAlive(hanging.pid)).toBe(false);

      const [row] = await db.database.db.select().from(instances).where(eq(instances.id, "victim"));
      expect(row).toMatchObject({ state: "dead", deadBy: done.instance_id });
      const declarations = keepers.flatMap((k) => k.lines.filter((l) => l.includes("declared instance victim dead")));
      expect(declarations).toHaveLength(1);

      const log = (await api(a, "GET", `/api/runs/${hanging.id}/log`)).body as string;
      expect(log).toContain(
        `instance victim, which held this run, was declared dead; instance ${done.instance_id} takes the run over in a fresh worktree`,
      );
      expect(log).toContain("hang-once.sh: recovery session");
      const metrics = (await api(keeper(done.instance_id), "GET", "/metrics")).body as string;
      expect(metrics).toContain("formula_runner_instances_declared_dead_total 1");
      process.stdout.write(
        `fleet: run ${hanging.id} done on another instance ${takeoverSeconds.toFixed(1)} s after kill -9\n`,
      );
    }, 150_000);

    it("resumes the dead instance's escalated run on the instance that took it over, in a fresh worktree", async () => {
      const [a, b] = keepers as [ServerProcess, ServerProcess];
      const moved = await eventually("escalated run moved", async () => {
        const run = (await api(b, "GET", `/api/runs/${escalated.id}`)).body;
        return run.instance_id !== "victim" ? run : undefined;
      });
      expect(moved.status).toBe("escalated");
      expect(moved.worktree).toMatchObject({ state: "removed", removed_by: "takeover" });
      const reply = await api(a, "POST", `/api/runs/${escalated.id}/reply`, { body: "Yes, drop it." });
      expect(reply.status).toBe(202);
      const done = await eventually("answered run done", async () => {
        const run = (await api(a, "GET", `/api/runs/${escalated.id}`)).body;
        return run.status === "done" ? run : undefined;
      });
      expect(done.instance_id).toBe(moved.instance_id);
      expect(done.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
        ["initial", "escalated"],
        ["resume", "done"],
      ]);
      const prompt = await readFile(path.join(dir, "ask-prompt.md"), "utf8");
      expect(prompt).toContain("## Taken over from another server instance");
      expect(prompt).toContain("Yes, drop it.");
      const log = (await api(b, "GET", `/api/runs/${escalated.id}/log`)).body as string;
      expect(log).toContain("instance victim, which held this run, was declared dead");
    }, 150_000);

    it("carries out a cancel and a worktree delete sent to an instance that does not own them", async () => {
      const hang = await api(keepers[0] as ServerProcess, "POST", "/api/runs", { formula: "hang" });
      const red = await api(keepers[0] as ServerProcess, "POST", "/api/runs", { formula: "red" });
      const running = await eventually("hang run working", async () => {
        const run = (await api(keepers[0] as ServerProcess, "GET", `/api/runs/${hang.body.id}`)).body;
        return run.phase === "working" ? run : undefined;
      });
      const notOwner = otherThan(running.instance_id);

      const cancel = await api(notOwner, "POST", `/api/runs/${hang.body.id}/cancel`);
      expect(cancel.status).toBe(202);
      expect(cancel.body).toMatchObject({
        status: "running",
        cancel_requested: true,
        follow: `/api/runs/${hang.body.id}`,
      });
      const cancelled = await eventually("cancelled", async () => {
        const run = (await api(notOwner, "GET", `/api/runs/${hang.body.id}`)).body;
        return run.status === "cancelled" ? run : undefined;
      });
      expect(cancelled.sessions[0].pid).toBeGreaterThan(0);
      expect(groupAlive(cancelled.sessions[0].pid)).toBe(false);
      const request = await eventually("cancel request done", async () => {
        const r = (await api(notOwner, "GET", `/api/requests/${cancel.body.request_id}`)).body.request;
        return r.state === "pending" ? undefined : r;
      });
      expect(request).toMatchObject({ kind: "cancel_run", instance_id: running.instance_id, state: "done" });

      const failed = await eventually("red run failed", async () => {
        const run = (await api(notOwner, "GET", `/api/runs/${red.body.id}`)).body;
        return run.status === "failed" ? run : undefined;
      });
      expect(failed.worktree.state).toBe("preserved");
      const holder = otherThan(failed.instance_id);
      const deleted = await api(holder, "DELETE", `/api/worktrees/${failed.worktree.id}`);
      expect(deleted.status).toBe(202);
      expect(deleted.body).toMatchObject({ follow: `/api/worktrees/${failed.worktree.id}` });
      const removed = await eventually("worktree removed", async () => {
        const { worktree } = (await api(holder, "GET", `/api/worktrees/${failed.worktree.id}`)).body;
        return worktree.state === "removed" ? worktree : undefined;
      });
      expect(removed).toMatchObject({ removed_by: "api", instance_id: failed.instance_id });
      expect(existsSync(failed.worktree.path)).toBe(false);
      const deleteRequest = (await api(holder, "GET", `/api/requests/${deleted.body.request_id}`)).body.request;
      expect(deleteRequest).toMatchObject({ kind: "delete_worktree", state: "done" });
    }, 150_000);
  });
}
