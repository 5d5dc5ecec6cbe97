import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import type { Hono } from "hono";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppEnv, createApp } from "../../src/app.js";
import type { ProjectConfig } from "../../src/config.js";
import { Secret } from "../../src/secrets.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";
import { signedWebhook } from "../helpers/sign-webhook.js";
import { testFormula } from "../helpers/test-server.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

/**
 * Hostile input gets a 4xx, never a 5xx. Bounded here (fixed seed, a few hundred requests
 * per surface); `npm run fuzz` runs the same properties with FUZZ_RUNS many more times.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 150);
const SEED = Number(process.env.FUZZ_SEED ?? 20261202);

const SECRET = "fuzz-webhook-secret";

const open: ProjectConfig = {
  name: "open",
  repoPath: "/nonexistent",
  primaryBranch: "main",
  forge: "github",
  forgeUrl: "https://api.github.com",
  repo: "acme/open",
  tokenEnv: undefined,
  token: undefined,
  webhookSecretEnv: "FUZZ_SECRET",
  webhookSecret: new Secret(SECRET),
  botLogin: undefined,
  escalationIssue: undefined,
};

/** Text with what databases and parsers choke on: NUL, lone surrogates, huge numbers, odd escapes. */
const nasty = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom("\u0000", "a\u0000b", "\uD800", "x\uDC00y", "..", "-1", "0", "2147483648", "9".repeat(30), "1e309"),
  fc.constantFrom("%00", "%C0%80", "%ED%A0%80", "%FF", "%", "%%", "&&", "=", "[]"),
);
const hugeNumber = fc.oneof(
  fc.integer(),
  fc.constantFrom(2 ** 31, 2 ** 53 + 2, 1e308, -1, 0, 1.5, Number.MAX_SAFE_INTEGER),
);
const jsonish = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    nasty,
    hugeNumber,
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(nasty, tie("value"), { maxKeys: 4 }),
  ),
})).value;
/** Bodies that are not JSON.stringify of a value: deep nesting, truncated text, raw escapes. */
const rawBody = fc.oneof(
  fc.integer({ min: 100, max: 6000 }).map((n) => `${"[".repeat(n)}${"]".repeat(n)}`),
  fc.integer({ min: 100, max: 6000 }).map((n) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`),
  fc.constantFrom('{"body":"\\u0000"}', '{"body":"\\ud800"}', '{"issue":1e400}', "{", "", "null", '"x"', "[]"),
  fc.string({ maxLength: 60 }),
);
const cursor = fc.oneof(
  nasty,
  fc
    .constantFrom("run:99999999999999999999", "run:-1", "run:1.5", "run:0")
    .map((s) => Buffer.from(s).toString("base64url")),
  fc
    .tuple(
      fc.constantFrom("+275760-09-13T00:00:00.000Z", "0001-01-01T00:00:00Z", "not a date", "2026-12-02T00:00:00Z"),
      nasty,
    )
    .map((t) => Buffer.from(JSON.stringify(t)).toString("base64url")),
);
const query = (keys: string[]) =>
  fc.dictionary(fc.constantFrom(...keys), fc.oneof(nasty, cursor), { maxKeys: keys.length }).map((q) =>
    Object.entries(q)
      .map(([k, v]) => `${k}=${/%/.test(v) ? v : enc(v)}`)
      .join("&"),
  );

interface ApiRequest {
  method: string;
  path: string;
  body?: string;
}

/** Percent-encodes the UTF-8 bytes of any string (encodeURIComponent throws on a lone surrogate). */
const enc = (s: string) => [...Buffer.from(s, "utf8")].map((b) => `%${b.toString(16).padStart(2, "0")}`).join("");

const apiRequest: fc.Arbitrary<ApiRequest> = fc.oneof(
  query(["status", "formula", "project", "limit", "cursor"]).map((q) => ({ method: "GET", path: `/api/runs?${q}` })),
  query(["outcome", "project", "event", "limit", "cursor"]).map((q) => ({
    method: "GET",
    path: `/api/deliveries?${q}`,
  })),
  query(["state", "project", "formula", "run_id", "limit", "cursor"]).map((q) => ({
    method: "GET",
    path: `/api/worktrees?${q}`,
  })),
  fc.record({ formula: nasty, project: nasty, issue: hugeNumber, actor: nasty }, { requiredKeys: [] }).map((b) => ({
    method: "POST",
    path: "/api/runs",
    body: JSON.stringify(b),
  })),
  fc
    .tuple(
      nasty,
      fc.oneof(
        jsonish.map((v) => JSON.stringify({ body: v })),
        rawBody,
      ),
    )
    .map(([id, body]) => ({
      method: "POST",
      path: `/api/runs/${enc(id)}/reply`,
      body,
    })),
  fc
    .oneof(
      jsonish.map((v) => JSON.stringify({ older_than_hours: v, dry_run: true })),
      rawBody,
    )
    .map((body) => ({
      method: "POST",
      path: "/api/worktrees/purge",
      body,
    })),
  nasty.map((id) => ({ method: "GET", path: `/api/runs/${enc(id)}` })),
  nasty.map((id) => ({ method: "DELETE", path: `/api/worktrees/${enc(id)}` })),
);

const webhookRequest = fc.record({
  event: fc.constantFrom("issues", "issue_comment", "pull_request", "push", "ping", "label"),
  delivery: fc.oneof(fc.uuid(), nasty),
  body: fc.oneof(
    jsonish.map((v) =>
      JSON.stringify({ action: "labeled", repository: { full_name: "acme/open" }, sender: v, issue: v }),
    ),
    jsonish.map((v) =>
      JSON.stringify({ repository: { full_name: "acme/open" }, issue: { number: v }, comment: { body: v } }),
    ),
    rawBody,
  ),
});

describe.each(testBackends())("fuzzed requests never get a 5xx, on %s", (kind) => {
  let t: TestDatabase;
  let app: Hono<AppEnv>;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    // A formula that may be dispatched: POST /api/runs reaches the database.
    const formulasDir = await makeTempDir("fr-fuzz-formulas-");
    await writeFile(join(formulasDir, "fuzz.toml"), testFormula("fuzz"));
    const services = testServices({ database: t.database, projects: [open], formulasDir });
    await services.reloadFormulas();
    app = createApp(services);
  });
  afterAll(async () => {
    await t.cleanup();
    await cleanupTempDirs();
  });

  it("/api", async () => {
    await fc.assert(
      fc.asyncProperty(apiRequest, async (req) => {
        const res = await app.request(req.path, {
          method: req.method,
          headers: { ...authHeaders, "content-type": "application/json" },
          ...(req.body === undefined ? {} : { body: req.body }),
        });
        expect(res.status, `${req.method} ${req.path} ${req.body?.slice(0, 200) ?? ""}`).toBeLessThan(500);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it("/webhooks", async () => {
    await fc.assert(
      fc.asyncProperty(webhookRequest, async (req) => {
        let delivery = req.delivery;
        // A header value cannot carry every character; what cannot be sent is not a request.
        if (!/^[\t\x20-\x7e]*$/.test(delivery)) delivery = enc(delivery);
        const signed = signedWebhook({
          forge: "github",
          event: req.event,
          payload: req.body,
          secret: SECRET,
          deliveryId: delivery,
        });
        const res = await app.request("/webhooks", { method: "POST", headers: signed.headers, body: signed.body });
        expect(res.status, `${req.event} ${delivery} ${req.body.slice(0, 200)}`).toBeLessThan(500);
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });
});
