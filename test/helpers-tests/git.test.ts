import { existsSync } from "node:fs";
import { readFile, realpath } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createTestRepo, listWorktrees, runGit, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const repos: TestRepo[] = [];
async function create(...args: Parameters<typeof createTestRepo>): Promise<TestRepo> {
  const repo = await createTestRepo(...args);
  repos.push(repo);
  return repo;
}

afterEach(async () => {
  for (const repo of repos.splice(0)) {
    await repo.cleanup();
    expect(existsSync(repo.root)).toBe(false);
  }
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

describe("createTestRepo", () => {
  it("makes a bare origin with the initial commit and a clone that tracks it", async () => {
    const repo = await create();
    expect(repo.branch).toBe("main");
    expect(repo.origin).toBe(join(repo.root, "origin.git"));
    expect(await runGit(repo.origin, "rev-parse", "--is-bare-repository")).toBe("true");
    expect(await runGit(repo.origin, "log", "--format=%s", "main")).toBe("initial commit");
    expect(await runGit(repo.origin, "show", "main:README.md")).toContain("# test repository");

    const head = await repo.head();
    expect(head).toMatch(/^[0-9a-f]{40}$/);
    expect(await runGit(repo.clone, "rev-parse", "HEAD")).toBe(head);
    expect(await runGit(repo.clone, "rev-parse", "--abbrev-ref", "HEAD")).toBe("main");
    expect(await runGit(repo.clone, "remote", "get-url", "origin")).toBe(repo.origin);
    // The clone carries its own identity, so code under test can commit without global config.
    expect(await runGit(repo.clone, "config", "--local", "user.email")).toBe("tests@formula-runner.invalid");
    expect(await runGit(repo.clone, "config", "--local", "commit.gpgsign")).toBe("false");
  });

  it("honours a branch name and initial files in sub-directories", async () => {
    const repo = await create({ branch: "trunk", files: { "AGENTS.md": "be nice\n", "tools/x.sh": "echo x\n" } });
    expect(await runGit(repo.clone, "rev-parse", "--abbrev-ref", "HEAD")).toBe("trunk");
    expect(await runGit(repo.clone, "rev-parse", "--abbrev-ref", "origin/HEAD")).toBe("origin/trunk");
    expect(await readFile(join(repo.clone, "tools/x.sh"), "utf8")).toBe("echo x\n");
    expect(existsSync(join(repo.clone, "README.md"))).toBe(false);
    expect(await repo.head()).toBe(await runGit(repo.clone, "rev-parse", "HEAD"));
  });

  it("push() advances origin but not the clone until it fetches", async () => {
    const repo = await create();
    const before = await repo.head();

    const sha = await repo.push({ "src/new.txt": "new\n", "README.md": null }, "add new, drop readme");
    expect(sha).not.toBe(before);
    expect(await repo.head()).toBe(sha);
    expect(await runGit(repo.origin, "rev-parse", `${sha}^`)).toBe(before);
    expect(await runGit(repo.origin, "ls-tree", "--name-only", "-r", sha)).toBe("src/new.txt");

    expect(await runGit(repo.clone, "rev-parse", "origin/main")).toBe(before);
    await runGit(repo.clone, "fetch", "--quiet", "origin");
    expect(await runGit(repo.clone, "rev-parse", "origin/main")).toBe(sha);
    // The checked-out branch is untouched: only the remote-tracking ref moved.
    expect(await runGit(repo.clone, "rev-parse", "HEAD")).toBe(before);

    // A second push builds on the first.
    const next = await repo.push({ "src/new.txt": "newer\n" }, "edit");
    expect(await runGit(repo.origin, "rev-parse", `${next}^`)).toBe(sha);
  });

  it("supports a detached worktree of the clone on the fetched origin branch", async () => {
    const repo = await create();
    const sha = await repo.push({ "feature.txt": "on origin\n" }, "feature");
    const worktrees = await makeTempDir("fr-wt-");
    const dir = join(worktrees, "demo", "formula-1");

    await runGit(repo.clone, "fetch", "--quiet", "origin");
    await runGit(repo.clone, "worktree", "add", "--quiet", "--detach", dir, "origin/main");
    expect(await runGit(dir, "rev-parse", "HEAD")).toBe(sha);
    expect(await runGit(dir, "symbolic-ref", "--quiet", "HEAD").catch(() => "detached")).toBe("detached");
    expect(await readFile(join(dir, "feature.txt"), "utf8")).toBe("on origin\n");

    const listed = await Promise.all((await listWorktrees(repo.clone)).map((p) => realpath(p)));
    expect(listed).toEqual([await realpath(repo.clone), await realpath(dir)]);

    await runGit(repo.clone, "worktree", "remove", dir);
    expect(await listWorktrees(repo.clone)).toHaveLength(1);
    expect(existsSync(dir)).toBe(false);
  });

  it("refuses file paths that leave the repository", async () => {
    const repo = await create();
    await expect(repo.push({ "../escape.txt": "x" }, "bad")).rejects.toThrow(/inside the repository/);
    expect(existsSync(join(repo.root, "escape.txt"))).toBe(false);
  });

  it("cleanup() removes everything and may be called twice", async () => {
    const repo = await createTestRepo();
    expect(pendingTempDirs()).toContain(repo.root);
    await repo.cleanup();
    await repo.cleanup();
    expect(existsSync(repo.root)).toBe(false);
    expect(pendingTempDirs()).not.toContain(repo.root);
  });
});
