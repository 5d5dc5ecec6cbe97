/**
 * The outside tree a purge must never touch, and the attacker that tries to make it: a
 * racer that swaps directories under WORKTREE_ROOT for symlinks into the outside tree
 * while purges run (issue 10: 123 directories outside the root deleted in 90 s).
 */
import { lstat, mkdir, readdir, readFile, readlink, rename, symlink, unlink, writeFile } from "node:fs/promises";
import path from "node:path";

/** Every entry below `dir`: type, content or link target. Symlinks are recorded, not followed. */
export async function snapshotTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string, rel: string) => {
    for (const name of (await readdir(d)).sort()) {
      const full = path.join(d, name);
      const key = `${rel}/${name}`;
      const stat = await lstat(full);
      if (stat.isSymbolicLink()) out[key] = `link ${await readlink(full)}`;
      else if (stat.isDirectory()) {
        out[key] = `dir ${(stat.mode & 0o7777).toString(8)}`;
        await walk(full, key);
      } else out[key] = `file ${(stat.mode & 0o7777).toString(8)} ${await readFile(full, "utf8")}`;
    }
  };
  await walk(dir, "");
  return out;
}

/** How many entries differ between two snapshots (added, removed or changed). */
export function treeChanges(before: Record<string, string>, after: Record<string, string>): string[] {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...keys].filter((k) => before[k] !== after[k]).sort();
}

/**
 * A sentinel-filled tree shaped like what a purge could be tricked into deleting: plain
 * files, a tree shaped like a worktree, and another repository's worktree admin dir (the
 * target of a `.git` file redirect).
 */
export async function makeOutsideTree(dir: string): Promise<{ gitRedirect: string }> {
  await mkdir(path.join(dir, "docs"), { recursive: true });
  await writeFile(path.join(dir, "docs", "precious.txt"), "keep me\n");
  await mkdir(path.join(dir, "w", "a", "b"), { recursive: true });
  await writeFile(path.join(dir, "w", "a", "f"), "a sentinel in a tree shaped like a worktree\n");
  await writeFile(path.join(dir, "w", "a", "b", "g"), "deeper sentinel\n");
  const admin = path.join(dir, "repo", ".git", "worktrees", "victim");
  await mkdir(admin, { recursive: true });
  await writeFile(path.join(admin, "gitdir"), "/nowhere/.git\n");
  await writeFile(path.join(admin, "HEAD"), `${"0".repeat(40)}\n`);
  return { gitRedirect: admin };
}

/**
 * Fills a preserved worktree with what a hostile agent could leave behind: nested
 * directories (for the racer to swap), symlinks out, and sometimes a `.git` file that
 * points at another repository's worktree admin dir.
 */
export async function plantHostileContent(
  worktree: string,
  outside: string,
  gitRedirect: string,
  redirectGit: boolean,
): Promise<void> {
  await mkdir(path.join(worktree, "a", "b", "c"), { recursive: true });
  await writeFile(path.join(worktree, "a", "b", "c", "file"), "x\n");
  await symlink(outside, path.join(worktree, "a", "out")).catch(() => {});
  await symlink(path.join(outside, "docs", "precious.txt"), path.join(worktree, "precious-link")).catch(() => {});
  if (redirectGit) await writeFile(path.join(worktree, ".git"), `gitdir: ${gitRedirect}\n`);
}

const MOVED = ".chaos-moved";

/**
 * Swaps the target directories for symlinks into `outside` and back, one at a time in
 * random order, until stopped: rename away, link in its place, yield, unlink, rename
 * back. A purge that resolves a path twice (check, then delete) deletes outside the root
 * when it lands in the window. One swap at a time: a nested target renamed while its
 * parent is a link would be renamed inside the outside tree by the racer itself (the
 * first 10-minute run counted exactly that as 8 changes outside). A target a purge removed
 * is dropped after a few misses.
 */
export class SymlinkRacer {
  swaps = 0;
  private stopping = false;
  private running: Promise<void> | undefined;

  constructor(
    private readonly targets: readonly { dir: string; linkTo: string }[],
    private readonly nextRandom: () => number,
  ) {}

  start(): void {
    this.stopping = false;
    this.running = this.race();
  }

  /** Stops and puts every target back where it was. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
    for (const t of this.targets) await restore(t.dir);
  }

  private async race(): Promise<void> {
    const misses = new Map<string, number>();
    const live = () => this.targets.filter((t) => (misses.get(t.dir) ?? 0) < 50);
    while (!this.stopping && live().length > 0) {
      const targets = live();
      const target = targets[Math.floor(this.nextRandom() * targets.length)] as (typeof targets)[number];
      try {
        await rename(target.dir, target.dir + MOVED);
        try {
          await symlink(target.linkTo, target.dir);
          this.swaps++;
          await new Promise((r) => setImmediate(r));
          if (this.nextRandom() < 0.3) await new Promise((r) => setTimeout(r, 1));
        } finally {
          await restore(target.dir);
        }
        misses.set(target.dir, 0);
      } catch {
        // The purge removed (or is removing) it: try again a little later, then give up.
        misses.set(target.dir, (misses.get(target.dir) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setImmediate(r));
    }
  }
}

/** Removes a symlink left at `dir` and renames the moved directory back. */
async function restore(dir: string): Promise<void> {
  const at = await lstat(dir).catch(() => undefined);
  if (at?.isSymbolicLink()) await unlink(dir).catch(() => {});
  const moved = await lstat(dir + MOVED).catch(() => undefined);
  if (moved && (await lstat(dir).catch(() => undefined)) === undefined) await rename(dir + MOVED, dir).catch(() => {});
}
