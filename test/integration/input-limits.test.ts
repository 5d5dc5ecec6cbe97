import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Hono } from "hono";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppEnv, createApp } from "../../src/app.js";
import type { ProjectConfig } from "../../src/config.js";
import { jsonDepth } from "../../src/input-limits.js";
import { Secret } from "../../src/secrets.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";
import { signedWebhook } from "../helpers/sign-webhook.js";
import { testFormula } from "../helpers/test-server.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

const SECRET = "limits-webhook-secret";
const project: ProjectConfig = {
  name: "demo",
  repoPath: "/nonexistent",
  primaryBranch: "main",
  forge: "github",
  forgeUrl: "https://api.github.com",
  repo: "acme/demo",
  tokenEnv: undefined,
  token: undefined,
  webhookSecretEnv: "LIMITS_SECRET",
  webhookSecret: new Secret(SECRET),
  botLogin: undefined,
  escalationIssue: undefined,
};
const b64 = (text: string) => Buffer.from(text).toString("base64url");

describe("jsonDepth", () => {
  it("counts nesting outside strings only", () => {
    expect(jsonDepth('{"a":[1,{"b":"[[[[{{"}]}')).toBe(3);
    expect(jsonDepth('"\\"[[["')).toBe(0);
    expect(jsonDepth("[".repeat(5000))).toBe(129); // stops counting past the limit
  });
});

describe.each(testBackends())("hostile input gets a 4xx, on %s", (kind) => {
  let t: TestDatabase;
  let app: Hono<AppEnv>;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    const formulasDir = await makeTempDir("fr-limits-formulas-");
    await writeFile(join(formulasDir, "dev.toml"), testFormula("dev"));
    const services = testServices({ database: t.database, projects: [project], formulasDir });
    await services.reloadFormulas();
    app = createApp(services);
  });
  afterAll(async () => {
    await t.cleanup();
    await cleanupTempDirs();
  });

  const api = (path: string, init: RequestInit = {}) =>
    app.request(path, { ...init, headers: { ...authHeaders, "content-type": "application/json" } });
  const post = (path: string, body: string) => api(path, { method: "POST", body });

  it("a webhook nested 5,000 deep is refused before anything walks it", async () => {
    const deep = `${"[".repeat(5000)}${"]".repeat(5000)}`;
    const payload = `{"action":"labeled","repository":{"full_name":"acme/demo"},"issue":{"number":1,"x":${deep}}}`;
    const signed = signedWebhook({ forge: "github", event: "issues", payload, secret: SECRET });
    const res = await app.request("/webhooks", { method: "POST", headers: signed.headers, body: signed.body });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({
      error: { code: "invalid_json", message: expect.stringMatching(/deeper than 128/) },
    });
  });

  it("an API body nested 5,000 deep is refused", async () => {
    const res = await post(
      "/api/runs",
      `{"formula":"dev","project":"demo","x":${"[".repeat(5000)}${"]".repeat(5000)}}`,
    );
    expect(res.status).toBe(400);
  });

  it("issue numbers past the integer column are refused with 400", async () => {
    const res = await post("/api/runs", JSON.stringify({ formula: "dev", project: "demo", issue: 2 ** 31 }));
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: "validation_failed" } });
    expect(
      (await post("/api/runs", JSON.stringify({ formula: "dev", project: "demo", issue: 2 ** 31 - 1 }))).status,
    ).toBe(201);
  });

  it("NUL and lone surrogates are refused in bodies and query strings", async () => {
    for (const text of ["a\u0000b", "x\uD800y", "\uDC00"]) {
      expect((await post("/api/runs", JSON.stringify({ formula: text, project: "demo" }))).status, text).toBe(400);
      expect((await post("/api/runs/1/reply", JSON.stringify({ body: text }))).status, text).toBe(400);
    }
    expect((await post("/api/runs/1/reply", '{"body":"\\u0000"}')).status).toBe(400);
    expect((await api("/api/runs?formula=a%00b")).status).toBe(400);
    expect((await api("/api/deliveries?project=%00")).status).toBe(400);
  });

  it("forged cursors are refused with 400", async () => {
    for (const cursor of [b64("run:99999999999999999999"), b64("run:-1"), "%00", b64("x")]) {
      expect((await api(`/api/runs?cursor=${cursor}`)).status, cursor).toBe(400);
    }
    for (const cursor of [
      b64(JSON.stringify(["+275760-09-13T00:00:00.000Z", "x"])),
      b64(JSON.stringify(["0001-01-01T00:00:00.000Z", "x"])),
      b64(JSON.stringify(["2026-12-02T00:00:00.000Z", "x\u0000"])),
      b64(JSON.stringify(["2026-12-02T00:00:00.000Z", 5])),
    ]) {
      expect((await api(`/api/deliveries?cursor=${cursor}`)).status, cursor).toBe(400);
    }
    expect((await api(`/api/deliveries?cursor=${b64(JSON.stringify(["2026-12-02T00:00:00.000Z", "x"]))}`)).status).toBe(
      200,
    );
  });
});
