import { readFile } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { oneBackend } from "../helpers/db.js";
import { type FakeForge, startFakeForge } from "../helpers/fake-forge.js";
import { loadFixture, signedWebhook } from "../helpers/sign-webhook.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";

const SECRET = "escalation-webhook-secret-1";
const FORGE_TOKEN = "forge-token-escalations-42";
/** An agent credential the server passes through to agents. */
const MODEL_KEY = "sk-ant-model-key-escalations-7";

const eventually = async <T>(
  probe: () => Promise<T | undefined | false>,
  timeoutMs = 20_000,
  what = "condition",
): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) throw new Error(`${what} not met in time`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe.each(oneBackend())("escalations through the forge, on %s", (backend) => {
  let t: TestServer;
  let forge: FakeForge;
  let clock = Date.now();
  // The sandboxed agent writes only in its run's agent dir: the reply copy lands in its TMPDIR.
  const replyFile = (runId: number) => path.join(t.dataDir, "runs", String(runId), "agent", "tmp", "reply.txt");
  const promptFile = (runId: number) => path.join(t.dataDir, "runs", String(runId), "prompt.md");

  beforeAll(async () => {
    forge = await startFakeForge({ tokens: { [FORGE_TOKEN]: "runner-bot" } });
    t = await startTestServer({
      backend,
      now: () => new Date(clock),
      env: { DEMO_SECRET: SECRET, DEMO_TOKEN: FORGE_TOKEN, ANTHROPIC_API_KEY: MODEL_KEY },
      project: {
        webhook_secret_env: "DEMO_SECRET",
        token_env: "DEMO_TOKEN",
        forge_url: forge.url,
        bot_login: "runner-bot",
        escalation_issue: 99,
      },
      formulas: {
        ask: testFormula("ask", {
          agent: "escalate",
          escalation_timeout: "1h",
          env: { REPLY_COPY: "tmp" },
        }),
        // The formula insists on the raw forge token, so the agent has one to leak.
        leak: testFormula("leak", { agent: "leak", report: "always", sandbox: { forge_token: true } }),
        quick: testFormula("quick"),
      },
      agents: {
        escalate: "escalate",
        // Prints the forge token it was given, then fails: the comment must not show it.
        leak: [
          "bash",
          "-c",
          'cat >/dev/null; echo "token is $DEMO_TOKEN, key is $ANTHROPIC_API_KEY"; printf "PHASE:failed\\nReason: leaked $DEMO_TOKEN\\n" > "$PHASE_FILE"',
        ],
      },
    });
    forge.setPermission("acme/demo", "alice", "write");
    forge.setPermission("acme/demo", "mallory", "read");
  });
  afterAll(async () => {
    await t?.stop();
    await forge?.close();
  });

  const comments = (issue: number) => forge.issue("acme/demo", issue).comments;
  const markerComments = (issue: number, runId: number) =>
    comments(issue).filter((c) => c.body.startsWith(`<!-- formula-runner:run:${runId}:`));
  const replyWebhook = (
    comment: { id: number; body: string; user: { login: string } },
    issue: number,
    deliveryId?: string,
  ) => {
    const payload = loadFixture("github/issue_comment.created.json");
    payload.repository.full_name = "acme/demo";
    payload.issue.number = issue;
    payload.comment.id = comment.id;
    payload.comment.body = comment.body;
    payload.comment.user.login = comment.user.login;
    payload.sender.login = comment.user.login;
    const signed = signedWebhook({
      forge: "github",
      event: "issue_comment",
      payload,
      secret: SECRET,
      ...(deliveryId ? { deliveryId } : {}),
    });
    return fetch(`${t.url}/webhooks`, { method: "POST", headers: signed.headers, body: signed.body });
  };

  it("asks on the issue, ignores a reply without write access, resumes exactly once with a permitted one", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "ask", issue: 7, actor: "carol" });
    const escalated = await t.waitForRun(body.id, ["escalated"]);
    expect(escalated.escalations[0]).toMatchObject({
      state: "open",
      issue: 7,
      question: "Should I drop the legacy API?\nIt has no callers left, but the README mentions it.",
    });

    // The question goes out as its own comment, mentioning who started the run.
    const question = await eventually(
      async () => comments(7).find((c) => c.body.includes("needs an answer")),
      20_000,
      "question comment",
    );
    expect(question.body).toContain("@carol run");
    expect(question.body).toContain("> Should I drop the legacy API?");
    expect(question.user.login).toBe("runner-bot");
    // bigint columns come back as strings from postgres.js raw queries: compared as numbers.
    await eventually(
      async () =>
        Number(
          (
            await t.db.database.rows<{ comment_id: string | number | null }>(
              sql`select comment_id from escalations where run_id = ${body.id}`,
            )
          )[0]?.comment_id,
        ) === question.id,
      10_000,
      "question id stored",
    );

    // A reply from someone with read access only: recorded, not delivered.
    const early = forge.addComment("acme/demo", 7, { login: "mallory", body: "just do it" });
    const earlyRes = await replyWebhook(early, 7, "refused-1");
    expect(earlyRes.status).toBe(202);
    expect(((await earlyRes.json()) as { ignored: string }).ignored).toBe(
      `not accepted as the answer to run ${body.id}'s question: not permitted (read access; write needed)`,
    );
    const replies = await t.db.database.rows<{ author: string; outcome: string }>(
      sql`select author, outcome from escalation_replies order by id`,
    );
    expect(replies).toEqual([{ author: "mallory", outcome: "not permitted (read access; write needed)" }]);
    const waiting = (await t.api("GET", `/api/runs/${body.id}`)).body;
    expect(waiting.status).toBe("escalated");
    // The refusal is on the run's record, not only in the database.
    expect(waiting.escalations[0].replies).toEqual([
      expect.objectContaining({
        source: "comment",
        author: "mallory",
        outcome: "not permitted (read access; write needed)",
        comment_id: early.id,
      }),
    ]);

    // A permitted reply, delivered twice with one delivery id and once more with another.
    const answer = forge.addComment("acme/demo", 7, { login: "alice", body: "Yes, drop it. Update the README too." });
    const deliveries = await Promise.all([
      replyWebhook(answer, 7, "dup-1"),
      replyWebhook(answer, 7, "dup-1"),
      replyWebhook(answer, 7, "dup-2"),
    ]);
    expect(deliveries.every((d) => d.status === 200 || d.status === 202)).toBe(true);
    // The answering delivery is recorded as an answer, not as an event no formula matched.
    const recorded = (await t.api("GET", "/api/deliveries?limit=10")).body.deliveries as {
      id: string;
      outcome: string;
      reason: string | null;
    }[];
    const answering = recorded.filter((d) => d.outcome === "answered");
    expect(answering).toHaveLength(1);
    expect(answering[0]?.reason).toBe(`answered the question of run ${body.id}`);
    expect(recorded.find((d) => d.id === "refused-1")).toMatchObject({ outcome: "ignored" });

    const done = await t.waitForRun(body.id, ["done", "failed", "crashed"]);
    expect(done.status).toBe("done");
    expect(done.sessions.map((s: { kind: string; outcome: string }) => [s.kind, s.outcome])).toEqual([
      ["initial", "escalated"],
      ["resume", "done"],
    ]);
    expect(done.escalations[0]).toMatchObject({
      state: "answered",
      reply_author: "alice",
      reply_body: "Yes, drop it. Update the README too.",
    });
    expect(await readFile(replyFile(body.id), "utf8")).toBe("Yes, drop it. Update the README too.");
    const prompt = await readFile(promptFile(body.id), "utf8");
    expect(prompt).toMatch(/## Answer to your question[\s\S]*<<<UNTRUSTED-INPUT \w+ \(reply by @alice\)\nYes, drop it/);
    const delivered = await t.db.database.rows<{ outcome: string }>(
      sql`select outcome from escalation_replies where author = 'alice'`,
    );
    expect(delivered.filter((r) => r.outcome === "delivered")).toHaveLength(1);

    // The status comment was posted once and edited to the end; the answer acknowledged.
    await eventually(
      async () => markerComments(7, body.id)[0]?.body.includes("— done") === true,
      20_000,
      "status comment says done",
    );
    expect(markerComments(7, body.id)).toHaveLength(1);
    const status = markerComments(7, body.id)[0];
    expect(status?.updated_at).not.toBe(status?.created_at);
    expect(comments(7).some((c) => c.body.startsWith("Thanks @alice"))).toBe(true);
    const posts = forge.requests.filter((r) => r.method === "POST" && r.path === "/repos/acme/demo/issues/7/comments");
    expect(
      posts.filter((r) => String((r.body as { body: string }).body).includes(`formula-runner:run:${body.id}`)),
    ).toHaveLength(1);
  });

  it("answers through POST /api/runs/:id/reply too, and refuses a reply when nothing is asked", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "ask", issue: 8 });
    await t.waitForRun(body.id, ["escalated"]);
    const res = await t.api("POST", `/api/runs/${body.id}/reply`, { body: "Keep it.", author: "ops" });
    expect(res.status).toBe(202);
    const done = await t.waitForRun(body.id, ["done", "failed"]);
    expect(done).toMatchObject({ status: "done" });
    expect(await readFile(replyFile(body.id), "utf8")).toBe("Keep it.");
    const again = await t.api("POST", `/api/runs/${body.id}/reply`, { body: "more" });
    expect(again.status).toBe(409);
    expect((await t.api("POST", "/api/runs/424242/reply", { body: "x" })).status).toBe(404);
    expect((await t.api("POST", `/api/runs/${body.id}/reply`, { body: "   " })).status).toBe(400);
  });

  it("labels the issue blocked and fails the run when nobody answers in time", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "ask", issue: 9 });
    await t.waitForRun(body.id, ["escalated"]);
    clock += 61 * 60_000;
    expect(await t.server.services.escalations.expireDue()).toBe(1);
    const failed = await t.waitForRun(body.id, ["failed"]);
    expect(failed.detail).toBe("no reply to the agent's question within 1 h (escalation_timeout)");
    expect(failed.escalations[0].state).toBe("expired");
    await eventually(
      async () => forge.issue("acme/demo", 9).labels.some((l) => l.name === "blocked"),
      20_000,
      "blocked label",
    );
    await eventually(
      async () => comments(9).some((c) => c.body.includes("waited 1 h for an answer")),
      20_000,
      "timeout comment",
    );
    expect(failed.worktree?.state ?? "removed").not.toBe("active");
    clock = Date.now();
  });

  it("finishes the status comment and removes the worktree when an escalated run is cancelled", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "ask", issue: 12 });
    const escalated = await t.waitForRun(body.id, ["escalated"]);
    expect(escalated.worktree.state).toBe("active");
    expect((await t.api("POST", `/api/runs/${body.id}/cancel`)).status).toBe(200);
    const cancelled = await t.waitForRun(body.id, ["cancelled"]);
    expect(cancelled.worktree.state).toBe("removed");
    expect(cancelled.escalations[0].state).toBe("cancelled");
    await eventually(
      async () => markerComments(12, body.id)[0]?.body.includes("— cancelled") === true,
      20_000,
      "status comment says cancelled",
    );
    expect(markerComments(12, body.id)).toHaveLength(1);
  });

  it("never shows a secret in a comment, even when the agent prints one", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "leak" });
    const run = await t.waitForRun(body.id);
    expect(run.status).toBe("failed");
    // report = "always" and no issue: the project's escalation_issue gets the status comment.
    const status = await eventually(
      async () => {
        const c = markerComments(99, body.id)[0];
        return c?.body.includes("— failed") ? c : undefined;
      },
      20_000,
      "status comment on the escalation issue",
    );
    expect(status.body).toContain("token is [redacted], key is [redacted]");
    for (const issue of [7, 8, 9, 12, 99]) {
      for (const c of comments(issue)) {
        for (const secret of [FORGE_TOKEN, SECRET, TEST_TOKEN, MODEL_KEY]) expect(c.body).not.toContain(secret);
      }
    }
    expect(JSON.stringify(run)).not.toContain(FORGE_TOKEN);
    expect(JSON.stringify(run)).not.toContain(MODEL_KEY);
  });

  it("finishes a run while the forge is down, and posts everything once it is back", async () => {
    forge.setDown(true);
    try {
      const { body } = await t.api("POST", "/api/runs", { formula: "quick", issue: 11 });
      const run = await t.waitForRun(body.id);
      expect(run.status).toBe("done");
      expect(comments(11)).toEqual([]);
      const pending = await t.db.database.rows<{ n: number }>(
        sql`select count(*)::int as n from outbox where run_id = ${body.id} and state = 'pending'`,
      );
      expect(pending[0]?.n).toBeGreaterThan(0);
      forge.setDown(false);
      // Backoff would wait seconds to minutes: make the pending rows due now.
      await t.db.database.rows(sql`update outbox set next_attempt_at = now() where state = 'pending'`);
      t.server.services.outbox.notify();
      await eventually(
        async () => markerComments(11, body.id)[0]?.body.includes("— done") === true,
        20_000,
        "status after the outage",
      );
      expect(markerComments(11, body.id)).toHaveLength(1);
    } finally {
      forge.setDown(false);
    }
  });
});
