import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { eq, sql } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type RunStatus, runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { AppError } from "../../src/errors.js";
import { silentLogger } from "../../src/logger.js";
import { WorktreeError, WorktreeManager, type WorktreeRow } from "../../src/worktrees/worktree-manager.js";
import { oneBackend, openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { createTestRepo, listWorktrees, runGit, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const HOUR = 3_600_000;
const T0 = new Date("2026-11-25T08:00:00.000Z");

function projectFor(repo: TestRepo, overrides: Partial<ProjectConfig> = {}): ProjectConfig {
  return {
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
    ...overrides,
  };
}

/** Real paths of the clone's linked worktrees (the main one left out). */
async function linked(repo: TestRepo): Promise<string[]> {
  const all = await listWorktrees(repo.clone);
  return all.slice(1);
}

describe.each(oneBackend())("worktrees on %s", (kind) => {
  let t: TestDatabase;
  let repo: TestRepo;
  let root: string;
  let project: ProjectConfig;
  let clock: Date;
  let manager: WorktreeManager;

  const newManager = (instanceId = "inst-a") =>
    new WorktreeManager({
      env: process.env,
      database: t.database,
      root,
      instanceId,
      log: silentLogger(),
      now: () => clock,
    });

  async function insertRun(status: RunStatus = "running", formula = "dev", projectName = "demo"): Promise<number> {
    const [run] = await t.database.db
      .insert(runs)
      .values({ formula, project: projectName, triggerKind: "dispatch", triggerRef: "test", status })
      .returning({ id: runs.id });
    return (run as { id: number }).id;
  }

  async function setRunStatus(id: number, status: RunStatus): Promise<void> {
    await t.database.db.update(runs).set({ status }).where(eq(runs.id, id));
  }

  /** A real worktree for a new run, preserved at the current clock time. */
  async function preserved(retentionMs = HOUR, runStatus: RunStatus = "crashed"): Promise<WorktreeRow> {
    const runId = await insertRun("running");
    const row = await manager.create({ runId, project, formula: "dev" });
    await setRunStatus(runId, runStatus);
    return manager.preserve(row, runStatus, retentionMs);
  }

  async function rowsOfRun(runId: number) {
    return t.database.db.select().from(worktrees).where(eq(worktrees.runId, runId));
  }

  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(async () => {
    await t.cleanup();
  });
  beforeEach(async () => {
    await t.database.db.delete(worktrees);
    await t.database.db.delete(runs);
    repo = await createTestRepo();
    root = join(await makeTempDir("fr-wt-root-"), "worktrees");
    project = projectFor(repo);
    clock = T0;
    manager = newManager();
  });
  afterEach(async () => {
    await repo.cleanup();
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  describe("create", () => {
    it("makes a detached worktree at origin's freshly fetched head and records it active", async () => {
      const before = await runGit(repo.clone, "rev-parse", "HEAD");
      const pushed = await repo.push({ "NEW.md": "fresh\n" }, "a commit the clone has not fetched");
      expect(pushed).not.toBe(before);
      const runId = await insertRun();

      const row = await manager.create({ runId, project, formula: "dev" });

      const dir = join(root, "demo", `dev-${runId}`);
      expect(row).toMatchObject({
        runId,
        project: "demo",
        formula: "dev",
        path: dir,
        state: "active",
        instanceId: "inst-a",
        reason: null,
        preservedAt: null,
        expiresAt: null,
        removedAt: null,
      });
      expect(row.createdAt.toISOString()).toBe(T0.toISOString());
      expect(await runGit(dir, "rev-parse", "HEAD")).toBe(pushed);
      expect(await runGit(dir, "rev-parse", "--abbrev-ref", "HEAD")).toBe("HEAD"); // detached
      expect(await readFile(join(dir, "NEW.md"), "utf8")).toBe("fresh\n");
      // The shared clone's checkout is untouched: the run works only in its own worktree.
      expect(await runGit(repo.clone, "rev-parse", "HEAD")).toBe(before);
      expect(await linked(repo)).toEqual([dir]);
      expect(await manager.get(row.id)).toEqual(row);
    });

    it("gives a later call a later commit: a fetch is only shared with calls that arrived before it started", async () => {
      const first = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      const pushed = await repo.push({ "second.txt": "2\n" }, "second");
      const second = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      expect(await runGit(first.path, "rev-parse", "HEAD")).not.toBe(pushed);
      expect(await runGit(second.path, "rev-parse", "HEAD")).toBe(pushed);
    });

    it("serves 5 concurrent runs of one project (and another project alongside) without git lock collisions", async () => {
      const other = await createTestRepo();
      try {
        const otherProject = projectFor(other, { name: "other", repo: "owner/other" });
        const head = await repo.push({ "burst.txt": "x\n" }, "before the burst");
        const ids = await Promise.all(Array.from({ length: 5 }, () => insertRun()));
        const otherIds = await Promise.all(Array.from({ length: 3 }, () => insertRun("running", "dev", "other")));
        const rows = await Promise.all([
          ...ids.map((runId) => manager.create({ runId, project, formula: "dev" })),
          ...otherIds.map((runId) => manager.create({ runId, project: otherProject, formula: "dev" })),
        ]);
        expect(new Set(rows.map((r) => r.path)).size).toBe(8);
        for (const row of rows.slice(0, 5)) expect(await runGit(row.path, "rev-parse", "HEAD")).toBe(head);
        expect((await linked(repo)).sort()).toEqual(
          rows
            .slice(0, 5)
            .map((r) => r.path)
            .sort(),
        );
        expect(await linked(other)).toHaveLength(3);
      } finally {
        await other.cleanup();
      }
    });

    it("is not fooled by GIT_DIR inherited from the environment", async () => {
      const decoy = await createTestRepo();
      const saved = process.env.GIT_DIR;
      process.env.GIT_DIR = join(decoy.clone, ".git");
      try {
        const row = await manager.create({ runId: await insertRun(), project, formula: "dev" });
        expect(await linked(repo)).toEqual([row.path]);
        expect(await linked(decoy)).toEqual([]);
      } finally {
        if (saved === undefined) delete process.env.GIT_DIR;
        else process.env.GIT_DIR = saved;
        await decoy.cleanup();
      }
    });

    const failures: [string, (runId: number) => Promise<ProjectConfig>, RegExp][] = [
      [
        "repo_path does not exist",
        async () => projectFor(repo, { repoPath: join(repo.root, "no-such-clone") }),
        /cannot change to/,
      ],
      [
        "repo_path is a plain directory inside another repository",
        async () => {
          await mkdir(join(repo.clone, "subdir"));
          return projectFor(repo, { repoPath: join(repo.clone, "subdir") });
        },
        /not a git repository/,
      ],
      [
        "the remote is unreachable",
        async () => {
          await runGit(repo.clone, "remote", "set-url", "origin", join(repo.root, "gone.git"));
          return project;
        },
        /does not appear to be a git repository/,
      ],
      [
        "the primary branch does not exist",
        async () => projectFor(repo, { primaryBranch: "no-such-branch" }),
        /couldn't find remote ref/,
      ],
      [
        "the path is a missing but locked worktree",
        async (runId) => {
          const dir = join(root, "demo", `dev-${runId}`);
          await runGit(repo.clone, "worktree", "add", "--quiet", "--lock", "--detach", dir, "origin/main");
          await rm(dir, { recursive: true });
          return project;
        },
        /missing but locked worktree/,
      ],
    ];

    it.each(failures)("fails with git's message and leaves nothing behind when %s", async (_, arrange, message) => {
      const runId = await insertRun();
      const broken = await arrange(runId);
      const registered = await listWorktrees(repo.clone);
      const error = await manager.create({ runId, project: broken, formula: "dev" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(WorktreeError);
      expect((error as WorktreeError).gitMessage).toMatch(message);
      expect((error as WorktreeError).message).toMatch(message);
      expect((error as WorktreeError).message).toContain(`run ${runId}`);
      expect(existsSync(join(root, "demo", `dev-${runId}`))).toBe(false);
      expect(await rowsOfRun(runId)).toEqual([]);
      expect(await listWorktrees(repo.clone)).toEqual(registered);
    });

    it("refuses a path that already exists and leaves what is there untouched", async () => {
      const runId = await insertRun();
      const dir = join(root, "demo", `dev-${runId}`);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, "keep.txt"), "someone else's\n");
      const error = await manager.create({ runId, project, formula: "dev" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(WorktreeError);
      expect((error as WorktreeError).gitMessage).toMatch(/already exists/);
      expect(await readFile(join(dir, "keep.txt"), "utf8")).toBe("someone else's\n");
      expect(await rowsOfRun(runId)).toEqual([]);
      expect(await linked(repo)).toEqual([]);
    });

    it("refuses names that would leave the project directory", async () => {
      const runId = await insertRun();
      await expect(manager.create({ runId, project, formula: "../escape" })).rejects.toThrow(WorktreeError);
      await expect(manager.create({ runId, project: { ...project, name: ".." }, formula: "dev" })).rejects.toThrow(
        /cannot be a directory name/,
      );
      expect(await rowsOfRun(runId)).toEqual([]);
      expect(await linked(repo)).toEqual([]);
    });

    it("refuses a project directory that is a symlink out of the root", async () => {
      const outside = await makeTempDir("fr-outside-");
      await mkdir(root, { recursive: true });
      await symlink(outside, join(root, "demo"));
      const runId = await insertRun();
      await expect(manager.create({ runId, project, formula: "dev" })).rejects.toThrow(/leads outside WORKTREE_ROOT/);
      expect(await linked(repo)).toEqual([]);
      expect(await rowsOfRun(runId)).toEqual([]);
    });
  });

  describe("remove", () => {
    it("deletes the directory, prunes the clone and records who removed it; again is a no-op", async () => {
      const row = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      clock = new Date(T0.getTime() + 5 * 60_000);
      const removed = await manager.remove(row, "success", project);
      expect(removed).toMatchObject({ id: row.id, state: "removed", removedBy: "success" });
      expect(removed.removedAt?.toISOString()).toBe(clock.toISOString());
      expect(existsSync(row.path)).toBe(false);
      expect(await linked(repo)).toEqual([]);
      expect(await manager.remove(row, "api", project)).toEqual(removed);
    });

    it("never runs git in a clone named by the worktree's .git file: without a project nothing is pruned", async () => {
      const row = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      await manager.remove(row, "api");
      expect(existsSync(row.path)).toBe(false);
      expect(await linked(repo)).toEqual([row.path]); // stale until the project's clone is pruned
      await manager.remove(await manager.create({ runId: await insertRun(), project, formula: "dev" }), "api", project);
      expect(await linked(repo)).toEqual([]);
    });

    it("refuses another instance's worktree and an unknown id", async () => {
      const row = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      const error = await newManager("inst-b")
        .remove(row, "api", project)
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AppError);
      expect((error as AppError).code).toBe("conflict");
      expect((error as AppError).message).toContain("inst-a");
      expect(existsSync(row.path)).toBe(true);
      await expect(manager.remove({ ...row, id: row.id + 1000 }, "api")).rejects.toMatchObject({ code: "not_found" });
    });
  });

  describe("preserve", () => {
    it("keeps the worktree with a reason, an expiry and its size measured once", async () => {
      const row = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      await writeFile(join(row.path, "big.bin"), Buffer.alloc(200_000, 1));
      const kept = await manager.preserve(row, "crashed", 24 * HOUR);
      expect(kept).toMatchObject({ state: "preserved", reason: "crashed" });
      expect(kept.preservedAt?.toISOString()).toBe(T0.toISOString());
      expect(kept.expiresAt?.toISOString()).toBe(new Date(T0.getTime() + 24 * HOUR).toISOString());
      expect(kept.sizeBytes).toBeGreaterThanOrEqual(200_000);
      expect(kept.sizeBytes).toBeLessThan(5_000_000);
      expect(existsSync(row.path)).toBe(true);

      await manager.remove(kept, "api", project);
      await expect(manager.preserve(kept, "crashed", HOUR)).rejects.toMatchObject({ code: "conflict" });
    });
  });

  describe("purge", () => {
    it("selects by expiry, by age or by id, deletes, prunes once and records removal", async () => {
      const shortLived = await preserved(HOUR);
      const longLived = await preserved(72 * HOUR);
      const byId = await preserved(72 * HOUR);

      clock = new Date(T0.getTime() + 2 * HOUR);
      const expired = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(expired.purged.map((p) => p.id)).toEqual([shortLived.id]);
      expect(expired.purged[0]).toMatchObject({
        run_id: shortLived.runId,
        project: "demo",
        formula: "dev",
        path: shortLived.path,
      });
      expect(expired.purged[0]?.reason).toMatch(/^expired at /);
      expect(expired.kept).toEqual([]);
      expect(existsSync(shortLived.path)).toBe(false);
      expect((await linked(repo)).sort()).toEqual([longLived.path, byId.path].sort());
      expect(await manager.get(shortLived.id)).toMatchObject({
        state: "removed",
        removedBy: "housekeeping",
        removedAt: clock,
      });

      // Preserved 2 h ago: the API default (24 h) leaves it.
      expect(await manager.purge({ by: "api", projects: [project] })).toEqual({ purged: [], kept: [] });
      expect(await manager.purge({ olderThanMs: HOUR, by: "api", projects: [project], dryRun: true })).toMatchObject({
        purged: [{ id: longLived.id }, { id: byId.id }],
      });

      const explicit = await manager.purge({ ids: [byId.id], by: "api", projects: [project] });
      expect(explicit.purged.map((p) => [p.id, p.reason])).toEqual([[byId.id, "requested"]]);
      expect(await linked(repo)).toEqual([longLived.path]);

      clock = new Date(T0.getTime() + 25 * HOUR);
      const old = await manager.purge({ by: "api", projects: [project] });
      expect(old.purged.map((p) => [p.id, p.reason])).toEqual([[longLived.id, "preserved more than 1d ago"]]);
      expect(await linked(repo)).toEqual([]);
      expect(await manager.list({ state: "preserved" })).toEqual([]);
    });

    it("dry run reports what would go and touches nothing", async () => {
      const row = await preserved(HOUR);
      clock = new Date(T0.getTime() + 2 * HOUR);
      const report = await manager.purge({ expiredOnly: true, dryRun: true, by: "api", projects: [project] });
      expect(report.purged.map((p) => p.id)).toEqual([row.id]);
      expect(report.purged[0]).toMatchObject({
        preserved_at: T0.toISOString(),
        expires_at: new Date(T0.getTime() + HOUR).toISOString(),
      });
      expect(existsSync(row.path)).toBe(true);
      expect(await linked(repo)).toEqual([row.path]);
      expect(await manager.get(row.id)).toMatchObject({ state: "preserved" });
    });

    it("treats nothing to purge as a success", async () => {
      expect(await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] })).toEqual({
        purged: [],
        kept: [],
      });
      expect(await manager.purge({ ids: [], by: "api", projects: [] })).toEqual({ purged: [], kept: [] });
    });

    it.each(["running", "escalated", "queued"] as const)("keeps a worktree whose run is %s", async (status) => {
      const row = await preserved(HOUR, status);
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged, kept } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged).toEqual([]);
      expect(kept.map((k) => [k.id, k.reason])).toEqual([
        [row.id, `run ${row.runId} is still running${status === "running" ? "" : ` (${status})`}`],
      ]);
      expect(existsSync(row.path)).toBe(true);
      expect(await manager.get(row.id)).toMatchObject({ state: "preserved" });
    });

    it("keeps another instance's worktree, naming the instance", async () => {
      const row = await preserved(HOUR);
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged, kept } = await newManager("inst-b").purge({
        expiredOnly: true,
        by: "housekeeping",
        projects: [project],
      });
      expect(purged).toEqual([]);
      expect(kept).toMatchObject([{ id: row.id, reason: "lives on instance inst-a" }]);
      expect(existsSync(row.path)).toBe(true);
    });

    it("refuses a recorded path that climbs out of the root, and leaves the outside untouched", async () => {
      const outside = await makeTempDir("fr-outside-");
      await writeFile(join(outside, "precious.txt"), "keep me\n");
      await mkdir(root, { recursive: true });
      const runId = await insertRun("crashed");
      const traversal = [
        `${root}/../../${basename(outside)}`,
        `${root}/demo/../../../${basename(outside)}`,
        root,
        `${root}/demo`,
      ];
      const inserted = await t.database.db
        .insert(worktrees)
        .values(
          traversal.map((path) => ({
            runId,
            project: "demo",
            formula: "dev",
            path,
            state: "preserved" as const,
            reason: "crashed",
            instanceId: "inst-a",
            preservedAt: T0,
            expiresAt: T0,
          })),
        )
        .returning();
      const { purged, kept } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged).toEqual([]);
      expect(kept.map((k) => k.reason)).toEqual([
        "outside WORKTREE_ROOT",
        "outside WORKTREE_ROOT",
        "is WORKTREE_ROOT itself",
        "not a worktree path (<WORKTREE_ROOT>/<project>/<name>)",
      ]);
      expect(await readFile(join(outside, "precious.txt"), "utf8")).toBe("keep me\n");
      expect(existsSync(root)).toBe(true);
      for (const row of inserted) expect(await manager.get(row.id)).toMatchObject({ state: "preserved" });
      await expect(manager.remove(inserted[0] as WorktreeRow, "api", project)).rejects.toThrow(/outside WORKTREE_ROOT/);
      expect(existsSync(join(outside, "precious.txt"))).toBe(true);
    });

    it("refuses a worktree directory that became a symlink out of the root, and leaves the target untouched", async () => {
      const outside = await makeTempDir("fr-outside-");
      await writeFile(join(outside, "precious.txt"), "keep me\n");
      const row = await preserved(HOUR);
      await rm(row.path, { recursive: true });
      await symlink(outside, row.path);
      // A whole project directory swapped for a link counts too.
      await mkdir(join(outside, "dev-1"));
      await symlink(outside, join(root, "linked"));
      const [viaProject] = await t.database.db
        .insert(worktrees)
        .values({
          project: "linked",
          formula: "dev",
          path: join(root, "linked", "dev-1"),
          state: "preserved",
          instanceId: "inst-a",
          preservedAt: T0,
          expiresAt: T0,
        })
        .returning();

      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged, kept } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged).toEqual([]);
      expect(kept.map((k) => [k.id, k.reason])).toEqual([
        [row.id, `demo/${basename(row.path)} is a symlink`],
        [viaProject?.id, "linked is a symlink"],
      ]);
      expect(await readFile(join(outside, "precious.txt"), "utf8")).toBe("keep me\n");
      expect(existsSync(join(outside, "dev-1"))).toBe(true);
    });

    it("deletes a worktree holding a symlink to the outside without following it", async () => {
      const outside = await makeTempDir("fr-outside-");
      await writeFile(join(outside, "precious.txt"), "keep me\n");
      const row = await preserved(HOUR);
      await symlink(outside, join(row.path, "escape"));
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged.map((p) => p.id)).toEqual([row.id]);
      expect(existsSync(row.path)).toBe(false);
      expect(await readFile(join(outside, "precious.txt"), "utf8")).toBe("keep me\n");
    });

    it("marks a worktree whose directory is already gone removed, and prunes it from git", async () => {
      const row = await preserved(HOUR);
      await rm(row.path, { recursive: true });
      expect(await linked(repo)).toEqual([row.path]); // still registered until pruned
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged.map((p) => [p.id, p.reason])).toEqual([
        [row.id, `expired at ${new Date(T0.getTime() + HOUR).toISOString()}; directory already gone`],
      ]);
      expect(await manager.get(row.id)).toMatchObject({ state: "removed", removedBy: "housekeeping" });
      expect(await linked(repo)).toEqual([]);
    });

    it("deletes the directory of a project no longer configured and runs git in no clone", async () => {
      const row = await preserved(HOUR);
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [] });
      expect(purged.map((p) => p.id)).toEqual([row.id]);
      expect(existsSync(row.path)).toBe(false);
      expect(await linked(repo)).toEqual([row.path]); // its clone is not configured: left to git's own gc
    });

    it("ignores a .git file redirected at another repository: that repository is never pruned", async () => {
      const other = await createTestRepo();
      try {
        // A stale entry in the other clone that any `git worktree prune` there would delete.
        const victim = join(await makeTempDir("fr-victim-"), "wt");
        await runGit(other.clone, "worktree", "add", "--quiet", "--detach", victim, "origin/main");
        await rm(victim, { recursive: true });
        const admin = join(other.clone, ".git", "worktrees", basename(victim));
        const row = await preserved(HOUR);
        await writeFile(join(row.path, ".git"), `gitdir: ${admin}\n`);
        clock = new Date(T0.getTime() + 2 * HOUR);
        const { purged } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
        expect(purged.map((p) => p.id)).toEqual([row.id]);
        expect(existsSync(row.path)).toBe(false);
        expect(existsSync(join(admin, "gitdir"))).toBe(true);
        expect(await linked(other)).toEqual([victim]);
      } finally {
        await other.cleanup();
      }
    });

    it("deletes nothing outside the root while the project directory is swapped for a symlink during purges", async () => {
      const outside = await makeTempDir("fr-outside-");
      const names = Array.from({ length: 12 }, (_, i) => `dev-${1000 + i}`);
      for (const name of names) {
        // The outside holds a tree shaped exactly like the project directory.
        await mkdir(join(outside, name, "sub"), { recursive: true });
        await writeFile(join(outside, name, "sub", "precious.txt"), "keep me\n");
        await mkdir(join(root, "demo", name, "sub"), { recursive: true });
        await writeFile(join(root, "demo", name, "sub", "file.txt"), "x\n");
      }
      const rows = await t.database.db
        .insert(worktrees)
        .values(
          names.map((name) => ({
            project: "demo",
            formula: "dev",
            path: join(root, "demo", name),
            state: "preserved" as const,
            instanceId: "inst-a",
            preservedAt: T0,
            expiresAt: T0,
          })),
        )
        .returning();
      let stop = false;
      const swapper = (async () => {
        while (!stop) {
          await rename(join(root, "demo"), join(root, "demo.moved")).catch(() => undefined);
          await symlink(outside, join(root, "demo")).catch(() => undefined);
          await new Promise((r) => setImmediate(r));
          await rm(join(root, "demo")).catch(() => undefined);
          await rename(join(root, "demo.moved"), join(root, "demo")).catch(() => undefined);
          await new Promise((r) => setImmediate(r));
        }
      })();
      clock = new Date(T0.getTime() + 2 * HOUR);
      for (let i = 0; i < 20; i++) {
        await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      }
      stop = true;
      await swapper;
      for (const name of names) {
        expect(await readFile(join(outside, name, "sub", "precious.txt"), "utf8")).toBe("keep me\n");
      }
      // A directory a swap hid (taken for gone) is back on record after adoption, so nothing leaks.
      await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      await manager.adoptOrphans([project], HOUR);
      for (const row of rows) {
        const current = await manager.get(row.id);
        expect(current?.state).toBe(existsSync(row.path) ? "preserved" : "removed");
      }
    });

    it("explains each requested id it keeps", async () => {
      const active = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      const gone = await preserved(HOUR);
      await manager.remove(gone, "api", project);
      const { purged, kept } = await manager.purge({
        ids: [active.id, gone.id, 999_999],
        by: "api",
        projects: [project],
      });
      expect(purged).toEqual([]);
      expect(kept.map((k) => [k.id, k.reason.replace(/ at .*/, "")])).toEqual([
        [active.id, `worktree is active (run ${active.runId})`],
        [gone.id, "already removed"],
        [999_999, "no such worktree"],
      ]);
      expect(existsSync(active.path)).toBe(true);
    });

    it("removes many worktrees of one project with one prune and leaves none registered", async () => {
      const rows = await Promise.all(Array.from({ length: 12 }, () => preserved(HOUR)));
      const survivor = await preserved(72 * HOUR);
      clock = new Date(T0.getTime() + 2 * HOUR);
      const { purged, kept } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged.map((p) => p.id)).toEqual(rows.map((r) => r.id).sort((a, b) => a - b));
      expect(kept).toEqual([]);
      expect(await linked(repo)).toEqual([survivor.path]);
      const states = await t.database.rows<{ state: string; n: number }>(
        sql`select state, count(*)::int as n from worktrees group by state order by state`,
      );
      expect(states).toEqual([
        { state: "preserved", n: 1 },
        { state: "removed", n: 12 },
      ]);
    });
  });

  describe("adoptOrphans", () => {
    it("records directories nobody recorded, and preserves active rows whose run is over", async () => {
      const runId = await insertRun("running");
      const unrecorded = join(root, "demo", `dev-${runId}`);
      await runGit(repo.clone, "worktree", "add", "--quiet", "--detach", unrecorded, "origin/main");
      const noSuchRun = join(root, "demo", "dev-987654");
      await runGit(repo.clone, "worktree", "add", "--quiet", "--detach", noSuchRun, "origin/main");
      const odd = join(root, "retired-project", "scratchpad");
      await mkdir(odd, { recursive: true });
      await writeFile(join(root, "demo", "stray-file"), "not a worktree\n");

      const leakedRun = await insertRun("running");
      const leaked = await manager.create({ runId: leakedRun, project, formula: "dev" });
      await setRunStatus(leakedRun, "failed");
      const live = await manager.create({ runId: await insertRun("running"), project, formula: "dev" });
      const otherInstance = await newManager("inst-b").create({
        runId: await insertRun("running"),
        project,
        formula: "dev",
      });
      await setRunStatus(otherInstance.runId as number, "done");

      clock = new Date(T0.getTime() + HOUR);
      const adopted = await manager.adoptOrphans([project], 24 * HOUR);
      const expiresAt = new Date(clock.getTime() + 24 * HOUR);
      const byPath = new Map(adopted.map((r) => [r.path, r]));
      expect([...byPath.keys()].sort()).toEqual([leaked.path, noSuchRun, odd, unrecorded].sort());
      expect(byPath.get(unrecorded)).toMatchObject({
        runId,
        project: "demo",
        formula: "dev",
        state: "preserved",
        reason: "adopted",
        instanceId: "inst-a",
        preservedAt: clock,
        expiresAt,
      });
      expect(byPath.get(unrecorded)?.sizeBytes).toBeGreaterThan(0);
      expect(byPath.get(noSuchRun)).toMatchObject({ runId: null, formula: "dev", reason: "adopted" });
      expect(byPath.get(odd)).toMatchObject({
        runId: null,
        project: "retired-project",
        formula: "scratchpad",
        reason: "adopted",
      });
      expect(byPath.get(leaked.path)).toMatchObject({ id: leaked.id, state: "preserved", reason: "leaked", expiresAt });
      expect(await manager.get(live.id)).toMatchObject({ state: "active" });
      expect(await manager.get(otherInstance.id)).toMatchObject({ state: "active" });

      // Everything is on the record now: a second pass adopts nothing.
      expect(await manager.adoptOrphans([project], 24 * HOUR)).toEqual([]);

      // And nothing leaks: once expired, they are purged and pruned like any other.
      clock = new Date(clock.getTime() + 25 * HOUR);
      await setRunStatus(runId, "crashed");
      const { purged, kept } = await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
      expect(purged.map((p) => p.path).sort()).toEqual([leaked.path, noSuchRun, odd, unrecorded].sort());
      expect(kept).toEqual([]);
      expect((await linked(repo)).sort()).toEqual([live.path, otherInstance.path].sort());
      expect(existsSync(join(root, "demo", "stray-file"))).toBe(true);
    });

    it("brings back a row marked removed whose directory is still there", async () => {
      const row = await preserved(HOUR);
      await t.database.db
        .update(worktrees)
        .set({ state: "removed", removedBy: "api", removedAt: T0 })
        .where(eq(worktrees.id, row.id));
      const [adopted] = await manager.adoptOrphans([project], HOUR);
      expect(adopted).toMatchObject({
        id: row.id,
        state: "preserved",
        reason: "adopted",
        removedAt: null,
        removedBy: null,
      });
    });

    it("leaves a directory alone while create is between git worktree add and the insert", async () => {
      const runId = await insertRun("running");
      const creating = manager.create({ runId, project, formula: "dev" });
      // Adopt repeatedly while the create runs; whichever moment it lands in, the create must win.
      const adopted: WorktreeRow[] = [];
      let done = false;
      const settled = creating.finally(() => {
        done = true;
      });
      while (!done) {
        adopted.push(...(await manager.adoptOrphans([project], HOUR)));
        await new Promise((resolve) => setImmediate(resolve));
      }
      const row = await settled;
      expect(adopted).toEqual([]);
      expect(await manager.get(row.id)).toMatchObject({ state: "active", runId });
    });
  });

  describe("list", () => {
    it("filters, orders newest first and pages with beforeId", async () => {
      const a = await preserved(HOUR);
      const b = await manager.create({ runId: await insertRun(), project, formula: "dev" });
      const c = await manager.create({ runId: await insertRun("running", "planner"), project, formula: "planner" });
      expect((await manager.list({})).map((r) => r.id)).toEqual([c.id, b.id, a.id]);
      expect((await manager.list({ state: "preserved" })).map((r) => r.id)).toEqual([a.id]);
      expect((await manager.list({ formula: "planner" })).map((r) => r.id)).toEqual([c.id]);
      expect((await manager.list({ runId: b.runId as number })).map((r) => r.id)).toEqual([b.id]);
      expect((await manager.list({ project: "elsewhere" })).map((r) => r.id)).toEqual([]);
      expect((await manager.list({ limit: 2 })).map((r) => r.id)).toEqual([c.id, b.id]);
      expect((await manager.list({ limit: 2, beforeId: b.id })).map((r) => r.id)).toEqual([a.id]);
      expect(await manager.list({ limit: 0 })).toHaveLength(1);
    });
  });

  it("leaves the clone's own checkout as it was through every operation", async () => {
    const status = await runGit(repo.clone, "status", "--porcelain");
    const row = await preserved(HOUR);
    clock = new Date(T0.getTime() + 2 * HOUR);
    await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] });
    expect(await runGit(repo.clone, "status", "--porcelain")).toBe(status);
    expect(existsSync(row.path)).toBe(false);
  });
});
