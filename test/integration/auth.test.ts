import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../../src/app.js";
import { openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";

describe("API authentication", () => {
  let t: TestDatabase;
  let app: ReturnType<typeof createApp>;
  let routes: { method: string; path: string }[];
  beforeAll(async () => {
    t = await openTestDatabase("pglite");
    app = createApp(testServices({ database: t.database }));
    // Every route the app has under /api, so a route added later is covered too.
    routes = app.routes
      .filter((r) => r.path.startsWith("/api/") && r.method !== "ALL")
      .map((r) => ({ method: r.method, path: r.path.replaceAll(/:\w+/g, "1") }));
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it("knows the routes of the design", () => {
    const names = routes.map((r) => `${r.method} ${r.path}`);
    for (const expected of [
      "POST /api/runs",
      "GET /api/runs",
      "GET /api/runs/1",
      "GET /api/runs/1/log",
      "POST /api/runs/1/cancel",
      "GET /api/worktrees",
      "DELETE /api/worktrees/1",
      "POST /api/worktrees/purge",
    ]) {
      expect(names).toContain(expected);
    }
  });

  it.each([
    ["no Authorization header", {}, /missing/],
    ["a wrong token", { authorization: "Bearer wrong-token" }, /invalid API token/],
    [
      "the right token with another scheme",
      { authorization: `Basic ${authHeaders.authorization.slice(7)}` },
      /invalid API token/,
    ],
    ["an empty bearer", { authorization: "Bearer " }, /invalid API token/],
  ])("answers 401 on every /api route for %s", async (_name, headers, message) => {
    for (const route of routes) {
      const res = await app.request(route.path, {
        method: route.method,
        headers: { ...headers, "content-type": "application/json" },
        body: route.method === "GET" ? undefined : "{}",
      });
      expect(res.status, `${route.method} ${route.path}`).toBe(401);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe("unauthorized");
      expect(body.error.message).toMatch(message);
    }
  });

  it("lets the right token through", async () => {
    const res = await app.request("/api/runs", { headers: authHeaders });
    expect(res.status).toBe(200);
  });

  it("leaves /healthz and /readyz open", async () => {
    expect((await app.request("/healthz")).status).toBe(200);
    expect((await app.request("/readyz")).status).toBe(200);
  });
});
