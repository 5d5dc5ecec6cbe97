import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningServer, startServer } from "../../src/server.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { createTestRepo } from "../helpers/git.js";

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

  it("fails fast on a port in use, before the database is opened", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fr-busyport-"));
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      await expect(
        startServer({ env: { DATA_DIR: dir, PORT: String(port) }, cwd: dir, logDestination: { write: () => {} } }),
      ).rejects.toThrow(`port ${port} on 127.0.0.1 is already in use (another formula-runner?); stop it or set PORT`);
      expect(existsSync(path.join(dir, "pgdata"))).toBe(false);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("answers 503 'starting' on its port while the embedded database is created, then serves", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fr-starting-"));
    let bound: (url: string) => void = () => {};
    const boundUrl = new Promise<string>((resolve) => (bound = resolve));
    const logDestination = {
      write: (line: string) => {
        const match = /"msg":"bound (http:\/\/[^;]+);/.exec(line);
        if (match?.[1]) bound(match[1]);
      },
    };
    try {
      const starting = startServer({ env: { DATA_DIR: dir, PORT: "0", FORMULAS_DIR: dir }, cwd: dir, logDestination });
      const url = await boundUrl;
      // Creating PGlite's data directory takes seconds: the port already answers.
      const ready = await fetch(`${url}/readyz`);
      expect(ready.status).toBe(503);
      expect(ready.headers.get("retry-after")).toBe("5");
      expect(((await ready.json()) as { error: { message: string } }).error.message).toMatch(/^starting \(/);
      expect(await (await fetch(`${url}/healthz`)).json()).toMatchObject({ status: "starting" });
      const server = await starting;
      expect(server.url).toBe(url);
      expect((await fetch(`${url}/readyz`)).status).toBe(200);
      await server.stop();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses a repo_path that is no git clone, or has no origin, before serving", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fr-clones-"));
    const repo = await createTestRepo({ files: { "README.md": "x\n" } });
    try {
      await writeFile(
        path.join(dir, "formula-runner.toml"),
        [
          ["missing", path.join(dir, "nowhere")],
          ["plain", dir],
          ["good", repo.clone],
        ]
          .map(
            ([name, repoPath]) =>
              `[[projects]]\nname = "${name}"\nrepo_path = ${JSON.stringify(repoPath)}\nrepo = "acme/${name}"\n`,
          )
          .join("\n"),
      );
      const error = await startServer({
        env: { DATA_DIR: path.join(dir, "data"), PORT: "0", PATH: process.env.PATH ?? "/usr/bin:/bin" },
        cwd: dir,
        logDestination: { write: () => {} },
      }).catch((e: unknown) => e);
      expect((error as { problems: string[] }).problems).toEqual([
        `project missing: repo_path ${path.join(dir, "nowhere")} does not exist; clone the repository there (git clone <url of acme/missing> ${path.join(dir, "nowhere")}) or fix repo_path in the config file`,
        `project plain: repo_path ${dir} is not a git clone; clone acme/plain there or fix repo_path`,
      ]);
      expect(existsSync(path.join(dir, "data", "pgdata"))).toBe(false);
    } finally {
      await repo.cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
