import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import type { Hono } from "hono";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppEnv, createApp } from "../../src/app.js";
import type { ProjectConfig } from "../../src/config.js";
import { Secret } from "../../src/secrets.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { apiRequest, enc, webhookRequest } from "../helpers/fuzz-inputs.js";
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
      fc.asyncProperty(webhookRequest("acme/open"), async (req) => {
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
