import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    // Most tests wait on child processes, git and databases, not on the CPU: three files at
    // a time keep a 2-core machine busy (vitest's default is one file at a time there).
    maxWorkers: 3,
    // Bounds, not targets: real server processes (the first start of an embedded database
    // alone is 10-25 s), git and agents run several times slower on a loaded 2-core host.
    testTimeout: 90_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
  },
});
