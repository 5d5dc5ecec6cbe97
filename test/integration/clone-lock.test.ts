import { existsSync } from "node:fs";
import { readFile, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { CloneLockTimeout, CloneQueue, cloneLockFile, withFileLock } from "../../src/worktrees/clone-lock.js";
import { REPO_ROOT } from "../helpers/cli.js";
import { createTestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const WORKER = path.join(REPO_ROOT, "test/helpers/lock-worker.ts");

describe("clone lock across processes", () => {
  afterEach(async () => {
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  it("lets one process at a time in: 4 processes x 25 read-modify-writes lose nothing", {
    timeout: 120_000,
  }, async () => {
    const dir = await makeTempDir("fr-lock-");
    const lock = path.join(dir, "formula-runner.lock");
    const counter = path.join(dir, "counter");
    await writeFile(counter, "0");
    await Promise.all(
      [1, 2, 3, 4].map(() =>
        execa("node", ["--import", "tsx", WORKER, lock, counter, "25"], { cwd: REPO_ROOT, stdin: "ignore" }),
      ),
    );
    expect(await readFile(counter, "utf8")).toBe("100");
    expect(existsSync(lock)).toBe(false);
  });

  it("takes over a lock whose process is gone, on this host", async () => {
    const dir = await makeTempDir("fr-lock-");
    const lock = path.join(dir, "formula-runner.lock");
    const dead = await execa("node", ["-e", "process.stdout.write(String(process.pid))"]);
    await writeFile(
      lock,
      JSON.stringify({
        token: "old",
        pid: Number(dead.stdout),
        host: (await import("node:os")).hostname(),
        at: "then",
      }),
    );
    expect(await withFileLock(lock, async () => "ran", { timeoutMs: 5_000 })).toBe("ran");
    expect(existsSync(lock)).toBe(false);
  });

  it("waits for a live holder and gives up after the timeout, naming it", async () => {
    const dir = await makeTempDir("fr-lock-");
    const lock = path.join(dir, "formula-runner.lock");
    const os = await import("node:os");
    // This test process is alive; another token of its pid is a leftover of an earlier
    // process only when no lock of this process holds it, so use the parent's pid.
    await writeFile(lock, JSON.stringify({ token: "live", pid: process.ppid, host: os.hostname(), at: "now" }));
    const error = await withFileLock(lock, async () => "ran", { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CloneLockTimeout);
    expect((error as Error).message).toContain(`held by pid ${process.ppid}`);
    expect(JSON.parse(await readFile(lock, "utf8")).token).toBe("live");
  });

  it("takes over a lock of another host once nobody refreshed it for staleMs", async () => {
    const dir = await makeTempDir("fr-lock-");
    const lock = path.join(dir, "formula-runner.lock");
    await writeFile(lock, JSON.stringify({ token: "far", pid: 1, host: "another-host", at: "then" }));
    await expect(withFileLock(lock, async () => "ran", { timeoutMs: 200, staleMs: 60_000 })).rejects.toThrow(
      CloneLockTimeout,
    );
    const old = new Date(Date.now() - 120_000);
    await utimes(lock, old, old);
    expect(await withFileLock(lock, async () => "ran", { timeoutMs: 5_000, staleMs: 60_000 })).toBe("ran");
  });

  it("puts the lock in the clone's git directory, or beside a clone not made yet", async () => {
    const repo = await createTestRepo();
    try {
      expect(await cloneLockFile(repo.clone)).toBe(path.join(repo.clone, ".git", "formula-runner.lock"));
      expect(await cloneLockFile(repo.origin)).toBe(path.join(repo.origin, "formula-runner.lock"));
      expect(await cloneLockFile(path.join(repo.root, "later"))).toBe(
        path.join(repo.root, ".later.formula-runner.lock"),
      );
    } finally {
      await repo.cleanup();
    }
  });

  it("orders tasks per key in one process and releases the lock after a failure", async () => {
    const repo = await createTestRepo();
    try {
      const queue = new CloneQueue();
      const order: string[] = [];
      const task =
        (name: string, fail = false) =>
        async () => {
          order.push(`${name}:start`);
          await new Promise((resolve) => setTimeout(resolve, 10));
          order.push(`${name}:end`);
          if (fail) throw new Error(name);
        };
      const results = await Promise.allSettled([
        queue.run(repo.clone, task("a", true)),
        queue.run(repo.clone, task("b")),
        queue.run(path.join(repo.clone, ".git"), task("c")),
      ]);
      expect(results.map((r) => r.status)).toEqual(["rejected", "fulfilled", "fulfilled"]);
      // a and b share a key; c names the same clone's git directory, so the same lock file.
      expect(order.indexOf("a:start")).toBeLessThan(order.indexOf("b:start"));
      // No two tasks overlap: every start is followed by its own end.
      expect(order).toHaveLength(6);
      for (let i = 0; i < order.length; i += 2) {
        expect(order[i + 1]).toBe(order[i]?.replace(":start", ":end"));
      }
      expect(existsSync(path.join(repo.clone, ".git", "formula-runner.lock"))).toBe(false);
    } finally {
      await repo.cleanup();
    }
  });
});
