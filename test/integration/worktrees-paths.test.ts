import { existsSync } from "node:fs";
import { link, mkdir, realpath, symlink, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { diskUsage } from "../../src/worktrees/disk-size.js";
import {
  checkDeletable,
  isInside,
  isLexicallyInside,
  isSafeSegment,
  parseWorktreeDirName,
  worktreePath,
} from "../../src/worktrees/paths.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

describe("worktree paths", () => {
  let base: string;
  let root: string;
  let outside: string;

  beforeAll(async () => {
    base = await makeTempDir("fr-wt-paths-");
    root = join(base, "root");
    outside = join(base, "outside");
    await mkdir(join(root, "demo", "dev-1"), { recursive: true });
    await mkdir(join(root, "demo", "dev-2"), { recursive: true });
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, "precious.txt"), "x");
    await symlink(outside, join(root, "demo", "link-out"));
    await symlink(join(root, "demo", "dev-2"), join(root, "demo", "link-in"));
    await symlink(outside, join(root, "proj-out"));
    await symlink(join(base, "nowhere"), join(root, "demo", "dangling"));
  });
  afterAll(async () => {
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  it("builds <root>/<project>/<formula>-<run> and refuses names that are not one segment", () => {
    expect(worktreePath("/srv/wt", "demo", "dev", 12)).toBe("/srv/wt/demo/dev-12");
    expect(worktreePath("/srv/wt/", "demo", "run-supervisor", 3)).toBe("/srv/wt/demo/run-supervisor-3");
    for (const bad of ["..", ".", "", "a/b", "../x", ".hidden", "a..b", "x\0y", "a b"]) {
      expect(isSafeSegment(bad), bad).toBe(false);
      expect(() => worktreePath("/srv/wt", "demo", bad, 1)).toThrow(/cannot be a directory name/);
    }
    expect(() => worktreePath("/srv/wt", "demo", "dev", 0)).toThrow(/positive integer/);
    expect(() => worktreePath("/srv/wt", "demo", "dev", 1.5)).toThrow(/positive integer/);
  });

  it("parses <formula>-<runId>, formulas with dashes included", () => {
    expect(parseWorktreeDirName("run-supervisor-42")).toEqual({ formula: "run-supervisor", runId: 42 });
    expect(parseWorktreeDirName("dev-1")).toEqual({ formula: "dev", runId: 1 });
    expect(parseWorktreeDirName("scratch")).toBeUndefined();
    expect(parseWorktreeDirName("-7")).toBeUndefined();
  });

  it("isLexicallyInside refuses the root itself, .. and siblings with a common prefix", () => {
    expect(isLexicallyInside("/a/root", "/a/root/x")).toBe(true);
    expect(isLexicallyInside("/a/root", "/a/root")).toBe(false);
    expect(isLexicallyInside("/a/root", "/a/root/..")).toBe(false);
    expect(isLexicallyInside("/a/root", "/a/root/x/../../y")).toBe(false);
    expect(isLexicallyInside("/a/root", "/a/rootling/x")).toBe(false);
    expect(isLexicallyInside("/a/root", "/a/root/..x")).toBe(true); // a name, not a parent
  });

  it("isInside compares real paths", async () => {
    expect(await isInside(root, join(root, "demo", "dev-1"))).toBe(true);
    expect(await isInside(root, join(root, "demo", "link-in"))).toBe(true);
    expect(await isInside(root, join(root, "demo", "link-out"))).toBe(false);
    expect(await isInside(root, join(root, "proj-out", "precious.txt"))).toBe(false);
    expect(await isInside(root, root)).toBe(false);
    expect(await isInside(root, join(root, "..", "outside"))).toBe(false);
    expect(await isInside(root, join(root, "missing"))).toBe(false);
  });

  it("checkDeletable says why it refuses", async () => {
    expect(await checkDeletable(root, join(root, "demo", "dev-1"))).toEqual({
      kind: "deletable",
      realPath: join(await realpath(root), "demo", "dev-1"),
    });
    expect(await checkDeletable(root, join(root, "demo", "dev-9"))).toEqual({ kind: "gone" });
    expect(await checkDeletable(root, root)).toEqual({ kind: "refused", reason: "is WORKTREE_ROOT itself" });
    expect(await checkDeletable(root, join(root, "demo", ".."))).toEqual({
      kind: "refused",
      reason: "is WORKTREE_ROOT itself",
    });
    expect(await checkDeletable(root, `${root}/../outside`)).toEqual({
      kind: "refused",
      reason: "outside WORKTREE_ROOT",
    });
    expect(await checkDeletable(root, join(root, "demo", "link-out"))).toEqual({
      kind: "refused",
      reason: "symlink leads outside WORKTREE_ROOT",
    });
    expect(await checkDeletable(root, join(root, "proj-out", "x"))).toEqual({ kind: "gone" }); // nothing there: nothing deleted
    expect(await checkDeletable(root, join(root, "demo", "link-in"))).toEqual({
      kind: "refused",
      reason: "path goes through a symlink inside WORKTREE_ROOT",
    });
    expect(await checkDeletable(root, join(root, "demo", "dangling"))).toEqual({
      kind: "refused",
      reason: "dangling symlink",
    });
  });

  it("never calls deletable a path whose real location is not exactly below the real root (property)", async () => {
    const realRoot = await realpath(root);
    const segment = fc.constantFrom(
      "demo",
      "dev-1",
      "dev-2",
      "link-out",
      "link-in",
      "proj-out",
      "dangling",
      "..",
      ".",
      "precious.txt",
      "missing",
    );
    await fc.assert(
      fc.asyncProperty(fc.array(segment, { minLength: 0, maxLength: 6 }), async (segments) => {
        const candidate = join(root, ...segments);
        const check = await checkDeletable(root, candidate);
        if (check.kind === "deletable") {
          expect(isLexicallyInside(root, candidate)).toBe(true);
          expect(check.realPath).toBe(join(realRoot, resolve(candidate).slice(resolve(root).length)));
          expect(await realpath(candidate)).toBe(check.realPath);
          expect(isLexicallyInside(realRoot, check.realPath)).toBe(true);
        }
        if (!isLexicallyInside(root, candidate)) expect(check.kind).toBe("refused");
      }),
      { numRuns: 300 },
    );
    expect(existsSync(join(outside, "precious.txt"))).toBe(true);
  });
});

describe("diskUsage", () => {
  afterEach(async () => {
    await cleanupTempDirs();
  });

  it("counts allocated blocks once per inode, without following symlinks", async () => {
    const dir = await makeTempDir("fr-wt-size-");
    const outside = await makeTempDir("fr-wt-size-out-");
    await writeFile(join(outside, "huge.bin"), Buffer.alloc(2_000_000, 1));
    await mkdir(join(dir, "a", "b"), { recursive: true });
    await writeFile(join(dir, "a", "b", "data.bin"), Buffer.alloc(300_000, 1));
    await link(join(dir, "a", "b", "data.bin"), join(dir, "hardlink.bin"));
    await symlink(outside, join(dir, "escape"));
    const size = (await diskUsage(dir)) as number;
    expect(size).toBeGreaterThanOrEqual(300_000);
    expect(size).toBeLessThan(600_000); // neither the hard link twice nor the 2 MB behind the symlink
    expect(await diskUsage(join(dir, "missing"))).toBeUndefined();
  });
});
