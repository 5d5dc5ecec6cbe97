import { existsSync } from "node:fs";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { silentLogger } from "../../src/logger.js";
import { WorktreeManager } from "../../src/worktrees/worktree-manager.js";
import { oneBackend, openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { cutFirstWrite } from "../helpers/db-faults.js";
import { createTestRepo, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

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
      database: cutFirstWrite(t.database, { method: "insert", table: worktrees, commit }),
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
