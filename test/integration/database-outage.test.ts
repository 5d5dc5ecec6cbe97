import { writeFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Database, openDatabase } from "../../db/client.js";
import { createApp } from "../../src/app.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

async function expectUnavailable(res: Response): Promise<void> {
  expect(res.status).toBe(503);
  expect(res.headers.get("retry-after")).toBe("5");
  expect(await res.json()).toMatchObject({
    error: { code: "unavailable", message: "database unavailable; try again later" },
  });
}

/**
 * A server that answers every connection as PostgreSQL does while it starts up or shuts
 * down: an ErrorResponse with SQLSTATE 57P03, then it hangs up.
 */
async function startingUpServer(): Promise<{ port: number; close(): Promise<void> }> {
  const fields = ["SFATAL", "VFATAL", "C57P03", "Mthe database system is starting up"].map((f) => `${f}\0`).join("");
  const body = Buffer.from(`${fields}\0`);
  const head = Buffer.alloc(5);
  head.write("E", 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", () => socket.end(Buffer.concat([head, body])));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("database out of reach", () => {
  let database: Database | undefined;
  afterEach(async () => {
    await database?.close();
    database = undefined;
  });

  it("answers API calls with 503 and Retry-After while the database is starting up", async () => {
    const server = await startingUpServer();
    try {
      database = await openDatabase({ url: `postgres://runner@127.0.0.1:${server.port}/formula_runner` });
      const app = createApp(testServices({ database }));
      await expectUnavailable(await app.request("/api/runs", { headers: authHeaders }));
      await expectUnavailable(await app.request("/api/worktrees", { headers: authHeaders }));
      await expectUnavailable(await app.request("/api/runs/1", { headers: authHeaders }));
      // Readiness says so too, with the same hint.
      const ready = await app.request("/readyz");
      expect(ready.status).toBe(503);
      expect(ready.headers.get("retry-after")).toBe("5");
    } finally {
      await server.close();
    }
  });

  it("answers 503 when nothing listens at all", async () => {
    const closed = await startTcpProxy({ host: "127.0.0.1", port: 9 });
    const port = closed.port;
    await closed.close();
    database = await openDatabase({ url: `postgres://runner@127.0.0.1:${port}/formula_runner` });
    const app = createApp(testServices({ database }));
    await expectUnavailable(await app.request("/api/runs", { headers: authHeaders }));
  });
});

describe.each(testBackends().filter((kind) => kind === "postgres"))("%s behind a proxy that cuts", (kind) => {
  let t: TestDatabase;
  let proxy: TcpProxy;
  let database: Database;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    const direct = new URL(t.url as string);
    proxy = await startTcpProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
    const via = new URL(direct);
    via.host = `127.0.0.1:${proxy.port}`;
    via.search = "";
    database = await openDatabase({ url: via.toString(), searchPath: direct.searchParams.get("search_path") ?? "" });
  });
  afterAll(async () => {
    await database.close();
    await proxy.close();
    await t.cleanup();
  });

  it("serves, answers 503 while cut off, and serves again once the database is back", async () => {
    const app = createApp(testServices({ database }));
    expect((await app.request("/api/runs", { headers: authHeaders })).status).toBe(200);
    proxy.refuse(true);
    proxy.cut();
    await expectUnavailable(await app.request("/api/runs", { headers: authHeaders }));
    proxy.refuse(false);
    expect((await app.request("/api/runs", { headers: authHeaders })).status).toBe(200);
  });
});

describe("readiness and the disk", () => {
  let t: TestDatabase;
  let base: string;
  beforeAll(async () => {
    t = await openTestDatabase("pglite");
    base = await makeTempDir("fr-readyz-");
    await writeFile(join(base, "a-file"), "not a directory\n");
  });
  afterAll(async () => {
    await t.cleanup();
    await cleanupTempDirs();
  });

  it("is ready when DATA_DIR and WORKTREE_ROOT take files, a missing WORKTREE_ROOT included", async () => {
    const env = { DATA_DIR: base, WORKTREE_ROOT: join(base, "worktrees-not-made-yet") };
    const res = await createApp(testServices({ database: t.database, env })).request("/readyz");
    expect(res.status).toBe(200);
  });

  it("is not ready when DATA_DIR cannot take a file", async () => {
    const env = { DATA_DIR: join(base, "a-file", "data"), WORKTREE_ROOT: join(base, "wt") };
    const res = await createApp(testServices({ database: t.database, env })).request("/readyz");
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({
      error: {
        code: "unavailable",
        message: expect.stringMatching(/^DATA_DIR not writable: ENOTDIR/),
        data_dir: "not writable",
      },
    });
  });

  it("is not ready when WORKTREE_ROOT cannot take a file", async () => {
    const full = await makeTempDir("fr-readyz-data-");
    const env = { DATA_DIR: full, WORKTREE_ROOT: join(base, "a-file") };
    const res = await createApp(testServices({ database: t.database, env })).request("/readyz");
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: { worktree_root: "not writable" } });
  });
});
