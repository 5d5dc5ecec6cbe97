import { mkdir, stat } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runs, worktrees } from "../../db/schema/index.js";
import { startServer } from "../../src/server.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/** What a raw HTTP/1.1 exchange on one connection gave: the bytes answered and whether the server closed it. */
interface Exchange {
  text: string;
  closedByServer: boolean;
}

/**
 * Sends `head` and then `bodyBytes` bytes of body on a fresh connection, then `next` (a
 * second request) when the body is all written and the connection still open; resolves
 * when the server closes the connection or has answered `answers` responses.
 */
function exchange(port: number, head: string, bodyBytes: number, next: string, answers: number): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let text = "";
    let done = false;
    const finish = (closedByServer: boolean) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ text, closedByServer });
    };
    socket.on("data", (chunk) => {
      text += chunk.toString("latin1");
      if ((text.match(/HTTP\/1\.1 \d{3}/g) ?? []).length >= answers && /\r\n\r\n[\s\S]*\}\s*$/.test(text))
        finish(false);
    });
    socket.on("end", () => finish(true));
    socket.on("close", () => finish(true));
    // A reset while the body is still being written is the server closing too.
    socket.on("error", () => finish(true));
    socket.write(head);
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = () => {
      while (sent < bodyBytes && !socket.destroyed) {
        const piece = chunk.subarray(0, Math.min(chunk.length, bodyBytes - sent));
        sent += piece.length;
        if (!socket.write(piece)) return void socket.once("drain", pump);
      }
      if (!socket.destroyed) socket.write(next);
    };
    pump();
  });
}

const statusLines = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];
const connectionHeaders = (text: string) =>
  (text.match(/^connection: .*$/gim) ?? []).map((h) => h.trim().toLowerCase());

