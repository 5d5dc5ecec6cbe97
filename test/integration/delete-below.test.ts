import { existsSync } from "node:fs";
import { lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deleteBelowRoot, MAX_DEPTH } from "../../src/worktrees/delete-below.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

/** Every entry below `dir`: type, content or link target. Symlinks are recorded, not followed. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string, rel: string) => {
    for (const name of (await readdir(d)).sort()) {
      const full = join(d, name);
      const key = `${rel}/${name}`;
      const stat = await lstat(full);
      if (stat.isSymbolicLink()) out[key] = `link ${await readlink(full)}`;
      else if (stat.isDirectory()) {
        out[key] = "dir";
        await walk(full, key);
      } else out[key] = `file ${await readFile(full, "utf8")}`;
    }
  };
  await walk(dir, "");
  return out;
}

/**
 * `<dir>/<rel>` when nothing is there yet and every parent is a real directory (made if
 * missing); undefined when a parent is a link or a file, or the entry exists.
 */
async function freshEntry(dir: string, rel: string): Promise<string | undefined> {
  const parts = rel.split("/");
  let current = dir;
  for (const part of parts.slice(0, -1)) {
    current = join(current, part);
    const stat = await lstat(current).catch(() => undefined);
    if (stat === undefined) await mkdir(current);
    else if (!stat.isDirectory()) return undefined;
  }
  const at = join(current, parts.at(-1) as string);
  return (await lstat(at).catch(() => undefined)) === undefined ? at : undefined;
}

/** What a generated worktree holds: paths are a few segments from a small alphabet, so they collide and nest. */
const segment = fc.constantFrom("a", "b", "c", "node_modules", ".git", "d e");
const relPath = fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join("/"));
const item = fc.oneof(
  fc.record({ kind: fc.constant("dir" as const), at: relPath }),
  fc.record({ kind: fc.constant("file" as const), at: relPath }),
  // A link to the sentinel tree: a directory, a file, its git admin dir, or the tree itself.
  fc.record({
    kind: fc.constant("link-out" as const),
    at: relPath,
    to: fc.constantFrom("", "docs", "docs/precious.txt", "repo/.git/worktrees/victim", "w"),
  }),
  fc.record({ kind: fc.constant("link-in" as const), at: relPath, to: relPath }),
  // The worktree's .git file pointed at another repository's worktree admin dir.
  fc.record({ kind: fc.constant("git-redirect" as const), at: fc.constant(".git") }),
);
/** What a racing attacker does while the delete runs. */
const attack = fc.constantFrom(
  "none",
  "swap-project-for-link", // rename <root>/p away and put a symlink to the outside in its place
  "swap-worktree-for-link", // the same one level down
  "swap-inner-dir-for-link", // the same inside the worktree, repeatedly
  "rename-parent", // rename <root>/p to another name inside the root and back
);

