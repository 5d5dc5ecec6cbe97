import { eq } from "drizzle-orm";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { runLogChunks, runs } from "../../db/schema/index.js";
import { createApp } from "../../src/app.js";
import { silentLogger } from "../../src/logger.js";
import { RunLog } from "../../src/runs/run-log.js";
import { SecretRegistry } from "../../src/secrets.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";

const SECRET = "sk-ant-very-secret-value-123";

describe.each(testBackends())("run logs in the database (%s)", (kind) => {
  let t: TestDatabase;
  let secrets: SecretRegistry;

  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(async () => {
    await t.cleanup();
  });
  beforeEach(async () => {
    await t.database.db.delete(runs);
    secrets = new SecretRegistry();
    secrets.add(SECRET);
  });

  async function insertRun(status: "running" | "done" = "running"): Promise<number> {
    const [run] = await t.database.db
      .insert(runs)
      .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "test", status })
      .returning({ id: runs.id });
    return (run as { id: number }).id;
  }

  it("stores output as scrubbed chunks of whole lines, a last partial line on flush", async () => {
    const runLog = new RunLog({ database: t.database, secrets, log: silentLogger(), flushDelayMs: 10 });
    const id = await insertRun();
    runLog.append(id, "first line\nthe key is ");
    runLog.append(id, `${SECRET}\nno newline at the end`);
    await runLog.flush(id);
    const stored = await runLog.read(id);
    expect(stored).toEqual({ text: "first line\nthe key is [redacted]\nno newline at the end", droppedBytes: 0 });
    const chunks = await t.database.db.select().from(runLogChunks).where(eq(runLogChunks.runId, id));
    expect(chunks.map((c) => c.data).join("")).not.toContain(SECRET);
    // Offsets are contiguous byte positions.
    let next = 0;
    for (const c of chunks.sort((a, b) => a.offset - b.offset)) {
      expect(c.offset).toBe(next);
      expect(c.bytes).toBe(Buffer.byteLength(c.data));
      next += c.bytes;
    }
  });

  it("keeps the tail when a run passes its cap, and a new writer continues after the stored end", async () => {
    const runLog = new RunLog({ database: t.database, secrets, log: silentLogger(), maxBytesPerRun: 1_000 });
    const id = await insertRun();
    for (let i = 0; i < 40; i++) {
      runLog.append(id, `line ${String(i).padStart(3, "0")} ${"x".repeat(90)}\n`);
      await runLog.flush(id);
    }
    const stored = await runLog.read(id);
    expect(stored.droppedBytes).toBeGreaterThan(0);
    expect(stored.text.endsWith(`line 039 ${"x".repeat(90)}\n`)).toBe(true);
    expect(stored.text.startsWith("line ")).toBe(true);
    expect(Buffer.byteLength(stored.text)).toBeLessThanOrEqual(1_000);
    expect(stored.droppedBytes + Buffer.byteLength(stored.text)).toBe(40 * 100);

    // Another instance (a takeover) appends after what is stored, not at 0.
    const other = new RunLog({ database: t.database, secrets, log: silentLogger(), maxBytesPerRun: 1_000 });
    other.append(id, "after the takeover\n");
    await other.flush(id);
    expect((await other.read(id)).text.endsWith(`line 039 ${"x".repeat(90)}\nafter the takeover\n`)).toBe(true);
  });

  it("serves the log and follows it to the end over HTTP, from the database", async () => {
    const services = testServices({ database: t.database });
    const app = createApp(services);
    const id = await insertRun();
    services.runLog.append(id, "=== session 1 started ===\nworking\n");
    await services.runLog.flush(id);
    const plain = await app.request(`/api/runs/${id}/log`, { headers: authHeaders });
    expect(plain.status).toBe(200);
    expect(await plain.text()).toBe("=== session 1 started ===\nworking\n");

    const response = await app.request(`/api/runs/${id}/log?follow=1`, { headers: authHeaders });
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    const readUntil = async (needle: string) => {
      while (!text.includes(needle)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`stream ended before ${JSON.stringify(needle)}:\n${text}`);
        text += decoder.decode(value, { stream: true });
      }
    };
    await readUntil("data: working");
    services.runLog.append(id, "more output\n");
    await services.runLog.flush(id);
    await readUntil("data: more output");
    await t.database.db.update(runs).set({ status: "done" }).where(eq(runs.id, id));
    await readUntil("event: end");
    expect(text).toMatch(/event: log\ndata: === session 1 started ===\ndata: working\nid: \d+\n/);
    expect(text).toContain('data: {"status":"done"}');

    // Resuming from an event id sends only what came after it.
    const lastId = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]).at(-2);
    const resumed = await app.request(`/api/runs/${id}/log?follow=1`, {
      headers: { ...authHeaders, "last-event-id": String(lastId) },
    });
    const rest = await resumed.text();
    expect(rest).toContain("data: more output");
    expect(rest).not.toContain("working");
  });

  it("sends a keep-alive comment on a quiet followed stream", { timeout: 60_000 }, async () => {
    const services = testServices({ database: t.database });
    const app = createApp(services);
    const id = await insertRun();
    const controller = new AbortController();
    const response = await app.request(`/api/runs/${id}/log?follow=1`, {
      headers: authHeaders,
      signal: controller.signal,
    });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes(": keep-alive")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(text).toBe(": keep-alive\n\n");
    controller.abort();
    await reader.cancel();
  });
});

// LISTEN/NOTIFY needs PostgreSQL: PGlite is one process, which wakes its own followers.
if (testBackends().includes("postgres")) {
  describe("run logs across instances on PostgreSQL", () => {
    let t: TestDatabase;
    beforeAll(async () => {
      t = await openTestDatabase("postgres");
    });
    afterAll(async () => {
      await t.cleanup();
    });

    it("wakes another instance's follower through NOTIFY", { timeout: 60_000 }, async () => {
      const secrets = new SecretRegistry();
      const writer = new RunLog({ database: t.database, secrets, log: silentLogger() });
      const follower = new RunLog({ database: t.database, secrets, log: silentLogger() });
      await follower.start();
      try {
        const [run] = await t.database.db
          .insert(runs)
          .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "t", status: "running" })
          .returning({ id: runs.id });
        const id = (run as { id: number }).id;
        // Without the notification the follower would sleep its full 30 s; the race says which came first.
        const woke = Promise.race([
          follower.waitForChange(id, 30_000).then(() => "notified"),
          new Promise((resolve) => setTimeout(() => resolve("not notified"), 25_000)),
        ]);
        writer.append(id, "from the other instance\n");
        await writer.flush(id);
        expect(await woke).toBe("notified");
        expect((await follower.read(id)).text).toBe("from the other instance\n");
      } finally {
        await follower.stop();
        await writer.stop();
      }
    });
  });
}
