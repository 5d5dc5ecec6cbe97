import { Validator } from "@seriousme/openapi-schema-validator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { worktrees } from "../../db/schema/index.js";
import { API_OPERATIONS, findOperation } from "../../routes/openapi.js";
import { createApp } from "../../src/app.js";
import { loadFixture, signedWebhook } from "../helpers/sign-webhook.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";

const SECRET = "openapi-webhook-secret";

describe("the API described as OpenAPI 3.1", () => {
  let t: TestServer;
  const exercised = new Set<string>();

  beforeAll(async () => {
    t = await startTestServer({
      backend: "pglite",
      env: { DEMO_SECRET: SECRET },
      project: { webhook_secret_env: "DEMO_SECRET" },
      formulas: {
        quick: testFormula("quick"),
        crash: testFormula("crash", { agent: "crash" }),
        ask: testFormula("ask", { agent: "escalate", escalation_timeout: "1h" }),
        hold: testFormula("hold", { agent: "hang", timeout: "60s" }),
        nightly: testFormula("nightly", { on: { dispatch: false } }),
      },
      agents: { crash: "crash-always", escalate: "escalate", hang: "hang" },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  /**
   * A request whose answer must match the document: a documented status, and a body that
   * passes the operation's response schema (or text of the documented kind).
   */
  const call = async (
    method: string,
    route: string,
    options: { body?: unknown; raw?: string; headers?: Record<string, string>; token?: boolean } = {},
  ) => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token !== false) headers.authorization = `Bearer ${TEST_TOKEN}`;
    if (options.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(`${t.url}${route}`, {
      method,
      headers,
      body: options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body)),
    });
    const pathname = new URL(route, t.url).pathname;
    const op = findOperation(method, pathname);
    expect(op, `${method} ${pathname} is documented`).toBeDefined();
    const documented = op?.responses[res.status];
    expect(documented, `${method} ${op?.path} documents status ${res.status}`).toBeDefined();
    const text = await res.text();
    if (documented?.schema) {
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      const parsed = documented.schema.safeParse(JSON.parse(text));
      expect(parsed.success, `${method} ${route} ${res.status}: ${parsed.error?.message}\n${text.slice(0, 500)}`).toBe(
        true,
      );
    } else {
      expect(res.headers.get("content-type")).toMatch(/^text\//);
    }
    exercised.add(`${op?.method} ${op?.path}`);
    return { status: res.status, text, json: () => JSON.parse(text) };
  };

  it("serves a document that validates as OpenAPI 3.1, with the bearer scheme and the error envelope", async () => {
    const res = await fetch(`${t.url}/openapi.json`);
    expect(res.status).toBe(200);
    const document = (await res.json()) as Record<string, any>;
    expect(document.openapi).toBe("3.1.0");
    const validator = new Validator();
    const result = await validator.validate(document);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
    expect(validator.version).toBe("3.1");
    expect(document.components.securitySchemes.bearer).toMatchObject({ type: "http", scheme: "bearer" });
    expect(document.components.schemas.Error.properties.error.required).toEqual(["code", "message"]);
    expect(document.paths["/api/runs"].get.security).toEqual([{ bearer: [] }]);
    expect(document.paths["/healthz"].get.security).toBeUndefined();
    expect(document.paths["/api/runs"].post.requestBody.content["application/json"].schema.required).toEqual([
      "formula",
    ]);
  });

  it("documents every route of the API", () => {
    const app = createApp(t.server.services);
    const served = new Set(
      app.routes
        .filter((r) => ["GET", "POST", "DELETE", "PUT", "PATCH"].includes(r.method))
        .filter((r) => /^\/(api\/|webhooks$|healthz$|readyz$|metrics$)/.test(r.path))
        .map((r) => `${r.method.toLowerCase()} ${r.path.replace(/:(\w+)/g, "{$1}")}`),
    );
    const documented = new Set(API_OPERATIONS.map((op) => `${op.method} ${op.path}`));
    expect([...served].filter((r) => !documented.has(r))).toEqual([]);
    expect([...documented].filter((r) => !served.has(r))).toEqual([]);
  });

  it("answers every operation as documented", async () => {
    // Probes and metrics, without a token.
    await call("GET", "/healthz", { token: false });
    await call("GET", "/readyz", { token: false });
    expect((await call("GET", "/metrics", { token: false })).text).toContain("# HELP");

    // Webhooks: accepted (nothing fires on a ping), duplicate, bad signature.
    const ping = loadFixture("github/ping.json");
    ping.repository.full_name = "acme/demo";
    const signed = signedWebhook({ forge: "github", event: "ping", payload: ping, secret: SECRET });
    expect((await call("POST", "/webhooks", { raw: signed.body, headers: signed.headers, token: false })).status).toBe(
      202,
    );
    expect((await call("POST", "/webhooks", { raw: signed.body, headers: signed.headers, token: false })).status).toBe(
      200,
    );
    const forged = signedWebhook({ forge: "github", event: "ping", payload: ping, secret: "wrong" });
    expect((await call("POST", "/webhooks", { raw: forged.body, headers: forged.headers, token: false })).status).toBe(
      401,
    );

    // Formulas.
    expect((await call("GET", "/api/formulas", { token: false })).status).toBe(401);
    expect((await call("GET", "/api/formulas")).status).toBe(200);
    expect((await call("POST", "/api/formulas/reload")).status).toBe(200);

    // Runs.
    expect((await call("POST", "/api/runs", { body: { formula: "quick", nonsense: 1 } })).status).toBe(400);
    expect((await call("POST", "/api/runs", { body: { formula: "nope" } })).status).toBe(404);
    expect((await call("POST", "/api/runs", { body: { formula: "nightly" } })).status).toBe(403);
    const quick = (await call("POST", "/api/runs", { body: { formula: "quick", issue: 3 } })).json();
    await t.waitForRun(quick.id);
    expect((await call("GET", "/api/runs?limit=1")).json().runs).toHaveLength(1);
    expect((await call("GET", "/api/runs?status=bogus")).status).toBe(400);
    expect((await call("GET", `/api/runs/${quick.id}`)).status).toBe(200);
    expect((await call("GET", "/api/runs/999999")).status).toBe(404);
    expect((await call("GET", `/api/runs/${quick.id}/log`)).status).toBe(200);
    expect((await call("GET", `/api/runs/${quick.id}/log?follow=1`)).text).toContain("event: end");
    expect((await call("POST", `/api/runs/${quick.id}/cancel`)).status).toBe(409);
    expect((await call("POST", `/api/runs/${quick.id}/reply`, { body: { body: "hi" } })).status).toBe(409);

    const hold = (await call("POST", "/api/runs", { body: { formula: "hold" } })).json();
    await t.waitForRun(hold.id, ["running"]);
    expect((await call("POST", `/api/runs/${hold.id}/outputs`, { body: { nonsense: true } })).status).toBe(400);
    const handedIn = await call("POST", `/api/runs/${hold.id}/outputs`, { body: { type: "comment", body: "hi" } });
    expect(handedIn.status).toBe(202);
    expect((await call("POST", `/api/runs/${quick.id}/outputs`, { body: { type: "comment", body: "x" } })).status).toBe(
      409,
    );
    expect((await call("POST", `/api/runs/${hold.id}/cancel`)).status).toBe(200);
    expect(
      (await call("POST", `/api/runs/${hold.id}/outputs`, { body: { type: "comment", body: "late" } })).status,
    ).toBe(409);

    const ask = (await call("POST", "/api/runs", { body: { formula: "ask" } })).json();
    await t.waitForRun(ask.id, ["escalated"]);
    expect((await call("POST", `/api/runs/${ask.id}/reply`, { body: { body: "" } })).status).toBe(400);
    expect((await call("POST", `/api/runs/${ask.id}/reply`, { body: { body: "go on" } })).status).toBe(202);
    await t.waitForRun(ask.id, ["done"]);
    expect((await call("GET", `/api/runs/${ask.id}`)).json().escalations[0].state).toBe("answered");

    // Worktrees.
    const crash = (await call("POST", "/api/runs", { body: { formula: "crash" } })).json();
    const crashed = await t.waitForRun(crash.id);
    expect((await call("GET", "/api/worktrees?state=preserved")).json().worktrees.length).toBeGreaterThan(0);
    expect((await call("GET", "/api/worktrees?state=gone")).status).toBe(400);
    expect((await call("GET", `/api/worktrees/${crashed.worktree.id}`)).status).toBe(200);
    expect((await call("GET", "/api/worktrees/999999")).status).toBe(404);
    const preview = await call("POST", "/api/worktrees/purge", { body: { older_than_hours: 0, dry_run: true } });
    expect(preview.json().purged.length).toBeGreaterThan(0);
    expect((await call("POST", "/api/worktrees/purge", { body: { older_than_hours: -1 } })).status).toBe(400);
    expect((await call("DELETE", `/api/worktrees/${crashed.worktree.id}`)).json().worktree.state).toBe("removed");
    expect((await call("DELETE", "/api/worktrees/999999")).status).toBe(404);
    // A worktree on another instance's disk: that instance is asked to remove it.
    const [elsewhere] = await t.db.database.db
      .insert(worktrees)
      .values({
        project: "demo",
        formula: "crash",
        path: `${t.worktreeRoot}/demo/elsewhere-1`,
        state: "preserved",
        instanceId: "another-instance",
      })
      .returning();
    const asked = await call("DELETE", `/api/worktrees/${elsewhere?.id}`);
    expect(asked.status).toBe(202);
    expect((await call("GET", `/api/requests/${asked.json().request_id}`)).json().request).toMatchObject({
      kind: "delete_worktree",
      instance_id: "another-instance",
      state: "pending",
    });
    expect((await call("GET", "/api/requests/999999")).status).toBe(404);
    expect((await call("POST", "/api/worktrees/purge", { body: { older_than_hours: 0 } })).status).toBe(200);

    // Deliveries.
    expect((await call("GET", "/api/deliveries")).json().deliveries.length).toBeGreaterThan(0);
    expect((await call("GET", "/api/deliveries?outcome=maybe")).status).toBe(400);

    const documented = API_OPERATIONS.map((op) => `${op.method} ${op.path}`);
    expect(documented.filter((op) => !exercised.has(op))).toEqual([]);
  }, 120_000);

  it("serves the interactive reference at /docs from this server alone", async () => {
    const page = await fetch(`${t.url}/docs`);
    expect(page.status).toBe(200);
    const html = await page.text();
    const sources = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] as string);
    expect(sources.filter((s) => !s.startsWith("/") && !s.startsWith("data:"))).toEqual([]);
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    for (const asset of sources.filter((s) => s.startsWith("/docs/"))) {
      const res = await fetch(`${t.url}${asset}`);
      expect(res.status, asset).toBe(200);
      expect((await res.arrayBuffer()).byteLength, asset).toBeGreaterThan(100);
    }
  });
});