describe("HTTP connections, DATA_DIR modes and orphan adoption", () => {
  let t: TestServer;
  let release: () => void;
  let dir: string;
  let root: string;
  const logLines: { level: number; msg: string; adopted?: number }[] = [];
  const ORPHANS = 300;

  beforeAll(async () => {
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    // Orphans made before the server starts: directories under WORKTREE_ROOT nobody recorded.
    dir = await makeTempDir("fr-orphans-");
    root = path.join(dir, "worktrees");
    for (let i = 0; i < ORPHANS; i++)
      await mkdir(path.join(root, "demo", `dev-${900_000 + i}`, "src"), { recursive: true });
    t = await startTestServer({
      backend: "pglite",
      formulas: { dev: testFormula("dev", { agent: "done" }) },
      env: { LOG_LEVEL: "info", WORKTREE_ROOT: root },
      housekeepingAfter: held,
      logDestination: { write: (line: string) => void logLines.push(JSON.parse(line)) },
    });
  });
  afterAll(async () => {
    release?.();
    await t?.stop();
    await removeTempDir(dir);
  });

  const port = () => Number(new URL(t.url).port);
  const auth = `Authorization: Bearer ${TEST_TOKEN}\r\n`;
  const runsRequest = (length: number, type = "application/json") =>
    `POST /api/runs HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: ${type}\r\nContent-Length: ${length}\r\n\r\n`;
  const healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

  it("answers and serves while the adoption of 300 orphan directories has not run, then logs it in one line", async () => {
    // The port answers with the API (not 503 "starting") while the first round is held.
    const ready = await fetch(`${t.url}/readyz`);
    expect(ready.status).toBe(200);
    expect((await t.api("GET", "/api/worktrees?state=preserved")).body.worktrees).toEqual([]);

    release();
    const summary = await (async () => {
      for (;;) {
        const line = logLines.find((l) => l.msg.startsWith("housekeeping: recorded"));
        if (line) return line;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })();
    expect(summary).toMatchObject({ level: 40, adopted: ORPHANS });
    expect(summary.msg).toMatch(/^housekeeping: recorded 300 unrecorded worktree directories/);
    expect(logLines.filter((l) => /adopt/i.test(l.msg) && l !== summary)).toEqual([]);
    const rows = await t.db.database.rows<{ n: number }>(
      sql`select count(*)::int as n from ${worktrees} where ${worktrees.reason} = 'adopted'`,
    );
    expect(rows[0]?.n).toBe(ORPHANS);
  });

  it("records the unrecorded worktree of a run this instance left running, without the scan", async () => {
    const { instanceId } = t.server.services;
    const [run] = await t.db.database.db
      .insert(runs)
      .values({
        formula: "dev",
        project: "demo",
        triggerKind: "dispatch",
        triggerRef: "test",
        status: "crashed",
        instanceId,
      })
      .returning();
    const worktree = path.join(root, "demo", `dev-${run!.id}`);
    await mkdir(worktree, { recursive: true });
    const row = await t.server.services.worktrees.adoptRunDirectory(run!);
    expect(row).toMatchObject({ runId: run!.id, path: worktree, state: "active", reason: "adopted", instanceId });
    // Nothing to record for a run with no directory.
    expect(await t.server.services.worktrees.adoptRunDirectory({ ...run!, id: run!.id + 1000 })).toBeUndefined();
  });

  it("closes the connection after a 413 it answered before the body arrived, and says so", async () => {
    const size = 2 * 1024 * 1024;
    for (const head of [
      runsRequest(size),
      `POST /webhooks HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: d-413\r\nX-Hub-Signature-256: sha256=00\r\nContent-Type: application/json\r\nContent-Length: ${size}\r\n\r\n`,
    ]) {
      const { text, closedByServer } = await exchange(port(), head, size, healthz, 2);
      expect(statusLines(text)).toEqual(["HTTP/1.1 413"]);
      expect(connectionHeaders(text)).toEqual(["connection: close"]);
      expect(closedByServer).toBe(true);
    }
  });

  it("keeps the connection after rejecting a body it read in full (415, 404)", async () => {
    const body = '{"formula": "nope", "project": "demo"}';
    for (const [head, status] of [
      [runsRequest(body.length, "text/plain"), "HTTP/1.1 415"],
      [runsRequest(body.length), "HTTP/1.1 404"],
    ] as const) {
      const { text, closedByServer } = await exchange(port(), head + body, 0, healthz, 2);
      expect(statusLines(text), text).toEqual([status, "HTTP/1.1 200"]);
      expect(connectionHeaders(text).every((h) => h === "connection: keep-alive")).toBe(true);
      expect(closedByServer).toBe(false);
    }
  });

  it("keeps DATA_DIR private: directories 0700, files 0600, after a run", async () => {
    const created = await t.api("POST", "/api/runs", { formula: "dev", project: "demo" });
    expect(created.status).toBe(201);
    expect((await t.waitForRun(created.body.id)).status).toBe("done");
    const mode = async (p: string) => ((await stat(p)).mode & 0o777).toString(8);
    const runDir = path.join(t.dataDir, "runs", String(created.body.id));
    expect(await mode(t.dataDir)).toBe("700");
    expect(await mode(path.join(t.dataDir, "runs"))).toBe("700");
    expect(await mode(runDir)).toBe("700");
    expect(await mode(path.join(runDir, "agent"))).toBe("700");
    for (const file of ["log", "prompt.md", "instance-id"].map((f) =>
      f === "instance-id" ? path.join(t.dataDir, f) : path.join(runDir, f),
    )) {
      expect(`${file}: ${await mode(file)}`).toBe(`${file}: 600`);
    }
  });
});

describe("DATA_DIR of a first start on the embedded database", () => {
  it("creates the api-token 0600 and the PGlite directory 0700, and tightens a runs/ left open", async () => {
    const dir = await makeTempDir("fr-datadir-");
    const dataDir = path.join(dir, "data");
    await mkdir(path.join(dataDir, "runs"), { recursive: true, mode: 0o755 });
    const server = await startServer({
      env: { DATA_DIR: dataDir, PORT: "0", LOG_LEVEL: "silent" },
      cwd: dir,
      logDestination: { write: () => {} },
    });
    try {
      const mode = async (p: string) => ((await stat(p)).mode & 0o777).toString(8);
      expect(await mode(dataDir)).toBe("700");
      expect(await mode(path.join(dataDir, "runs"))).toBe("700");
      expect(await mode(path.join(dataDir, "api-token"))).toBe("600");
      expect(await mode(path.join(dataDir, "pgdata"))).toBe("700");
    } finally {
      await server.stop();
      await removeTempDir(dir);
    }
  });
});
