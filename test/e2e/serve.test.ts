import { access, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runBin, type ServerProcess, startServerProcess } from "../helpers/cli.js";

describe("formula-runner serve (real process)", () => {
  let dir: string;
  let server: ServerProcess | undefined;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fr-serve-"));
  });
  afterEach(async () => {
    await server?.stop("SIGKILL");
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it("serves /healthz and /readyz on the embedded database with no config, and stops cleanly on SIGTERM", async () => {
    server = await startServerProcess({ cwd: dir, env: {} });
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${server.url}/readyz`);
    expect(await ready.json()).toMatchObject({ status: "ready", database_kind: "pglite" });
    // Defaults: DATA_DIR is ./.formula-runner of the working directory.
    await access(path.join(dir, ".formula-runner", "api-token"));
    const exit = await server.stop("SIGTERM");
    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.lines.some((l) => l.includes('"msg":"stopped"'))).toBe(true);
    // The embedded database lock was released: migrate can open it now.
    const migrate = await runBin(["migrate"], { cwd: dir });
    expect(migrate.code).toBe(0);
    expect(migrate.stdout).toContain("database schema is up to date");
    // Creating the embedded database takes 15-25 s of this test's time on a loaded 2-core host.
  }, 150_000);

  it("refuses to start with a broken config, listing every problem", async () => {
    const result = await runBin(["serve"], { cwd: dir, env: { PORT: "http", FORMULA_RUNNER_CONFIG: "missing.toml" } });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("invalid configuration");
    expect(result.stderr).toMatch(/environment: PORT: expected an integer/);
    expect(result.stderr).toMatch(/missing\.toml: \(file\): file not found/);
  });
});
