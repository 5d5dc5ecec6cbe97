import { cp } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const probe = join(import.meta.dirname, "..", "helpers", "probes", "postgres-cut.mjs");
// The package's exports hide package.json; its main entry is cjs/src/index.js, three levels down.
const installed = dirname(dirname(dirname(createRequire(import.meta.url).resolve("postgres"))));
const patchFile = join(import.meta.dirname, "..", "..", "patches", "postgres+3.4.9.patch");

async function runProbe(packageDir: string, mode: "reserved" | "types", guard = false) {
  const args = [probe, join(packageDir, "src", "index.js"), mode, ...(guard ? ["guard"] : [])];
  return execa("node", guard ? ["--import", "tsx", ...args] : args, { reject: false, timeout: 20_000 });
}

/**
 * postgres.js 3.4.9 ends the process when a connection is cut at the wrong moment
 * (porsager/postgres #1154, #1208); patches/ fixes it at install (patch-package). Each case
 * runs the probe against the installed (patched) driver and against a copy with the patch
 * taken out, which must still crash: that shows the probe reproduces the bug.
 */
describe("postgres.js driver patch", () => {
  let unpatched: string;
  beforeAll(async () => {
    // Under a node_modules directory, as installed: the process guard knows the driver by that path.
    unpatched = join(await makeTempDir("fr-pg-unpatched-"), "node_modules", "postgres");
    await cp(installed, unpatched, { recursive: true });
    await execa("patch", ["--reverse", "--strip=3", "--directory", unpatched, "--input", patchFile]);
  });
  afterAll(async () => {
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  it("a query on a reserved connection whose socket was cut is rejected, not a crash from a timer", async () => {
    const patched = await runProbe(installed, "reserved");
    expect(patched.stderr).toBe("");
    expect(patched.stdout).toBe("outcome CONNECTION_CLOSED");
    expect(patched.exitCode).toBe(0);

    const crash = await runProbe(unpatched, "reserved");
    expect(crash.exitCode).toBe(3);
    expect(crash.stderr).toContain("Cannot read properties of null (reading 'write')");
  });

  it("a connection reset while it fetches array types is no unhandled rejection", async () => {
    const patched = await runProbe(installed, "types");
    expect(patched.stderr).toBe("");
    expect(patched.stdout).toMatch(/^outcome (ok|ECONNRESET)$/);
    expect(patched.exitCode).toBe(0);

    const crash = await runProbe(unpatched, "types");
    expect(crash.exitCode).toBe(3);
    expect(crash.stderr).toContain("unhandledRejection: Error: read ECONNRESET");
  });

  it("the process guard keeps the process up through both faults of the unpatched driver", async () => {
    const reserved = await runProbe(unpatched, "reserved", true);
    expect(reserved.stderr).toContain(
      "database driver fault outside any request; serving on: Cannot read properties of null (reading 'write')",
    );
    expect(reserved.stdout).toBe("outcome hung"); // the unpatched driver drops the write: why the patch matters
    expect(reserved.exitCode).toBe(0);

    const types = await runProbe(unpatched, "types", true);
    expect(types.stderr).toContain("database driver fault outside any request; serving on: read ECONNRESET");
    expect(types.exitCode).toBe(0);
  });
});
