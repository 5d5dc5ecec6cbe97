import { existsSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { inArray } from "drizzle-orm";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { silentLogger } from "../../src/logger.js";
import { WorktreeManager } from "../../src/worktrees/worktree-manager.js";
import { agentPath } from "../helpers/agents/index.js";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { createTestRepo, listWorktrees, type TestRepo } from "../helpers/git.js";
import { testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const TOKEN = "clone-instances-token-0123456789";
const FINAL = ["done", "failed", "crashed", "timed_out", "cancelled", "skipped"];
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A `git` on PATH that logs "start PID ARGS" and "end PID" around every command run with
 * `-C <clone>` (appends of one short line are atomic), so a test can see whether two git
 * commands ever ran in the clone at once, whichever process ran them.
 */
async function gitShim(dir: string, clone: string): Promise<{ env: Record<string, string>; log: string }> {
  const bin = path.join(dir, "shim-bin");
  const log = path.join(dir, "git-commands.log");
  await mkdir(bin, { recursive: true });
  const real = (await execa("sh", ["-c", "command -v git"])).stdout.trim();
  await writeFile(
    path.join(bin, "git"),
    [
      "#!/bin/sh",
      // The server puts its own -c options first: find the directory after -C.
      'dir=""; prev=""; for a in "$@"; do [ "$prev" = "-C" ] && dir="$a"; prev="$a"; done',
      `if [ "$dir" = '${clone}' ]; then`,
      `  echo "start $$ $*" >> '${log}'`,
      `  '${real}' "$@"; rc=$?`,
      `  echo "end $$" >> '${log}'`,
      "  exit $rc",
      "fi",
      `exec '${real}' "$@"`,
      "",
    ].join("\n"),
  );
  await chmod(path.join(bin, "git"), 0o755);
  await writeFile(log, "");
  return { env: { PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` }, log };
}

/** The commands that started while another was still running in the clone. */
async function overlaps(log: string): Promise<string[]> {
  const found: string[] = [];
  let running: string | undefined;
  for (const line of (await readFile(log, "utf8")).split("\n").filter(Boolean)) {
    const [what, pid, ...rest] = line.split(" ");
    if (what === "start") {
      if (running !== undefined)
        found.push(`${rest.join(" ").replace(/^.* -C \S+ /, "")} (pid ${pid}) while pid ${running} ran`);
      running = pid;
    } else if (running === pid) {
      running = undefined;
    }
  }
  return found;
}

// Each manager has its own in-process queue, as separate instances do: only the clone's
// lock file keeps their fetches and worktree adds/removes apart. Runs on every backend.
describe.each(testBackends())("two instances' worktree managers on one clone (%s)", (kind) => {
  let db: TestDatabase;
  let repo: TestRepo;
  let dir: string;

  beforeEach(async () => {
    db = await openTestDatabase(kind);
    repo = await createTestRepo();
    dir = await makeTempDir("fr-clone-managers-");
  });
  afterEach(async () => {
    await db.cleanup();
    await repo.cleanup();
    await removeTempDir(dir);
  });

  it("makes and removes 24 worktrees at once with no git failure", { timeout: 400_000 }, async () => {
    const project: ProjectConfig = {
      name: "demo",
      repoPath: repo.clone,
      primaryBranch: repo.branch,
      forge: "github",
      forgeUrl: "https://api.github.com",
      repo: "acme/demo",
      tokenEnv: undefined,
      token: undefined,
      webhookSecretEnv: undefined,
      webhookSecret: undefined,
      botLogin: undefined,
      escalationIssue: undefined,
    };
    const shim = await gitShim(dir, repo.clone);
    const managers = ["inst-a", "inst-b"].map(
      (instanceId) =>
        new WorktreeManager({
          env: { ...process.env, ...shim.env },
          database: db.database,
          root: path.join(dir, instanceId),
          instanceId,
          log: silentLogger(),
        }),
    );
    const inserted = await db.database.db
      .insert(runs)
      .values(
        Array.from({ length: 24 }, () => ({
          formula: "noop",
          project: "demo",
          triggerKind: "dispatch" as const,
          triggerRef: "test",
          status: "running" as const,
        })),
      )
      .returning({ id: runs.id });
    const head = await repo.head();
    // Origin moves while worktrees are made (one push at a time): fetches bring new objects
    // while the other manager adds and removes worktrees.
    const pushing = (async () => {
      for (let i = 0; i < 4; i++) await repo.push({ [`f${i}.txt`]: `${i}\n` }, `commit ${i}`);
    })();
    const results = await Promise.allSettled(
      inserted.map(async ({ id }, i) => {
        const manager = managers[i % 2] as WorktreeManager;
        const row = await manager.create({ runId: id, project, formula: "noop" });
        await manager.remove(row, "success", project);
        return row.path;
      }),
    );
    await pushing;
    const failures = results.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
    expect(failures).toEqual([]);
    expect(head).not.toBe(await repo.head());
    // Never two git commands in the clone at once, though two managers (queues) used it.
    expect((await readFile(shim.log, "utf8")).match(/^start /gm)?.length).toBeGreaterThanOrEqual(24 * 2);
    expect(await overlaps(shim.log)).toEqual([]);
    expect(await listWorktrees(repo.clone)).toHaveLength(1);
    expect(existsSync(path.join(repo.clone, ".git", "formula-runner.lock"))).toBe(false);
  });
});

// Several processes on one database need PostgreSQL: PGlite has one opener at a time.
if (testBackends().includes("postgres")) {
  describe("three server processes sharing one clone", () => {
    let dir: string;
    let repo: TestRepo;
    let db: TestDatabase;
    let servers: ServerProcess[] = [];

    beforeEach(async () => {
      dir = await makeTempDir("fr-clone-instances-");
      repo = await createTestRepo();
      db = await openTestDatabase("postgres");
      await mkdir(path.join(dir, "formulas"));
      // No agent sandbox: this test is about git in a shared clone, and the noop agent needs none.
      await writeFile(
        path.join(dir, "formulas", "noop.toml"),
        `${testFormula("noop", { guards: { concurrency: "" } })}[sandbox]\nmode = "off"\n`,
      );
      await writeFile(
        path.join(dir, "formula-runner.toml"),
        [
          "[[projects]]",
          'name = "demo"',
          `repo_path = ${JSON.stringify(repo.clone)}`,
          'repo = "acme/demo"',
          "[agents.done]",
          `command = ["bash", ${JSON.stringify(agentPath("done"))}]`,
        ].join("\n"),
      );
    });
    afterEach(async () => {
      for (const server of servers) await server.stop("SIGKILL");
      servers = [];
      await db.cleanup();
      await repo.cleanup();
      await removeTempDir(dir);
    });

    it("finishes 36 runs dispatched round-robin, every one done", { timeout: 480_000 }, async () => {
      const shim = await gitShim(dir, repo.clone);
      const start = (instance: string) =>
        startServerProcess({
          cwd: dir,
          timeoutMs: 150_000,
          env: {
            DATABASE_URL: db.url as string,
            DATA_DIR: path.join(dir, `data-${instance}`),
            INSTANCE_ID: instance,
            API_TOKEN: TOKEN,
            MAX_SESSIONS: "4",
            SHUTDOWN_GRACE: "3s",
            KILL_GRACE: "1s",
            ...shim.env,
          },
        });
      servers = await Promise.all([start("clone-a"), start("clone-b"), start("clone-c")]);

      const ids: number[] = [];
      for (let i = 0; i < 36; i++) {
        const server = servers[i % 3] as ServerProcess;
        const response = await fetch(`${server.url}/api/runs`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ formula: "noop", project: "demo" }),
        });
        expect(response.status).toBe(201);
        ids.push(((await response.json()) as { id: number }).id);
        // Origin moves now and then, so fetches bring new objects while others add worktrees.
        if (i % 9 === 0) await repo.push({ [`f${i}.txt`]: `${i}\n` }, `commit ${i}`);
      }

      const { db: sql } = db.database;
      const deadline = Date.now() + 240_000;
      let rows = await sql.select().from(runs).where(inArray(runs.id, ids));
      while (rows.some((r) => !FINAL.includes(r.status)) && Date.now() < deadline) {
        await sleep(500);
        rows = await sql.select().from(runs).where(inArray(runs.id, ids));
      }
      const notDone = rows.filter((r) => r.status !== "done").map((r) => `${r.id} ${r.status}: ${r.detail}`);
      expect(notDone).toEqual([]);
      expect(rows).toHaveLength(36);
      // Spread over all three: each instance ran some of them.
      const byInstance = new Map<string, number>();
      for (const r of rows) byInstance.set(String(r.instanceId), (byInstance.get(String(r.instanceId)) ?? 0) + 1);
      expect([...byInstance.keys()].sort()).toEqual(["clone-a", "clone-b", "clone-c"]);

      const trees = await sql.select().from(worktrees).where(inArray(worktrees.runId, ids));
      expect(trees.filter((t) => t.state !== "removed")).toEqual([]);
      expect(await listWorktrees(repo.clone)).toHaveLength(1);
      expect((await readdir(path.join(repo.clone, ".git"))).filter((f) => f.includes("formula-runner"))).toEqual([]);
      // Three processes, one clone: never two git commands in it at once.
      expect(await overlaps(shim.log)).toEqual([]);

      // Every instance serves every run's log from the database, plain and followed.
      const headers = { authorization: `Bearer ${TOKEN}` };
      for (const run of rows.slice(0, 3)) {
        for (const server of servers) {
          const plain = await fetch(`${server.url}/api/runs/${run.id}/log`, { headers });
          expect(plain.status).toBe(200);
          const text = await plain.text();
          expect(text).toContain("done.sh: work finished");
          expect(text).toMatch(/=== formula-runner: session 1 ended: exit code 0; phase done ===/);
        }
        // Followed on an instance that did not run it.
        const owner = ["clone-a", "clone-b", "clone-c"].indexOf(String(run.instanceId));
        const other = servers[(owner + 1) % 3] as ServerProcess;
        const followed = await (await fetch(`${other.url}/api/runs/${run.id}/log?follow=1`, { headers })).text();
        expect(followed).toContain("data: done.sh: work finished");
        expect(followed).toContain('event: end\ndata: {"status":"done"}');
      }
    });
  });
}
