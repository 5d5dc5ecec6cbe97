import { existsSync } from "node:fs";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Database } from "../../db/client.js";
import { runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { silentLogger } from "../../src/logger.js";
import { WorktreeManager } from "../../src/worktrees/worktree-manager.js";
import { oneBackend, openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { createTestRepo, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

const cut = () => Object.assign(new Error("write CONNECTION_CLOSED 127.0.0.1:5432"), { code: "CONNECTION_CLOSED" });

/**
 * Wraps a drizzle query builder so that awaiting it fails once as a cut connection does:
 * `commit` says whether the statement ran first (its answer lost) or never reached the server.
 */
function cutOnce<T extends object>(builder: T, commit: boolean, fired: { done: boolean }): T {
  return new Proxy(builder, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop === "then" && typeof value === "function" && !fired.done) {
        fired.done = true;
        return (_resolve: (v: unknown) => void, reject: (e: unknown) => void) => {
          if (!commit) return reject(cut());
          return (value as PromiseLike<unknown>["then"]).call(target, () => reject(cut()), reject);
        };
      }
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args);
        return result !== null && typeof result === "object" ? cutOnce(result, commit, fired) : result;
      };
    },
  });
}

/** The database, with the first INSERT into worktrees cut. */
function cuttingWorktreeInserts(database: Database, commit: boolean): Database {
  const fired = { done: false };
  const db = new Proxy(database.db, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop !== "insert") return typeof value === "function" ? value.bind(target) : value;
      return (table: unknown) => {
        const builder = (value as (t: unknown) => object).call(target, table);
        return table === worktrees ? cutOnce(builder, commit, fired) : builder;
      };
    },
  });
  return { ...database, db } as Database;
}

describe.each(oneBackend())("recording a new worktree while the database is cut, on %s", (kind) => {
  let t: TestDatabase;
  let repo: TestRepo;
  let project: ProjectConfig;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    repo = await createTestRepo();
    project = {
      name: "demo",
      repoPath: repo.clone,
      primaryBranch: repo.branch,
      forge: "github",
      forgeUrl: "https://api.github.com",
      repo: "owner/demo",
      tokenEnv: undefined,
      token: undefined,
      webhookSecretEnv: undefined,
      webhookSecret: undefined,
      botLogin: undefined,
      escalationIssue: undefined,
    };
  });
  afterAll(async () => {
    await t.cleanup();
    await repo.cleanup();
    await cleanupTempDirs();
  });

  it.each([
    ["before the insert reached the server", false],
    ["after it committed, with the answer lost", true],
  ])("keeps the worktree and records it once when the connection is cut %s", async (_when, commit) => {
    const [run] = await t.database.db
      .insert(runs)
      .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "test", status: "running" })
      .returning({ id: runs.id });
    const runId = (run as { id: number }).id;
    const manager = new WorktreeManager({
      env: process.env,
      database: cuttingWorktreeInserts(t.database, commit),
      root: await makeTempDir("fr-wt-record-"),
      instanceId: "inst-a",
      log: silentLogger(),
    });
    const row = await manager.create({ runId, project, formula: "dev" });
    expect(row).toMatchObject({ runId, state: "active" });
    expect(existsSync(row.path)).toBe(true);
    const stored = await t.database.db.select().from(worktrees).where(eq(worktrees.runId, runId));
    expect(stored.map((w) => [w.id, w.state])).toEqual([[row.id, "active"]]);
  });
});
