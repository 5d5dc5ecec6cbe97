/**
 * A child process for clone-lock tests: `lock-worker.ts LOCK COUNTER N` adds 1 to the
 * number in COUNTER, N times, each time read-sleep-write under the lock LOCK, so any two
 * holders at once lose an update.
 */
import { readFile, writeFile } from "node:fs/promises";
import { withFileLock } from "../../src/worktrees/clone-lock.js";

const [lock, counter, times] = process.argv.slice(2);
if (!lock || !counter || !times) throw new Error("usage: lock-worker.ts LOCK COUNTER N");
for (let i = 0; i < Number(times); i++) {
  await withFileLock(lock, async () => {
    const value = Number((await readFile(counter, "utf8")) || "0");
    await new Promise((resolve) => setTimeout(resolve, 2));
    await writeFile(counter, String(value + 1));
  });
}
