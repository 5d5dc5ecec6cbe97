import { createHmac, randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import fc from "fast-check";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createApp } from "../../src/app.js";
import { testBackends } from "../helpers/db.js";
import { type FakeForge, startFakeForge } from "../helpers/fake-forge.js";
import { loadFixture, signedWebhook } from "../helpers/sign-webhook.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";

const SECRET = "webhook-secret-for-tests-123";
const OTHER_SECRET = "another-projects-secret-456";

/** A fixture re-pointed at the test project. */
function fixture(file: string, edit: (payload: any) => void = () => {}) {
  const payload = loadFixture(file);
  payload.repository.full_name = "acme/demo";
  edit(payload);
  return payload;
}

describe.each(testBackends())("POST /webhooks on %s", (backend) => {
  let t: TestServer;
  let forge: FakeForge;

  beforeAll(async () => {
    forge = await startFakeForge({ tokens: { "forge-token-abcdef": "runner-bot" } });
    t = await startTestServer({
      backend,
      env: { DEMO_WEBHOOK_SECRET: SECRET, DEMO_FORGE_TOKEN: "forge-token-abcdef", OTHER_SECRET },
      project: {
        webhook_secret_env: "DEMO_WEBHOOK_SECRET",
        token_env: "DEMO_FORGE_TOKEN",
        forge_url: forge.url,
        bot_login: "runner-bot",
      },
      extraConfig: [
        "[[projects]]",
        'name = "open"',
        'repo_path = "{clone}"',
        'repo = "acme/open"',
        'formulas = ["*"]',
        "",
        "[[projects]]",
        'name = "tea"',
        'repo_path = "{clone}"',
        'repo = "acme/tea"',
        'formulas = ["*"]',
        'forge = "gitea"',
        `forge_url = "${forge.giteaUrl}"`,
        'webhook_secret_env = "OTHER_SECRET"',
        'token_env = "DEMO_FORGE_TOKEN"',
        "",
        // Lists no formula: webhooks fire nothing on it.
        "[[projects]]",
        'name = "quiet"',
        'repo_path = "{clone}"',
        'repo = "acme/quiet"',
        'webhook_secret_env = "DEMO_WEBHOOK_SECRET"',
        'token_env = "DEMO_FORGE_TOKEN"',
        `forge_url = "${forge.url}"`,
      ].join("\n"),
      formulas: {
        triage: testFormula("triage", { agent: "hang", timeout: "60s", on: {} }).replace(
          "[on]\ndispatch = true",
          '[on]\ndispatch = true\n[on.issues]\ntypes = ["labeled"]\nlabels = ["bug", "agent:fix"]',
        ),
        dev: testFormula("dev", { agent: "hang", timeout: "60s" }).replace(
          "[on]\ndispatch = true",
          '[on]\ndispatch = true\n[on.issue_comment]\ntypes = ["created"]\ncommand = "/run dev"',
        ),
        review: testFormula("review", {
          agent: "hang",
          timeout: "60s",
          guards: { min_permission: "admin", concurrency: "" },
        }).replace(
          "[on]\ndispatch = true",
          '[on]\ndispatch = true\n[on.pull_request]\ntypes = ["opened", "synchronize"]',
        ),
      },
      agents: { hang: "hang" },
    });
    for (const login of ["Codertocat", "acme", "alice"]) forge.setPermission("acme/demo", login, "write");
    forge.setPermission("acme/tea", "acme", "write");
    forge.setPermission("acme/quiet", "Codertocat", "admin");
    forge.setPermission("acme/tea", "alice", "admin");
  });
  afterAll(async () => {
    await t?.stop();
    await forge?.close();
  });
  beforeEach(async () => {
    // Runs from one test must not hold the concurrency keys of the next.
    await t.db.database.rows(sql`update runs set status = 'cancelled' where status in ('queued', 'running')`);
  });

  const send = (opts: {
    forge?: "github" | "gitea" | "forgejo";
    event: string;
    payload: unknown;
    secret?: string;
    deliveryId?: string;
    contentType?: "json" | "form";
  }) => {
    const signed = signedWebhook({
      forge: opts.forge ?? "github",
      event: opts.event,
      payload: opts.payload,
      secret: opts.secret ?? SECRET,
      deliveryId: opts.deliveryId,
      contentType: opts.contentType,
    });
    return fetch(`${t.url}/webhooks`, { method: "POST", headers: signed.headers, body: signed.body });
  };
  const count = async (table: "deliveries" | "runs") =>
    (await t.db.database.rows<{ n: number }>(sql.raw(`select count(*)::int as n from ${table}`)))[0]?.n ?? 0;

  it("fires a labeled issue's formula: 202 with the run, recorded with its delivery", async () => {
    const deliveryId = randomUUID();
    const res = await send({ event: "issues", payload: fixture("github/issues.labeled.json"), deliveryId });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { delivery: string; duplicate: boolean; runs: number[] };
    expect(body).toMatchObject({ delivery: deliveryId, duplicate: false, project: "demo" });
    expect(body.runs).toHaveLength(1);
    const run = (await t.api("GET", `/api/runs/${body.runs[0]}`)).body;
    expect(run).toMatchObject({
      formula: "triage",
      project: "demo",
      issue: 1,
      trigger: { kind: "webhook", ref: deliveryId },
    });
    const [stored] = (await t.api("GET", "/api/deliveries?limit=1")).body.deliveries;
    expect(stored).toMatchObject({
      id: deliveryId,
      forge: "github",
      event: "issues",
      action: "labeled",
      outcome: "queued",
      sender: "Codertocat",
      runs: body.runs,
    });
  });

  it("takes GitHub's default form-encoded deliveries like JSON ones, the signature checked on the body as sent", async () => {
    const payload = fixture("github/issue_comment.created.json", (p) => (p.comment.body = "/run dev please & thanks"));
    const results = [];
    for (const contentType of ["json", "form"] as const) {
      const res = await send({ event: "issue_comment", payload, contentType });
      expect(res.status).toBe(202);
      const body = (await res.json()) as { runs: number[] };
      expect(body.runs).toHaveLength(1);
      const run = (await t.api("GET", `/api/runs/${body.runs[0]}`)).body;
      results.push({ formula: run.formula, issue: run.issue, trigger: run.trigger.kind });
      await t.api("POST", `/api/runs/${body.runs[0]}/cancel`);
    }
    expect(results[1]).toEqual(results[0]);
    expect(results[0]).toEqual({ formula: "dev", issue: payload.issue.number, trigger: "webhook" });

    // Signed over the JSON but sent as a form: the bytes differ, so the signature does not match.
    const json = JSON.stringify(payload);
    const form = new URLSearchParams({ payload: json }).toString();
    const mismatched = signedWebhook({ forge: "github", event: "issue_comment", payload: json, secret: SECRET });
    mismatched.headers["Content-Type"] = "application/x-www-form-urlencoded";
    expect((await fetch(`${t.url}/webhooks`, { method: "POST", headers: mismatched.headers, body: form })).status).toBe(
      401,
    );
    // A form without the payload field.
    const noPayload = signedWebhook({ forge: "github", event: "issue_comment", payload: "other=1", secret: SECRET });
    noPayload.headers["Content-Type"] = "application/x-www-form-urlencoded";
    const empty = await fetch(`${t.url}/webhooks`, {
      method: "POST",
      headers: noPayload.headers,
      body: noPayload.body,
    });
    expect(empty.status).toBe(400);
    expect(((await empty.json()) as { error: { message: string } }).error.message).toBe(
      "the form-encoded body has no payload field",
    );
  });

  it("fires nothing on a project that lists no formula, and records why", async () => {
    const deliveryId = randomUUID();
    const payload = fixture("github/issues.labeled.json", (p) => (p.repository.full_name = "acme/quiet"));
    const res = await send({ event: "issues", payload, deliveryId });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { runs: number[]; ignored: string; project: string };
    expect(body).toMatchObject({ runs: [], project: "quiet" });
    expect(body.ignored).toBe(
      "triage would fire on issues/labeled but project quiet does not run it (list it in the project's formulas = [...])",
    );
    const stored = (await t.api("GET", "/api/deliveries?limit=5")).body.deliveries.find(
      (d: { id: string }) => d.id === deliveryId,
    );
    expect(stored).toMatchObject({ outcome: "ignored", reason: body.ignored, runs: [] });
  });

  it("answers a redelivery 200 duplicate and creates nothing, even 50 copies at once", async () => {
    const deliveryId = randomUUID();
    const payload = fixture("github/issues.labeled.json");
    const first = await send({ event: "issues", payload, deliveryId });
    expect(first.status).toBe(202);
    const runsBefore = await count("runs");
    const again = await send({ event: "issues", payload, deliveryId });
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual({ delivery: deliveryId, duplicate: true, runs: [] });

    const burstId = randomUUID();
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => send({ event: "issues", payload, deliveryId: burstId })),
    );
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses.filter((s) => s === 202)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(49);
    expect(await count("runs")).toBe(runsBefore + 1);
  });

  it("matches comment commands at the start of the body, case-sensitive, as a whole word", async () => {
    const comment = (body: string) => fixture("github/issue_comment.created.json", (p) => (p.comment.body = body));
    const fired = async (body: string) =>
      ((await (await send({ event: "issue_comment", payload: comment(body) })).json()) as { runs: number[] }).runs
        .length;
    expect(await fired("  /run dev please\nmore")).toBe(1);
    expect(await fired("/run developer")).toBe(0);
    expect(await fired("please /run dev")).toBe(0);
    expect(await fired("/RUN DEV")).toBe(0);
  });

  it("records why a delivery fired nothing: bot_login, bots, permission, no match", async () => {
    const from = (login: string, type = "User") =>
      fixture("github/issues.labeled.json", (p) => {
        p.sender.login = login;
        p.sender.type = type;
      });
    const reasons: Record<string, string> = {};
    for (const [name, payload] of [
      ["self", from("runner-bot")],
      ["bot", from("dependabot[bot]", "Bot")],
      ["reader", from("mallory")],
      ["nomatch", fixture("github/issues.opened.json")],
    ] as const) {
      forge.setPermission("acme/demo", "mallory", "read");
      const res = await send({ event: "issues", payload });
      expect(res.status).toBe(202);
      const body = (await res.json()) as { runs: number[]; ignored: string };
      expect(body.runs).toEqual([]);
      reasons[name] = body.ignored;
    }
    expect(reasons).toEqual({
      self: "sender runner-bot is this runner's bot_login",
      bot: "sender dependabot[bot] is a bot",
      reader: "sender mallory has read access; triage needs write",
      nomatch: "no formula matches issues/opened",
    });
    const ignored = (await t.api("GET", "/api/deliveries?outcome=ignored&limit=4")).body.deliveries;
    expect(ignored.map((d: { reason: string }) => d.reason)).toContain(
      "sender mallory has read access; triage needs write",
    );
  });

  it("fails closed when the forge cannot say the sender's permission: nothing fires, the delivery is kept pending", async () => {
    const payload = fixture("github/issues.labeled.json", (p) => (p.sender.login = "newcomer"));
    forge.failNext({ status: 500, match: { path: /collaborators\/newcomer/ } });
    const res = await send({ event: "issues", payload });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { runs: number[]; pending: string; ignored?: string };
    expect(body.runs).toEqual([]);
    expect(body.ignored).toBeUndefined();
    expect(body.pending).toMatch(/^the forge did not answer the permission check of newcomer: /);
  });

  it("fires review on a pull request only for a sender with the formula's min_permission", async () => {
    forge.setPermission("acme/demo", "Codertocat", "write");
    const refused = (await (
      await send({ event: "pull_request", payload: fixture("github/pull_request.opened.json") })
    ).json()) as { ignored: string };
    expect(refused.ignored).toBe("sender Codertocat has write access; review needs admin");
    forge.setPermission("acme/demo", "Codertocat", "admin");
    // The permission answer is cached for a minute: a new sender is asked afresh.
    const payload = fixture("github/pull_request.synchronize.json", (p) => (p.sender.login = "alice"));
    forge.setPermission("acme/demo", "alice", "admin");
    const fired = (await (await send({ event: "pull_request", payload })).json()) as { runs: number[] };
    expect(fired.runs).toHaveLength(1);
    expect((await t.api("GET", `/api/runs/${fired.runs[0]}`)).body).toMatchObject({
      formula: "review",
      issue: payload.number,
    });
  });

  it("takes Gitea and Forgejo deliveries: label_updated fires a labeled formula, synchronized is synchronize", async () => {
    const labeled = loadFixture("gitea/issues.label_updated.json");
    labeled.repository.full_name = "acme/tea";
    const res = await send({ forge: "gitea", event: "issues", payload: labeled, secret: OTHER_SECRET });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { runs: number[]; project: string };
    expect(body.project).toBe("tea");
    expect(body.runs).toHaveLength(1);

    const sync = loadFixture("gitea/pull_request.synchronized.json");
    sync.repository.full_name = "acme/tea";
    sync.sender.login = "alice";
    const pr = (await (
      await send({ forge: "gitea", event: "pull_request", payload: sync, secret: OTHER_SECRET })
    ).json()) as { runs: number[] };
    expect(pr.runs).toHaveLength(1);

    const comment = loadFixture("forgejo/issue_comment.created.json");
    comment.repository.full_name = "acme/tea";
    comment.comment.body = "/run dev";
    const forgejo = await send({ forge: "forgejo", event: "issue_comment", payload: comment, secret: OTHER_SECRET });
    expect(forgejo.status).toBe(202);
    expect(((await forgejo.json()) as { runs: number[] }).runs).toHaveLength(1);
  });

  it("stores text PostgreSQL's jsonb refuses (NUL, lone surrogates) instead of failing", async () => {
    const raw = JSON.stringify(fixture("github/issues.labeled.json")).replace(
      '"body":',
      '"body":"nul \\u0000 and lone \\ud800 here","was":',
    );
    const res = await send({ event: "issues", payload: raw });
    expect(res.status).toBe(202);
    const { runs } = (await res.json()) as { runs: number[] };
    expect(runs).toHaveLength(1);
  });

  it("records push and ping, firing nothing", async () => {
    for (const [event, file] of [
      ["push", "github/push.json"],
      ["ping", "github/ping.json"],
    ] as const) {
      const res = await send({ event, payload: fixture(file) });
      expect(res.status).toBe(202);
      expect(((await res.json()) as { runs: number[] }).runs).toEqual([]);
    }
  });

  it("refuses what it cannot trust or use, writing nothing", async () => {
    const before = [await count("deliveries"), await count("runs")];
    const payload = fixture("github/issues.labeled.json");
    expect((await send({ event: "issues", payload, secret: "wrong-secret-000" })).status).toBe(401);
    const unsigned = signedWebhook({ forge: "github", event: "issues", payload, secret: SECRET });
    delete unsigned.headers["X-Hub-Signature-256"];
    expect(
      (await fetch(`${t.url}/webhooks`, { method: "POST", headers: unsigned.headers, body: unsigned.body })).status,
    ).toBe(401);
    // A project without a webhook secret refuses webhooks, however they are signed.
    const open = fixture("github/issues.labeled.json", (p) => (p.repository.full_name = "acme/open"));
    expect((await send({ event: "issues", payload: open })).status).toBe(401);
    // Signed with the right secret for a repository no project has.
    const unknown = fixture("github/issues.labeled.json", (p) => (p.repository.full_name = "acme/nowhere"));
    const notFound = await send({ event: "issues", payload: unknown });
    expect(notFound.status).toBe(404);
    expect(((await notFound.json()) as { error: { message: string } }).error.message).toBe(
      "no project is configured for acme/nowhere",
    );
    // Another project's secret for this repository.
    expect((await send({ event: "issues", payload, secret: OTHER_SECRET })).status).toBe(401);
    const malformed = await send({ event: "issues", payload: "{not json" });
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { error: { code: string } }).error.code).toBe("invalid_json");
    const big = await send({ event: "issues", payload: JSON.stringify({ padding: "x".repeat(1024 * 1024) }) });
    expect(big.status).toBe(413);
    const noEvent = signedWebhook({ forge: "github", event: "issues", payload, secret: SECRET });
    delete noEvent.headers["X-GitHub-Event"];
    expect(
      (await fetch(`${t.url}/webhooks`, { method: "POST", headers: noEvent.headers, body: noEvent.body })).status,
    ).toBe(400);
    expect([await count("deliveries"), await count("runs")]).toEqual(before);
  });

  it("property: any body with a wrong signature is 401 and writes nothing", async () => {
    const app = createApp(t.server.services);
    const before = await count("deliveries");
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 2048 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        async (body, secret) => {
          fc.pre(secret !== SECRET && secret !== OTHER_SECRET);
          const res = await app.request("/webhooks", {
            method: "POST",
            headers: {
              "x-github-event": "issues",
              "x-github-delivery": randomUUID(),
              "x-hub-signature-256": `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`,
              "content-type": "application/json",
            },
            body,
          });
          expect(res.status).toBe(401);
        },
      ),
      { numRuns: 100 },
    );
    expect(await count("deliveries")).toBe(before);
  });

  it("property: any byte string with the right signature gets a 2xx or a 4xx, never a 5xx", async () => {
    const app = createApp(t.server.services);
    const bodies = fc.oneof(
      fc.uint8Array({ maxLength: 2048 }),
      fc.jsonValue().map((v) => new TextEncoder().encode(JSON.stringify(v))),
      fc.jsonValue({ stringUnit: "binary" }).map((v) =>
        new TextEncoder().encode(
          JSON.stringify({
            repository: { full_name: "acme/demo" },
            sender: { login: "alice" },
            action: "labeled",
            label: { name: "bug" },
            issue: { number: 3, title: "t", body: JSON.stringify(v) },
            junk: v,
          }),
        ),
      ),
    );
    await fc.assert(
      fc.asyncProperty(
        bodies,
        fc.constantFrom("issues", "issue_comment", "pull_request", "push", "ping", "weird"),
        async (body, event) => {
          const res = await app.request("/webhooks", {
            method: "POST",
            headers: {
              "x-github-event": event,
              "x-github-delivery": randomUUID(),
              "x-hub-signature-256": `sha256=${createHmac("sha256", SECRET).update(body).digest("hex")}`,
              "content-type": "application/json",
            },
            body,
          });
          expect(res.status, await res.clone().text()).toBeLessThan(500);
        },
      ),
      { numRuns: 150 },
    );
  });
});
