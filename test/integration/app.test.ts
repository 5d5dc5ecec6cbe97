import { Hono } from "hono";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type AppEnv, createApp } from "../../src/app.js";
import { AppError } from "../../src/errors.js";
import { openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";

describe("createApp", () => {
  let t: TestDatabase;
  beforeEach(async () => {
    t = await openTestDatabase("pglite");
  });
  afterEach(async () => {
    await t.cleanup();
  });

  it("is not ready when the database does not answer, and says why", async () => {
    const app = createApp(testServices({ database: t.database }));
    expect((await app.request("/readyz")).status).toBe(200);
    await t.database.close();
    const res = await app.request("/readyz");
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({
      error: {
        code: "unavailable",
        message: expect.stringMatching(/^database unavailable: /),
        database: "unavailable",
      },
    });
    // Liveness does not depend on the database.
    expect((await app.request("/healthz")).status).toBe(200);
  });

  it("is not ready once shutdown has begun", async () => {
    const services = testServices({ database: t.database });
    const app = createApp(services);
    services.intake.accepting = false;
    const res = await app.request("/readyz");
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: { code: "unavailable", message: "shutting down" } });
  });

  it("maps AppError codes to statuses and hides the internals of unexpected errors", async () => {
    const lines: string[] = [];
    const app = createApp(testServices({ database: t.database, logLines: lines }));
    const extra = new Hono<AppEnv>();
    extra.get("/api/conflict", () => {
      throw new AppError({ code: "conflict", message: "worktree is active", details: { id: 7 } });
    });
    extra.get("/api/boom", () => {
      throw new Error("secret internals: password=hunter2");
    });
    app.route("/", extra);

    const conflict = await app.request("/api/conflict", { headers: authHeaders });
    expect(conflict.status).toBe(409);
    expect(await conflict.json()).toMatchObject({ error: { code: "conflict", message: "worktree is active", id: 7 } });

    const boom = await app.request("/api/boom", { headers: authHeaders });
    expect(boom.status).toBe(500);
    const body = (await boom.json()) as { error: { code: string; message: string; request_id: string } };
    expect(body.error.code).toBe("internal");
    expect(JSON.stringify(body)).not.toContain("hunter2");
    expect(body.error.request_id).toBeTruthy();
    // The log keeps the cause, tied to the same request id.
    expect(lines.some((l) => l.includes("hunter2") && l.includes(body.error.request_id))).toBe(true);
  });

  it("scrubs known secret values from log lines, whatever field holds them", async () => {
    const lines: string[] = [];
    const services = testServices({ database: t.database, logLines: lines });
    services.log.info({ note: `token is ${services.apiToken.reveal()}` }, `message with ${services.apiToken.reveal()}`);
    services.log.info({ authorization: "Bearer abc", headers: { authorization: "x" } }, "by path");
    const text = lines.join("");
    expect(text).not.toContain(services.apiToken.reveal());
    expect(text).toContain("[redacted]");
    expect(text).not.toContain("Bearer abc");
  });
});
