import { randomUUID } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type Delivery, deliveries, runs } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { DeliveryIngest } from "../../src/forge/delivery-ingest.js";
import { ForgeClient, PermissionCache } from "../../src/forge/forge-client.js";
import { normalizeEvent } from "../../src/forge/normalize.js";
import { PendingDeliveries } from "../../src/forge/pending-deliveries.js";
import { WebhookService } from "../../src/forge/webhook-service.js";
import { FormulaStore } from "../../src/formulas/store.js";
import { createLogger } from "../../src/logger.js";
import { Secret } from "../../src/secrets.js";
import { DashboardClient } from "../helpers/dashboard.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { type FakeForge, startFakeForge } from "../helpers/fake-forge.js";
import { loadFixture, signedWebhook } from "../helpers/sign-webhook.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const SECRET = "pending-webhook-secret-5e7a";
const TOKEN = "pending-forge-token-93b1";
/** The permission endpoint of the sender these tests use. */
const PERMISSION = /collaborators\/newcomer\/permission/;

/** A labeled-issue delivery from `newcomer`, for acme/demo. */
function labeledBy(login = "newcomer") {
  const payload = loadFixture("github/issues.labeled.json");
  payload.repository.full_name = "acme/demo";
  payload.sender.login = login;
  return payload;
}

async function eventually<T>(probe: () => Promise<T | undefined | false>, what: string): Promise<T> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const TRIAGE = testFormula("triage", { agent: "done", on: {} }).replace(
  "[on]\ndispatch = true",
  '[on]\ndispatch = true\n[on.issues]\ntypes = ["labeled"]\nlabels = ["bug"]',
);

