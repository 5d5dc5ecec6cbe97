import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningServer, startServer } from "../../src/server.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";

describe.each(testBackends())("server skeleton on %s", (kind) => {
  let dir: string;
  let server: RunningServer;
  let testDb: TestDatabase | undefined;
  const lines: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fr-server-"));
    const env: Record<string, string> = {
      DATA_DIR: path.join(dir, "data"),
      PORT: "0",
      FORMULAS_DIR: path.join(dir, "formulas"),
    };
    if (kind === "postgres") {
      testDb = await openTestDatabase("postgres");
      env.DATABASE_URL = testDb.url as string;
    }
    server = await startServer({ env, cwd: dir, logDestination: { write: (line: string) => lines.push(line) } });
  });

  afterAll(async () => {
    await server?.stop();
    await testDb?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it("answers /healthz and /readyz over HTTP", async () => {
    const health = await fetch(`${server.url}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: "ok", instance_id: server.services.instanceId });
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: "ready", database: "ok", database_kind: kind });
    expect(health.headers.get("x-request-id")).toMatch(/\S+/);
  });

  it("generates the API token once, mode 0600, and never logs it", async () => {
    const file = path.join(dir, "data", "api-token");
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const token = (await readFile(file, "utf8")).trim();
    expect(token.length).toBeGreaterThanOrEqual(40);
    expect(server.services.apiToken.reveal()).toBe(token);
    const log = lines.join("");
    expect(log).toContain(file);
    expect(log).not.toContain(token);
  });

  it("says in its log that it runs with zero projects when there is no config file", () => {
    expect(lines.some((l) => l.includes("running with zero projects"))).toBe(true);
  });

  it("guards /api/* with the bearer token and answers errors in the envelope", async () => {
    const missing = await fetch(`${server.url}/api/runs`);
    expect(missing.status).toBe(401);
    expect(missing.headers.get("www-authenticate")).toMatch(/^Bearer/);
    const body = (await missing.json()) as { error: { code: string; message: string; request_id: string } };
    expect(body.error).toMatchObject({ code: "unauthorized", message: expect.stringMatching(/missing/) });
    expect(body.error.request_id).toBe(missing.headers.get("x-request-id"));

    const wrong = await fetch(`${server.url}/api/runs`, { headers: { authorization: "Bearer nope" } });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as { error: { message: string } }).error.message).toBe("invalid API token");

    const right = await fetch(`${server.url}/api/nothing-here`, {
      headers: { authorization: `Bearer ${server.services.apiToken.reveal()}` },
    });
    expect(right.status).toBe(404);
    expect(await right.json()).toMatchObject({
      error: { code: "not_found", message: "no route for GET /api/nothing-here" },
    });
  });

  it("registers its instance in the database", async () => {
    const rows = await server.services.database.db.query.instances.findMany();
    expect(rows.map((r) => r.id)).toContain(server.services.instanceId);
  });
});

describe("server start-up", () => {
  it("reuses the instance id and API token across restarts, and stop() is idempotent", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fr-restart-"));
    const env = { DATA_DIR: dir, PORT: "0", FORMULAS_DIR: dir };
    const quiet = { write: () => {} };
    try {
      const first = await startServer({ env, cwd: dir, logDestination: quiet });
      const { instanceId, apiToken } = first.services;
      await Promise.all([first.stop(), first.stop()]);
      await first.stop();
      const second = await startServer({ env, cwd: dir, logDestination: quiet });
      expect(second.services.instanceId).toBe(instanceId);
      expect(second.services.apiToken.reveal()).toBe(apiToken.reveal());
      const ready = await fetch(`${second.url}/readyz`);
      expect(ready.status).toBe(200);
      await second.stop();
      await expect(fetch(`${second.url}/healthz`)).rejects.toThrow();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("fails with every config problem before opening anything", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fr-badconf-"));
    try {
      await expect(
        startServer({ env: { DATA_DIR: dir, PORT: "x", FORMULA_RUNNER_CONFIG: "nope.toml" }, cwd: dir }),
      ).rejects.toMatchObject({ problems: [expect.stringMatching(/PORT/), expect.stringMatching(/nope\.toml/)] });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
