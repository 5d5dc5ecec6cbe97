import { createHook } from "node:async_hooks";
import { asc, eq } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { escalations, type OutboxEntry, outbox, runs } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { ForgeClient } from "../../src/forge/forge-client.js";
import { enqueueOutbox, type OutboxDeps, OutboxWorker, outboxMarker, statusMarker } from "../../src/forge/outbox.js";
import { createLogger } from "../../src/logger.js";
import { Secret, SecretRegistry } from "../../src/secrets.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { type FakeForge, type Flavor, type RecordedRequest, startFakeForge } from "../helpers/fake-forge.js";

const REPO = "acme/widgets";
const OTHER_REPO = "acme/gadgets";
const TOKEN = "fr-outbox-forge-token-7c21e9";
const WEBHOOK_SECRET = "fr-outbox-webhook-secret-d00d";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function eventually<T>(
  probe: () => Promise<T | undefined | false>,
  what: string,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const SOURCE_DIR = new URL("../../src/", import.meta.url).pathname;

/**
 * Follows the timers created from now on by the code under test (a frame in this
 * repository's src/). Counting every Timeout of the process is not exact: fetch re-arms
 * a shared timer of its own with refresh(), postgres.js keeps idle timers, and the test's
 * own sleep that just ended is reported destroyed a little after it fired.
 */
function trackTimers(): { live(): string[]; stop(): void } {
  const live = new Map<number, string>();
  const hook = createHook({
    init(id, type) {
      if (type !== "Timeout") return;
      const stack = new Error().stack?.split("\n").slice(2) ?? [];
      if (stack.some((frame) => frame.includes(SOURCE_DIR))) live.set(id, stack.slice(0, 12).join(" | "));
    },
    destroy(id) {
      live.delete(id);
    },
  }).enable();
  return { live: () => [...live.values()], stop: () => void hook.disable() };
}

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

let forge: FakeForge;

beforeAll(async () => {
  forge = await startFakeForge();
  forge.addToken(TOKEN, "runner-bot");
});

afterAll(async () => {
  await forge.close();
});

function projectConfig(
  flavor: Flavor,
  name = "widgets",
  repo = REPO,
  overrides: Partial<ProjectConfig> = {},
): ProjectConfig {
  return {
    name,
    repoPath: `/nonexistent/${name}`,
    primaryBranch: "main",
    forge: flavor === "github" ? "github" : "gitea",
    forgeUrl: flavor === "github" ? forge.url : forge.giteaUrl,
    repo,
    tokenEnv: "FORGE_TOKEN",
    token: new Secret(TOKEN),
    webhookSecretEnv: undefined,
    webhookSecret: undefined,
    botLogin: "runner-bot",
    escalationIssue: undefined,
    ...overrides,
  };
}

describe.each(testBackends())("outbox on %s", (backend) => {
  let t: TestDatabase;
  let offset: number;
  let lines: LogLine[];
  let secrets: SecretRegistry;
  let workers: OutboxWorker[];
  /** What the fake run renderer answers, per run. */
  let statusText: Map<number, string>;

  /** The test clock: the real one, moved forward by advance(). */
  const now = () => new Date(Date.now() + offset);
  const advance = (ms: number) => {
    offset += ms;
  };

  beforeEach(async () => {
    t = await openTestDatabase(backend);
    offset = 0;
    lines = [];
    workers = [];
    statusText = new Map();
    secrets = new SecretRegistry();
    secrets.add(TOKEN);
    secrets.add(WEBHOOK_SECRET);
    forge.reset();
  });

  afterEach(async () => {
    for (const w of workers) await w.stop();
    await t.cleanup();
  });

  function makeWorker(projects: ProjectConfig[], overrides: Partial<OutboxDeps> = {}): OutboxWorker {
    const log = createLogger({
      level: "debug",
      secrets,
      destination: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
    });
    const clients = new Map<string, ForgeClient>();
    const worker = new OutboxWorker({
      database: t.database,
      projects,
      clientFor: (p) => {
        let client = clients.get(p.name);
        if (!client) {
          // Generous: a loaded CI machine must not turn a slow answer into a retry the test does not expect.
          client = new ForgeClient(p, { timeoutMs: 20_000 });
          clients.set(p.name, client);
        }
        return client;
      },
      renderStatus: async (runId) => {
        const text = statusText.get(runId);
        return text === undefined ? undefined : `${marker(runId)}\n${text}`;
      },
      secrets,
      log,
      now,
      random: () => 0.5,
      pollMs: 50,
      ...overrides,
    });
    workers.push(worker);
    return worker;
  }

  /** Each run's status marker, as the outbox writes it (with the run's nonce). */
  const markers = new Map<number, string>();
  const marker = (runId: number) => markers.get(runId) ?? statusMarker(runId, null);

  async function insertRun(issue: number, project = "widgets", values: Partial<typeof runs.$inferInsert> = {}) {
    const [run] = await t.database.db
      .insert(runs)
      .values({
        formula: "fix",
        project,
        triggerKind: "dispatch",
        triggerRef: "test",
        issue,
        reportIssue: issue,
        status: "running",
        ...values,
      })
      .returning({ id: runs.id, statusNonce: runs.statusNonce });
    markers.set(run!.id, statusMarker(run!.id, run!.statusNonce));
    return run!.id;
  }

  const rows = (): Promise<OutboxEntry[]> => t.database.db.select().from(outbox).orderBy(asc(outbox.id));
  const row = async (id: number) => (await t.database.db.select().from(outbox).where(eq(outbox.id, id)))[0]!;
  const lastRow = async () => (await rows()).at(-1)!;
  const runRow = async (id: number) => (await t.database.db.select().from(runs).where(eq(runs.id, id)))[0]!;

  /** Drains until a pass finds nothing due. */
  async function drainAll(worker: OutboxWorker): Promise<number> {
    let total = 0;
    for (let pass = 0; pass < 100; pass++) {
      const n = await worker.drainOnce();
      if (n === 0) return total;
      total += n;
    }
    throw new Error("the outbox never ran dry");
  }

  const writes = (flavor?: Flavor): RecordedRequest[] =>
    forge.requests.filter((r) => r.method !== "GET" && (flavor === undefined || r.flavor === flavor));

  describe.each(["github", "gitea"] as const)("against the %s flavour", (flavor) => {
    const project = () => projectConfig(flavor);

    it("posts a comment and stores what the forge answered", async () => {
      const worker = makeWorker([project()]);
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 7,
        payload: { kind: "comment", body: "Hello from the runner" },
      });
      expect(await worker.drainOnce()).toBe(1);

      const [comment] = forge.issue(REPO, 7).comments;
      const sent = await lastRow();
      expect(comment?.body).toBe(`Hello from the runner\n\n${outboxMarker(sent.id)}`);
      expect(sent).toMatchObject({
        state: "sent",
        attempts: 1,
        lastError: null,
        result: { id: comment?.id, url: comment?.html_url },
      });
      expect(sent.sentAt).toBeInstanceOf(Date);
      expect(await worker.drainOnce()).toBe(0);
      expect(writes(flavor)).toHaveLength(1);
    });

    it("stores the question's comment id on its escalation", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(5);
      const [escalation] = await t.database.db
        .insert(escalations)
        .values({ runId, question: "Which branch?", issue: 5, deadlineAt: new Date(Date.now() + 86_400_000) })
        .returning();
      await t.database.db.transaction(async (tx) => {
        await enqueueOutbox(tx, {
          project: "widgets",
          runId,
          issue: 5,
          payload: { kind: "comment", body: "Which branch?", escalationId: escalation!.id },
        });
      });
      await drainAll(worker);
      const [comment] = forge.issue(REPO, 5).comments;
      const [stored] = await t.database.db.select().from(escalations).where(eq(escalations.id, escalation!.id));
      expect(comment).toBeDefined();
      expect(stored?.commentId).toBe(comment!.id);
    });

    it("creates the status comment once and then edits it in place", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(7);

      statusText.set(runId, "queued");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 7, payload: { kind: "status" } });
      statusText.set(runId, "running: PHASE:planning");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 7, payload: { kind: "status" } });
      // Two upserts, one row: its rev counts them.
      expect(await rows()).toMatchObject([{ kind: "status", state: "pending", payload: { kind: "status", rev: 2 } }]);

      expect(await drainAll(worker)).toBe(1);
      const posts = writes(flavor).filter((r) => r.method === "POST");
      expect(posts).toHaveLength(1);
      const first = forge.issue(REPO, 7).comments;
      expect(first).toHaveLength(1);
      expect(first[0]!.body).toBe(`${marker(runId)}\nrunning: PHASE:planning`);
      expect((await runRow(runId)).statusCommentId).toBe(first[0]!.id);

      statusText.set(runId, "done");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 7, payload: { kind: "status" } });
      expect(await drainAll(worker)).toBe(1);
      expect(writes(flavor).map((r) => `${r.method} ${r.path}`)).toEqual([
        `POST /repos/${REPO}/issues/7/comments`,
        `PATCH /repos/${REPO}/issues/comments/${first[0]!.id}`,
      ]);
      const after = forge.issue(REPO, 7).comments;
      expect(after).toHaveLength(1);
      expect(after[0]!.body).toBe(`${marker(runId)}\ndone`);
      expect((await rows()).map((r) => r.state)).toEqual(["sent", "sent"]);
    });

    it("sends the newest state when a phase arrives while the status is being sent", async () => {
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let rendering!: () => void;
      const started = new Promise<void>((resolve) => (rendering = resolve));
      let calls = 0;
      const runId = await insertRun(8);
      statusText.set(runId, "phase: one");
      const worker = makeWorker([project()], {
        renderStatus: async (id) => {
          const text = statusText.get(id);
          if (calls++ === 0) {
            rendering();
            await gate; // the send is in flight: the old state is what it will post
          }
          return `${marker(id)}\n${text}`;
        },
      });
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 8, payload: { kind: "status" } });
      const firstPass = worker.drainOnce();
      try {
        await started;
        // A newer phase while the first send is in flight.
        statusText.set(runId, "phase: two");
        await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 8, payload: { kind: "status" } });
        // Another instance must not pick the row up meanwhile (it would post a second comment).
        expect(await makeWorker([project()]).drainOnce()).toBe(0);
      } finally {
        release();
      }
      expect(await firstPass).toBe(1);

      // The old state went out, but the row stays pending (its rev moved) and is due now.
      expect(forge.issue(REPO, 8).comments.map((c) => c.body)).toEqual([`${marker(runId)}\nphase: one`]);
      const pending = await lastRow();
      expect(pending).toMatchObject({ state: "pending", payload: { rev: 2 } });
      expect(pending.nextAttemptAt.getTime()).toBeLessThanOrEqual(now().getTime());

      await drainAll(worker);
      const comments = forge.issue(REPO, 8).comments;
      expect(comments.map((c) => c.body)).toEqual([`${marker(runId)}\nphase: two`]);
      expect(writes(flavor).map((r) => r.method)).toEqual(["POST", "PATCH"]);
      expect((await rows()).map((r) => r.state)).toEqual(["sent"]);
    });

    it("finds a status comment posted before a crash by its marker, and edits it instead of posting again", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(9);
      forge.addComment(REPO, 9, { login: "alice", body: "unrelated" });
      const earlier = forge.addComment(REPO, 9, { login: "runner-bot", body: `${marker(runId)}\nqueued` });
      forge.addComment(REPO, 9, { login: "alice", body: "me too" });
      expect((await runRow(runId)).statusCommentId).toBeNull();

      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 9, payload: { kind: "status" } });
      await drainAll(worker);
      expect(writes(flavor).map((r) => `${r.method} ${r.path}`)).toEqual([
        `PATCH /repos/${REPO}/issues/comments/${earlier.id}`,
      ]);
      expect(forge.issue(REPO, 9).comments.map((c) => c.body)).toEqual([
        "unrelated",
        `${marker(runId)}\nrunning`,
        "me too",
      ]);
      expect((await runRow(runId)).statusCommentId).toBe(earlier.id);
    });

    it("never takes a stranger's comment carrying the run's marker, old-style or with its nonce, for its status comment", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(9);
      expect(marker(runId)).toMatch(new RegExp(`^<!-- formula-runner:run:${runId}:[A-Za-z0-9_-]{22} -->$`));
      // Posted ahead of the run by someone who guessed its id, and (had it leaked) its nonce.
      const guessed = forge.addComment(REPO, 9, { login: "mallory", body: `${statusMarker(runId, null)}\nguessed` });
      const leaked = forge.addComment(REPO, 9, { login: "mallory", body: `${marker(runId)}\nleaked` });
      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 9, payload: { kind: "status" } });
      await drainAll(worker);
      expect(writes(flavor).map((r) => r.method)).toEqual(["POST"]);
      const comments = forge.issue(REPO, 9).comments;
      expect(comments.find((c) => c.id === guessed.id)?.body).toBe(`${statusMarker(runId, null)}\nguessed`);
      expect(comments.find((c) => c.id === leaked.id)?.body).toBe(`${marker(runId)}\nleaked`);
      expect((await runRow(runId)).statusCommentId).toBe(comments.at(-1)!.id);
    });

    it("a run with a nonce does not take a bot comment holding only its old-style marker", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(9);
      // The bot's own comment quoting an old-style marker (say, from an older server's run).
      const old = forge.addComment(REPO, 9, { login: "runner-bot", body: `${statusMarker(runId, null)}\nold` });
      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 9, payload: { kind: "status" } });
      await drainAll(worker);
      expect(writes(flavor).map((r) => r.method)).toEqual(["POST"]);
      expect(forge.issue(REPO, 9).comments.find((c) => c.id === old.id)?.body).toBe(
        `${statusMarker(runId, null)}\nold`,
      );
    });

    it("a run made before nonces finds its status comment by the old-style marker", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(9, "widgets", { statusNonce: null });
      expect(marker(runId)).toBe(`<!-- formula-runner:run:${runId} -->`);
      const earlier = forge.addComment(REPO, 9, { login: "runner-bot", body: `${marker(runId)}\nqueued` });
      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 9, payload: { kind: "status" } });
      await drainAll(worker);
      expect(writes(flavor).map((r) => `${r.method} ${r.path}`)).toEqual([
        `PATCH /repos/${REPO}/issues/comments/${earlier.id}`,
      ]);
      expect((await runRow(runId)).statusCommentId).toBe(earlier.id);
    });

    it("defangs markers in what the bot posts for others, so an agent's comment is never taken for a status comment", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(9);
      // An agent (whose text the bot posts) that learned the run's marker from the issue.
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        runId,
        issue: 9,
        payload: { kind: "comment", body: `${marker(runId)}\nI am the status now` },
      });
      await drainAll(worker);
      const [posted] = forge.issue(REPO, 9).comments;
      expect(posted?.body).not.toContain(marker(runId));
      expect(posted?.body).toContain("<!-- (quoted) formula-runner:run:");
      // The status comment (its id not recorded, as after a crash) is not that comment.
      statusText.set(runId, `output: ${marker(runId)}`);
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 9, payload: { kind: "status" } });
      await drainAll(worker);
      const comments = forge.issue(REPO, 9).comments;
      expect(comments).toHaveLength(2);
      expect(comments[0]?.body).toBe(posted?.body);
      // Its own marker once, at the top; the copy in the rendered text is defanged.
      expect(comments[1]?.body.split(marker(runId))).toHaveLength(2);
      expect(comments[1]?.body.startsWith(marker(runId))).toBe(true);
    });

    it("posts a new status comment when the recorded one was deleted", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(10);
      await t.database.db.update(runs).set({ statusCommentId: 987_654 }).where(eq(runs.id, runId));
      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 10, payload: { kind: "status" } });
      await drainAll(worker);
      const [comment] = forge.issue(REPO, 10).comments;
      expect(comment?.body).toBe(`${marker(runId)}\nrunning`);
      expect((await runRow(runId)).statusCommentId).toBe(comment!.id);
      expect((await lastRow()).state).toBe("sent");
    });

    it("retries a 500 after a backoff, recording every attempt", async () => {
      const worker = makeWorker([project()]);
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 3,
        payload: { kind: "comment", body: "retry me" },
      });
      forge.failNext({ status: 500 });
      const before = now().getTime();
      expect(await worker.drainOnce()).toBe(1);
      const after = now().getTime();
      let r = await lastRow();
      expect(r).toMatchObject({ state: "pending", attempts: 1 });
      expect(r.lastError).toContain("HTTP 500");
      // 2 s base, jitter 0.5 + 0.5 = x1.
      expect(r.nextAttemptAt.getTime()).toBeGreaterThanOrEqual(before + 2_000);
      expect(r.nextAttemptAt.getTime()).toBeLessThanOrEqual(after + 2_000);
      expect(await worker.drainOnce()).toBe(0); // not due yet

      advance(2_000);
      expect(await worker.drainOnce()).toBe(1);
      r = await lastRow();
      expect(r).toMatchObject({ state: "sent", attempts: 2, lastError: null });
      expect(forge.issue(REPO, 3).comments).toHaveLength(1);

      const warn = lines.find((l) => l.level === 40 && l.outboxId === r.id);
      expect(warn).toMatchObject({ kind: "comment", project: "widgets", issue: 3, attempt: 1, status: 500 });
    });

    it("waits as long as a 429's Retry-After says", async () => {
      const worker = makeWorker([project()]);
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 4,
        payload: { kind: "label", labels: ["triage"] },
      });
      forge.failNext({ status: 429, headers: { "retry-after": "60" } });
      const before = now().getTime();
      await worker.drainOnce();
      const after = now().getTime();
      const r = await lastRow();
      expect(r).toMatchObject({ state: "pending", attempts: 1 });
      expect(r.lastError).toContain("HTTP 429");
      expect(r.nextAttemptAt.getTime()).toBeGreaterThanOrEqual(before + 60_000);
      expect(r.nextAttemptAt.getTime()).toBeLessThanOrEqual(after + 60_000);

      // The test clock also runs in real time: wide margins keep a loaded machine honest.
      advance(30_000);
      expect(await worker.drainOnce()).toBe(0);
      advance(31_000);
      expect(await worker.drainOnce()).toBe(1);
      expect((await lastRow()).state).toBe("sent");
      expect(forge.issue(REPO, 4).labels.map((l) => l.name)).toEqual(["triage"]);
    });

    it("waits for the rate limit's reset on a 403 with x-ratelimit-remaining 0", async () => {
      const worker = makeWorker([project()]);
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 4,
        payload: { kind: "comment", body: "limited" },
      });
      const reset = Math.floor(now().getTime() / 1000) + 120;
      forge.failNext({
        status: 403,
        headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": String(reset) },
        body: { message: "API rate limit exceeded" },
      });
      await worker.drainOnce();
      const r = await lastRow();
      expect(r).toMatchObject({ state: "pending", attempts: 1 });
      expect(r.nextAttemptAt.getTime()).toBe(reset * 1000);

      advance(90_000);
      expect(await worker.drainOnce()).toBe(0);
      advance(31_000);
      expect(await worker.drainOnce()).toBe(1);
      expect((await lastRow()).state).toBe("sent");
    });

    it("fails a 404 at once and does not retry it", async () => {
      const worker = makeWorker([project()]);
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 6,
        payload: { kind: "comment_edit", commentId: 424_242, body: "edit" },
      });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 6,
        payload: { kind: "comment", body: "after the failed edit" },
      });
      expect(await worker.drainOnce()).toBe(1);
      const [failed] = await rows();
      expect(failed).toMatchObject({ state: "failed", attempts: 1 });
      expect(failed!.lastError).toMatch(/HTTP 404.*Not Found/);
      const error = lines.find((l) => l.level === 50 && l.outboxId === failed!.id);
      expect(error).toMatchObject({ kind: "comment_edit", project: "widgets", issue: 6, attempt: 1, status: 404 });

      // A failed row no longer holds up the issue's queue; it is never sent again.
      advance(3_600_000);
      await drainAll(worker);
      expect((await rows()).map((r) => [r.state, r.attempts])).toEqual([
        ["failed", 1],
        ["sent", 1],
      ]);
      expect(writes(flavor).filter((r) => r.method === "PATCH")).toHaveLength(1);
    });

    it("keeps everything while the forge is down and sends it all, in order, when it is back", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(2);
      statusText.set(runId, "running");
      await enqueueOutbox(t.database.db, { project: "widgets", issue: 1, payload: { kind: "comment", body: "first" } });
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 2, payload: { kind: "status" } });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 1,
        payload: { kind: "label", labels: ["blocked"] },
      });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 1,
        payload: { kind: "comment", body: "second" },
      });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 2,
        payload: { kind: "comment", body: "after the status" },
      });

      forge.setDown(true);
      for (let round = 0; round < 5; round++) {
        await worker.drainOnce();
        statusText.set(runId, `running, round ${round}`);
        await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 2, payload: { kind: "status" } });
        advance(16 * 60_000); // past the longest backoff (10 min x 1.5)
      }
      const during = await rows();
      expect(during.every((r) => r.state === "pending")).toBe(true);
      // Only the head of each issue's queue was tried: the later rows wait their turn.
      expect(during.map((r) => r.attempts)).toEqual([5, 5, 0, 0, 0]);
      expect(during.map((r) => r.lastError)).toEqual([
        expect.stringContaining("HTTP 503"),
        expect.stringContaining("HTTP 503"),
        null,
        null,
        null,
      ]);

      forge.setDown(false);
      const attemptsBefore = forge.requests.length;
      await drainAll(worker);
      expect((await rows()).map((r) => r.state)).toEqual(["sent", "sent", "sent", "sent", "sent"]);
      expect(forge.issue(REPO, 1).comments.map((c) => c.body.split("\n")[0])).toEqual(["first", "second"]);
      expect(forge.issue(REPO, 1).labels.map((l) => l.name)).toEqual(["blocked"]);
      expect(forge.issue(REPO, 2).comments.map((c) => c.body.split("\n").slice(0, 2).join("|"))).toEqual([
        `${marker(runId)}|running, round 4`,
        "after the status|",
      ]);
      const sentOrder = forge.requests
        .slice(attemptsBefore)
        .filter((r) => r.method === "POST" && /\/issues\/1\//.test(r.path))
        .map((r) => (r.path.endsWith("/labels") ? "label" : (r.body as { body: string }).body.split("\n")[0]));
      expect(sentOrder).toEqual(["first", "label", "second"]);
    });

    it("scrubs every secret from what it sends", async () => {
      const worker = makeWorker([project()]);
      const runId = await insertRun(11);
      statusText.set(runId, `env: FORGE_TOKEN=${TOKEN}`);
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 11, payload: { kind: "status" } });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 11,
        payload: { kind: "comment", body: `the secret is ${WEBHOOK_SECRET}` },
      });
      const existing = forge.addComment(REPO, 12, { login: "runner-bot", body: "old" });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 12,
        payload: { kind: "comment_edit", commentId: existing.id, body: `edited ${TOKEN}` },
      });
      await drainAll(worker);

      expect((await rows()).map((r) => r.state)).toEqual(["sent", "sent", "sent"]);
      const bodies = [...forge.issue(REPO, 11).comments, ...forge.issue(REPO, 12).comments].map((c) => c.body);
      expect(bodies).toEqual([
        `${marker(runId)}\nenv: FORGE_TOKEN=[redacted]`,
        expect.stringMatching(/^the secret is \[redacted\]\n/),
        "edited [redacted]",
      ]);
      for (const request of forge.requests) {
        expect(JSON.stringify(request.body ?? "")).not.toContain(TOKEN);
        expect(JSON.stringify(request.body ?? "")).not.toContain(WEBHOOK_SECRET);
      }
    });
  });

  it("sends each row once when two instances drain the same outbox at the same time", async () => {
    const projects = [projectConfig("github"), projectConfig("gitea", "gadgets", OTHER_REPO)];
    const a = makeWorker(projects);
    const b = makeWorker(projects);
    const runIds: number[] = [];
    for (let i = 0; i < 3; i++) {
      const runId = await insertRun(20 + i);
      statusText.set(runId, `run ${runId}`);
      runIds.push(runId);
      await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 20 + i, payload: { kind: "status" } });
    }
    const expected: string[] = [];
    for (let i = 0; i < 24; i++) {
      const project = i % 2 ? "widgets" : "gadgets";
      const body = `comment ${i}`;
      expected.push(body);
      await enqueueOutbox(t.database.db, { project, issue: 30 + (i % 3), payload: { kind: "comment", body } });
    }

    await Promise.all([a.start(), b.start()]);
    a.notify();
    b.notify();
    await eventually(async () => (await rows()).every((r) => r.state === "sent"), "every row sent");

    const posts = forge.requests.filter((r) => r.method === "POST");
    expect(posts).toHaveLength(24 + 3);
    const posted = posts
      .map((r) => (r.body as { body: string }).body.split("\n")[0]!)
      .filter((b) => b.startsWith("comment "));
    expect(posted.sort()).toEqual([...expected].sort());
    expect((await rows()).every((r) => r.attempts === 1)).toBe(true);
    for (const runId of runIds) {
      const issue = forge.issue(REPO, (await runRow(runId)).issue!);
      expect(issue.comments.filter((c) => c.body.includes(marker(runId)))).toHaveLength(1);
    }
    // Within an issue, rows went out in id order.
    for (const [repo, issue] of [
      [REPO, 31],
      [OTHER_REPO, 30],
    ] as const) {
      const numbers = forge
        .issue(repo, issue)
        .comments.map((c) => Number(c.body.split("\n")[0]!.slice("comment ".length)));
      expect(numbers).toEqual([...numbers].sort((x, y) => x - y));
      expect(numbers.length).toBe(4);
    }
  });

  it("does not post a comment twice when an earlier try may have posted it", async () => {
    const worker = makeWorker([projectConfig("github")]);
    await enqueueOutbox(t.database.db, {
      project: "widgets",
      issue: 13,
      payload: { kind: "comment", body: "only once" },
    });
    const queued = await lastRow();
    // As if a try had posted it, then timed out before hearing the answer.
    const posted = forge.addComment(REPO, 13, { login: "runner-bot", body: `only once\n\n${outboxMarker(queued.id)}` });
    await t.database.db
      .update(outbox)
      .set({ attempts: 1, lastError: "no answer within 30 s" })
      .where(eq(outbox.id, queued.id));

    await drainAll(worker);
    expect(forge.issue(REPO, 13).comments).toHaveLength(1);
    expect(writes()).toHaveLength(0);
    expect(await row(queued.id)).toMatchObject({ state: "sent", attempts: 2, result: { id: posted.id } });
  });

  it("fails rows whose project is unknown or has no token, saying why", async () => {
    const worker = makeWorker([
      projectConfig("github", "tokenless", "acme/tokenless", { token: undefined, tokenEnv: "TOKENLESS_TOKEN" }),
    ]);
    await enqueueOutbox(t.database.db, { project: "ghost", issue: 1, payload: { kind: "comment", body: "x" } });
    await enqueueOutbox(t.database.db, { project: "tokenless", issue: 1, payload: { kind: "label", labels: ["x"] } });
    expect(await worker.drainOnce()).toBe(2);
    const [ghost, tokenless] = await rows();
    expect(ghost).toMatchObject({ state: "failed", lastError: 'project "ghost" is not configured' });
    expect(tokenless).toMatchObject({
      state: "failed",
      lastError: 'project "tokenless" has no forge token (environment variable TOKENLESS_TOKEN is not set)',
    });
    expect(forge.requests).toHaveLength(0);
  });

  it("gives up on a row still failing three days after it was queued", async () => {
    const worker = makeWorker([projectConfig("github")]);
    await enqueueOutbox(t.database.db, {
      project: "widgets",
      issue: 14,
      payload: { kind: "comment", body: "too late" },
    });
    advance(3 * 86_400_000 + 1_000);
    forge.failNext({ status: 502 });
    await worker.drainOnce();
    const r = await lastRow();
    expect(r.state).toBe("failed");
    expect(r.lastError).toMatch(/^gave up after 3 days: posting a comment on acme\/widgets#14 failed: HTTP 502/);
    expect(await worker.drainOnce()).toBe(0);
  });

  it("keeps the loop going when a send throws, and wakes on notify()", async () => {
    let renders = 0;
    const worker = makeWorker([projectConfig("github")], {
      pollMs: 60_000, // only notify() wakes it in this test
      renderStatus: async (runId) => {
        if (renders++ === 0) throw new Error("render failed");
        return `${marker(runId)}\nrecovered`;
      },
    });
    await worker.start();
    const runId = await insertRun(15);
    await enqueueOutbox(t.database.db, { project: "widgets", runId, issue: 15, payload: { kind: "status" } });
    worker.notify();
    await eventually(async () => (await lastRow()).lastError === "render failed", "the failed render recorded");
    expect(
      lines.some((l) => l.level === 40 && l.outboxId !== undefined && String(l.msg).includes("render failed")),
    ).toBe(true);

    await enqueueOutbox(t.database.db, {
      project: "widgets",
      issue: 16,
      payload: { kind: "comment", body: "still working" },
    });
    worker.notify();
    await eventually(async () => forge.issue(REPO, 16).comments.length === 1, "a later comment sent");

    advance(2_000);
    worker.notify();
    await eventually(
      async () => forge.issue(REPO, 15).comments[0]?.body.endsWith("recovered"),
      "the status sent on retry",
    );
  });

  it("stops idempotently, waits for the send in flight and leaves no timer behind", async () => {
    const timers = trackTimers();
    // A forge of its own, closed at the end: fetch keeps a timer per idle keep-alive socket.
    const own = await startFakeForge({ tokens: { [TOKEN]: "runner-bot" } });
    // A poll far longer than the test: a poll timer left behind would still be there at the end.
    const worker = makeWorker([projectConfig("github", "widgets", REPO, { forgeUrl: own.url })], { pollMs: 60_000 });
    try {
      await worker.start();
      await worker.start();
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 17,
        payload: { kind: "comment", body: "before stop" },
      });
      worker.notify();
      await eventually(async () => own.issue(REPO, 17).comments.length === 1, "the comment sent");

      // A send in flight when stop() is called completes before stop() resolves.
      own.failNext({ status: 500, delayMs: 300 });
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 18,
        payload: { kind: "comment", body: "in flight" },
      });
      worker.notify();
      await eventually(
        async () => own.requests.some((r) => r.path.includes("/issues/18/") && r.status === 0),
        "the send in flight",
      );
      await Promise.all([worker.stop(), worker.stop()]);
      const inFlight = await lastRow();
      expect(inFlight).toMatchObject({ state: "pending", attempts: 1 });
      expect(inFlight.lastError).toContain("HTTP 500");
      await worker.stop();

      // Stopped means stopped: a notify() sends nothing.
      await enqueueOutbox(t.database.db, {
        project: "widgets",
        issue: 19,
        payload: { kind: "comment", body: "after stop" },
      });
      worker.notify();
      await sleep(150);
      expect(own.issue(REPO, 19).comments).toHaveLength(0);
      expect(await lastRow()).toMatchObject({ state: "pending", attempts: 0 });
    } finally {
      await own.close();
    }
    try {
      // Fetch's keep-alive timers end with the forge's connections; the worker's must be gone already.
      await eventually(async () => timers.live().length === 0, "no timer left behind", 2_000).catch(
        (error: unknown) => {
          throw new Error(`${String(error)}: ${timers.live().join("\n")}`);
        },
      );
    } finally {
      timers.stop();
    }
  });
});
