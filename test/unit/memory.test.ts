import { writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { readAvailableMemoryMb } from "../../src/memory.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

describe("readAvailableMemoryMb", () => {
  afterEach(async () => {
    await cleanupTempDirs();
  });

  it("reads MemAvailable from a meminfo file, in MiB", async () => {
    const file = path.join(await makeTempDir("fr-meminfo-"), "meminfo");
    await writeFile(
      file,
      "MemTotal:       24576000 kB\nMemFree:          512000 kB\nMemAvailable:    2048000 kB\nCached:          1000000 kB\n",
    );
    expect(await readAvailableMemoryMb(file)).toBe(2000);
  });

  it("falls back to MemFree + Cached on kernels without MemAvailable", async () => {
    const file = path.join(await makeTempDir("fr-meminfo-"), "meminfo");
    await writeFile(file, "MemTotal: 4096000 kB\nMemFree: 102400 kB\nCached: 51200 kB\n");
    expect(await readAvailableMemoryMb(file)).toBe(150);
  });

  it("reads this machine's /proc/meminfo", async () => {
    const mb = await readAvailableMemoryMb();
    expect(mb).toBeGreaterThan(0);
  });
});