describe("deleteBelowRoot", () => {
  let base: string;
  let outside: string;
  let before: Record<string, string>;

  beforeAll(async () => {
    base = await makeTempDir("fr-delete-below-");
    outside = join(base, "outside");
    await mkdir(join(outside, "docs"), { recursive: true });
    await writeFile(join(outside, "docs", "precious.txt"), "keep me");
    await mkdir(join(outside, "w", "a"), { recursive: true });
    await writeFile(join(outside, "w", "a", "f"), "sentinel in a tree shaped like a worktree");
    await mkdir(join(outside, "repo", ".git", "worktrees", "victim"), { recursive: true });
    await writeFile(join(outside, "repo", ".git", "worktrees", "victim", "gitdir"), "/nowhere/.git\n");
    before = await snapshot(outside);
  });
  afterAll(async () => {
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  it("deletes a tree and only the tree, whatever it holds and however its parents are swapped (property)", async () => {
    let runNo = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(item, { maxLength: 12 }), attack, async (items, how) => {
        const root = join(base, `root-${++runNo}`);
        const worktree = join(root, "p", "w");
        await mkdir(worktree, { recursive: true });
        for (const it of items) {
          // Built without ever following a link the tree already holds (that would write outside).
          const at = await freshEntry(worktree, it.at);
          if (at === undefined) continue;
          if (it.kind === "dir") await mkdir(at);
          else if (it.kind === "file") await writeFile(at, "x", { flag: "wx" });
          else if (it.kind === "link-out") await symlink(join(outside, it.to), at);
          else if (it.kind === "link-in") await symlink(join(worktree, it.to), at);
          else await writeFile(at, `gitdir: ${join(outside, "repo", ".git", "worktrees", "victim")}\n`, { flag: "wx" });
        }
        let stop = false;
        const swapper = async () => {
          for (let i = 0; !stop && i < 10_000; i++) {
            try {
              if (how === "swap-project-for-link" || how === "swap-worktree-for-link") {
                const victim = how === "swap-project-for-link" ? join(root, "p") : worktree;
                await rename(victim, `${victim}.moved`);
                await symlink(how === "swap-project-for-link" ? outside : join(outside, "w"), victim);
                await new Promise((r) => setImmediate(r));
                await rm(victim);
                await rename(`${victim}.moved`, victim);
              } else if (how === "swap-inner-dir-for-link") {
                const inner = join(worktree, "a");
                await rename(inner, join(worktree, "a.moved"));
                await symlink(outside, inner);
                await new Promise((r) => setImmediate(r));
                await rm(inner);
                await rename(join(worktree, "a.moved"), inner);
              } else if (how === "rename-parent") {
                await rename(join(root, "p"), join(root, "p2"));
                await new Promise((r) => setImmediate(r));
                await rename(join(root, "p2"), join(root, "p"));
              } else return;
            } catch {
              // The delete removed what the attacker was moving: carry on with the next round.
            }
            await new Promise((r) => setImmediate(r));
          }
        };
        const racing = swapper();
        const outcomes = [];
        // Like a purge that is retried: the first attempt may be refused mid-swap.
        for (let attempt = 0; attempt < 3; attempt++) outcomes.push(await deleteBelowRoot(root, ["p", "w"]));
        stop = true;
        await racing;
        expect(await snapshot(outside)).toEqual(before);
        if (how === "none") {
          expect(outcomes[0]).toEqual({ kind: "deleted" });
          expect(existsSync(worktree)).toBe(false);
          expect(existsSync(join(root, "p"))).toBe(true);
        }
        for (const o of outcomes)
          if (o.kind === "kept") expect(o.reason).toMatch(/symlink|not a directory|replaced|changed|moved/);
      }),
      { numRuns: 150, seed: 20261202 },
    );
  });

  it("inspects without deleting and says why it would keep", async () => {
    const root = join(base, "inspect");
    await mkdir(join(root, "p", "w", "sub"), { recursive: true });
    await symlink(outside, join(root, "q"));
    await writeFile(join(root, "p", "file"), "x");
    expect(await deleteBelowRoot(root, ["p", "w"], { inspect: true })).toEqual({ kind: "deleted" });
    expect(existsSync(join(root, "p", "w", "sub"))).toBe(true);
    expect(await deleteBelowRoot(root, ["q", "docs"], { inspect: true })).toEqual({
      kind: "kept",
      reason: "q is a symlink",
    });
    expect(await deleteBelowRoot(root, ["p", "file"])).toEqual({ kind: "kept", reason: "p/file is not a directory" });
    expect(await deleteBelowRoot(root, ["p", "missing"])).toEqual({ kind: "gone" });
    expect(await deleteBelowRoot(join(base, "no-root"), ["p", "w"])).toEqual({ kind: "gone" });
    expect(await deleteBelowRoot(root, ["p", ".."])).toMatchObject({ kind: "kept" });
    expect(await deleteBelowRoot(root, [])).toMatchObject({ kind: "kept" });
    expect(await snapshot(outside)).toEqual(before);
  });

  it("keeps a tree nested deeper than MAX_DEPTH instead of holding a descriptor per level", async () => {
    const root = join(base, "deep");
    const deep = join(root, "p", "w", ...Array.from({ length: MAX_DEPTH + 1 }, () => "d"));
    await mkdir(deep, { recursive: true });
    const outcome = await deleteBelowRoot(root, ["p", "w"]);
    expect(outcome).toEqual({ kind: "kept", reason: expect.stringMatching(/deeper than 256/) });
    expect(existsSync(join(root, "p", "w"))).toBe(true);
  });
});