describe.each(testBackends())("deliveries whose permission check could not be made, on %s", (backend) => {
  describe("through the server", () => {
    let t: TestServer;
    let forge: FakeForge;

    beforeAll(async () => {
      forge = await startFakeForge({ tokens: { [TOKEN]: "runner-bot" } });
      t = await startTestServer({
        backend,
        env: { DEMO_WEBHOOK_SECRET: SECRET, DEMO_FORGE_TOKEN: TOKEN },
        project: {
          webhook_secret_env: "DEMO_WEBHOOK_SECRET",
          token_env: "DEMO_FORGE_TOKEN",
          forge_url: forge.url,
          bot_login: "runner-bot",
        },
        formulas: { triage: TRIAGE },
        // Retries every few ms, and never gives up within the test: recovery decides it.
        pendingDeliveries: { pollMs: 20, backoffMs: 10, maxBackoffMs: 40, maxAttempts: 1_000_000 },
      });
    });
    afterAll(async () => {
      await t?.stop();
      await forge?.close();
    });

    const send = (payload: unknown, deliveryId: string) => {
      const signed = signedWebhook({ forge: "github", event: "issues", payload, secret: SECRET, deliveryId });
      return fetch(`${t.url}/webhooks`, { method: "POST", headers: signed.headers, body: signed.body });
    };
    const row = async (id: string) =>
      (await t.db.database.db.select().from(deliveries).where(eq(deliveries.id, id)))[0] as Delivery;
    const runsOf = (id: string) => t.db.database.db.select().from(runs).where(eq(runs.deliveryId, id));
    const pendingGauge = async () => {
      const text = await (await fetch(`${t.url}/metrics`)).text();
      return Number(/^formula_runner_deliveries_pending (\S+)$/m.exec(text)?.[1]);
    };

    it("keeps the delivery pending while the forge fails, then fires it exactly once when the forge answers", async () => {
      forge.failNext({ status: 502, count: 1_000_000, match: { path: PERMISSION } });
      const deliveryId = randomUUID();
      const res = await send(labeledBy(), deliveryId);
      expect(res.status).toBe(202);
      const body = (await res.json()) as { runs: number[]; pending?: string; ignored?: string };
      expect(body.runs).toEqual([]);
      expect(body.ignored).toBeUndefined();
      expect(body.pending).toMatch(/^the forge did not answer the permission check of newcomer: .*502/);

      // The API, the dashboard and the metric show it waiting.
      const listed = await t.api("GET", "/api/deliveries?outcome=pending");
      expect(listed.status).toBe(200);
      expect(listed.body.deliveries).toEqual([
        expect.objectContaining({ id: deliveryId, outcome: "pending", runs: [], next_attempt_at: expect.any(String) }),
      ]);
      expect(await pendingGauge()).toBe(1);
      const browser = new DashboardClient(t.url);
      await browser.signIn(TEST_TOKEN);
      const page = await browser.get("/deliveries?outcome=pending");
      expect(page.text).toMatch(/<option value="pending" selected/);
      expect(page.text).toContain(deliveryId);

      // It is retried, and nothing fires while the forge cannot answer.
      await eventually(async () => (await row(deliveryId)).attempts >= 3, "three retries");
      expect(await runsOf(deliveryId)).toEqual([]);
      expect((await row(deliveryId)).outcome).toBe("pending");

      // The forge answers again.
      forge.reset();
      forge.setPermission("acme/demo", "newcomer", "write");
      const decided = await eventually(async () => {
        const r = await row(deliveryId);
        return r.outcome !== "pending" && r;
      }, "the delivery decided");
      expect(decided).toMatchObject({ outcome: "queued", reason: null, nextAttemptAt: null });
      const fired = await runsOf(deliveryId);
      expect(fired).toHaveLength(1);
      expect(fired[0]).toMatchObject({ formula: "triage", issue: 1, triggerKind: "webhook", triggerRef: deliveryId });
      await t.waitForRun(fired[0]!.id);

      // A redelivery by the forge is a duplicate; no later pass fires it again.
      const again = await send(labeledBy(), deliveryId);
      expect(await again.json()).toMatchObject({ duplicate: true, runs: [] });
      expect(await runsOf(deliveryId)).toHaveLength(1);
      expect(await pendingGauge()).toBe(0);
      const shown = await t.api("GET", "/api/deliveries?outcome=queued");
      expect(shown.body.deliveries.find((d: { id: string }) => d.id === deliveryId)).toMatchObject({
        outcome: "queued",
        runs: [fired[0]!.id],
        next_attempt_at: null,
      });
    });
  });

  describe("the retries", () => {
    let t: TestDatabase;
    let forge: FakeForge;
    let dir: string;
    let lines: { level: number; msg: string }[];
    let clock: number;
    let project: ProjectConfig;
    let formulas: FormulaStore;
    const log = () =>
      createLogger({
        level: "info",
        destination: { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) },
      });

    beforeAll(async () => {
      forge = await startFakeForge({ tokens: { [TOKEN]: "runner-bot" } });
      dir = await makeTempDir("fr-pending-");
      await mkdir(path.join(dir, "formulas"));
      await writeFile(path.join(dir, "formulas", "triage.toml"), TRIAGE);
    });
    afterAll(async () => {
      await forge?.close();
      await removeTempDir(dir);
    });
    beforeEach(async () => {
      t = await openTestDatabase(backend);
      forge.reset();
      lines = [];
      clock = Date.now();
      project = {
        name: "demo",
        repoPath: "/nonexistent/demo",
        primaryBranch: "main",
        forge: "github",
        forgeUrl: forge.url,
        repo: "acme/demo",
        tokenEnv: "DEMO_FORGE_TOKEN",
        token: new Secret(TOKEN),
        webhookSecretEnv: undefined,
        webhookSecret: undefined,
        botLogin: "runner-bot",
        escalationIssue: undefined,
        formulas: ["*"],
      } as ProjectConfig;
      formulas = new FormulaStore(path.join(dir, "formulas"), log());
      await formulas.reload();
    });
    afterEach(async () => {
      await t.cleanup();
    });

    const now = () => new Date(clock);
    function services(limits: { maxAttempts?: number; maxAgeMs?: number } = {}) {
      const webhooks = new WebhookService({
        formulas,
        ingest: new DeliveryIngest(t.database, log()),
        permissions: new PermissionCache((p) => new ForgeClient(p)),
        log: log(),
        onQueued: () => {},
        firstRetryAt: now,
      });
      const retries = () =>
        new PendingDeliveries({
          database: t.database,
          projects: [project],
          webhooks,
          log: log(),
          onQueued: () => {},
          now,
          random: () => 0.5,
          backoffMs: 1_000,
          ...limits,
        });
      return { webhooks, retries };
    }
    it("records nothing and fails the request as unavailable (503) when the database blinks while a comment is checked as a reply", async () => {
      const cut = Object.assign(new Error("write CONNECTION_CLOSED 127.0.0.1:5432"), { code: "CONNECTION_CLOSED" });
      let failure: Error = cut;
      const webhooks = new WebhookService({
        formulas,
        ingest: new DeliveryIngest(t.database, log()),
        permissions: new PermissionCache((p) => new ForgeClient(p)),
        log: log(),
        onQueued: () => {},
        escalations: {
          handleComment: async () => {
            throw failure;
          },
        },
      });
      const payload = loadFixture("github/issue_comment.created.json");
      const event = normalizeEvent("github", "issue_comment", randomUUID(), payload);
      await expect(webhooks.accept(event, project, payload)).rejects.toBe(cut);
      expect(await row(event.deliveryId)).toBeUndefined();
      // Any other failure of the check is logged, and the comment recorded as usual.
      failure = new Error("a bug");
      const outcome = await webhooks.accept(event, project, payload);
      expect(outcome).toMatchObject({ duplicate: false });
      expect(await row(event.deliveryId)).toMatchObject({ outcome: "ignored" });
      expect(lines.some((l) => l.msg === "escalation reply: a bug")).toBe(true);
    });

    async function accept(webhooks: WebhookService) {
      const payload = labeledBy();
      const event = normalizeEvent("github", "issues", randomUUID(), payload);
      const outcome = await webhooks.accept(event, project, payload);
      expect(outcome.pending).toBeDefined();
      // The test clock starts at the receipt the database recorded.
      clock = (await row(event.deliveryId)).receivedAt.getTime();
      return event.deliveryId;
    }
    const row = async (id: string) =>
      (await t.database.db.select().from(deliveries).where(eq(deliveries.id, id)))[0] as Delivery;

    it("records a delivery still undecided after the last retry as failed, saying why", async () => {
      forge.failNext({ status: 503, count: 1_000, match: { path: PERMISSION } });
      const { webhooks, retries } = services({ maxAttempts: 3 });
      const id = await accept(webhooks);
      const retry = retries();
      for (const attempt of [1, 2]) {
        expect(await retry.drainOnce()).toBe(1);
        expect(await row(id)).toMatchObject({ outcome: "pending", attempts: attempt });
        // Backoff: not due again until it has passed (1 s, then 2 s, times the jitter 1.0).
        expect(await retry.drainOnce()).toBe(0);
        clock += 1_000 * 2 ** (attempt - 1);
      }
      expect(await retry.drainOnce()).toBe(1);
      const failed = await row(id);
      expect(failed).toMatchObject({ outcome: "failed", attempts: 3, nextAttemptAt: null });
      expect(failed.reason).toMatch(
        /^undecided: 3 retries over 3s got no permission answer; last: the forge did not answer the permission check of newcomer: .*503/,
      );
      expect(await retry.drainOnce()).toBe(0);
      expect(await t.database.db.select().from(runs)).toEqual([]);
      expect(lines.filter((l) => l.level === 50).map((l) => l.msg)).toEqual([
        expect.stringMatching(new RegExp(`^delivery ${id} failed: undecided: 3 retries`)),
      ]);
      expect(lines.some((l) => l.level === 40 && l.msg.startsWith(`delivery ${id} still pending (retry 1)`))).toBe(
        true,
      );
    });

    it("gives up on age too: a delivery older than the limit is failed at its next retry", async () => {
      forge.failNext({ status: 502, count: 1_000, match: { path: PERMISSION } });
      const { webhooks, retries } = services({ maxAgeMs: 3_600_000 });
      const id = await accept(webhooks);
      clock += 3_600_000;
      expect(await retries().drainOnce()).toBe(1);
      expect(await row(id)).toMatchObject({ outcome: "failed", attempts: 1 });
      expect((await row(id)).reason).toMatch(/^undecided: 1 retries over 1h got no permission answer/);
    });

    it("fires once when two instances retry the same delivery at the same moment", async () => {
      forge.failNext({ status: 502, count: 1, match: { path: PERMISSION } });
      forge.setPermission("acme/demo", "newcomer", "write");
      const { webhooks, retries } = services();
      const id = await accept(webhooks);
      const tried = await Promise.all([retries().drainOnce(), retries().drainOnce(), retries().drainOnce()]);
      expect(tried.reduce((a, b) => a + b, 0)).toBe(1);
      expect(await row(id)).toMatchObject({ outcome: "queued", attempts: 1 });
      const fired = await t.database.db.select().from(runs).where(eq(runs.deliveryId, id));
      expect(fired).toHaveLength(1);
      expect(lines.some((l) => l.msg === `pending delivery ${id} decided after 1 retries: queued 1 run(s)`)).toBe(true);
    });

    it("decides a sender the forge now says lacks access as ignored, with the reason", async () => {
      forge.failNext({ status: 502, count: 1, match: { path: PERMISSION } });
      forge.setPermission("acme/demo", "newcomer", "read");
      const { webhooks, retries } = services();
      const id = await accept(webhooks);
      expect(await retries().drainOnce()).toBe(1);
      expect(await row(id)).toMatchObject({
        outcome: "ignored",
        reason: "sender newcomer has read access; triage needs write",
      });
      expect(await t.database.rows(sql`select 1 from runs`)).toEqual([]);
    });
  });
});
