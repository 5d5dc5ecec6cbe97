import { writeFile } from "node:fs/promises";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deliveries, runs, sessions, worktrees } from "../../db/schema/index.js";
import { DashboardClient } from "../helpers/dashboard.js";
import { oneBackend } from "../helpers/db.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";

describe.each(oneBackend())("dashboard pages, on %s", (backend) => {
  let t: TestServer;
  let browser: DashboardClient;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: {
        quick: testFormula("quick"),
        crash: testFormula("crash", { agent: "crash" }),
        ask: testFormula("ask", { agent: "escalate", escalation_timeout: "1h" }),
        hold: testFormula("hold", { agent: "hang", timeout: "60s" }),
        nightly: testFormula("nightly", { on: {} }).replace(
          "[on]\ndispatch = true",
          '[on]\ndispatch = false\nschedule = ["0 3 * * *"]',
        ),
      },
      agents: { crash: "crash-always", escalate: "escalate", hang: "hang" },
      project: { forge: "github" },
    });
    browser = new DashboardClient(t.url);
    const signedIn = await browser.signIn(TEST_TOKEN);
    expect(signedIn.status).toBe(303);
  });
  afterAll(async () => {
    await t?.stop();
  });

  const dispatch = async (formula: string, issue?: number) => {
    const { status, body } = await t.api("POST", "/api/runs", { formula, ...(issue ? { issue } : {}) });
    expect(status).toBe(201);
    return body.id as number;
  };

  describe("signing in", () => {
    it("sends a browser without a session to the sign-in page, remembering where it was going", async () => {
      const anonymous = new DashboardClient(t.url);
      for (const page of ["/", "/runs/1", "/worktrees", "/formulas", "/deliveries", "/runs/1/log/stream"]) {
        const res = await anonymous.get(page);
        expect(res.status, page).toBe(302);
        expect(res.location, page).toBe(`/login?${new URLSearchParams({ next: page })}`);
      }
      const post = await anonymous.post("/runs/1/cancel", { _csrf: "x" });
      expect(post.status).toBe(303);
      expect(post.location).toMatch(/^\/login\?/);
    });

    it("shows a sign-in form with a password field named token, under strict security headers", async () => {
      const anonymous = new DashboardClient(t.url);
      const page = await anonymous.get("/login?next=%2Fformulas");
      expect(page.status).toBe(200);
      expect(page.text).toContain('<form method="post" action="/login">');
      expect(page.text).toMatch(/<input[^>]*type="password"[^>]*name="token"/);
      expect(page.text).toContain('name="next" value="/formulas"');
      const csp = page.headers.get("content-security-policy") ?? "";
      expect(csp).toContain("frame-ancestors 'none'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toContain("unsafe-inline");
      expect(page.headers.get("x-frame-options")).toBe("DENY");
      expect(page.headers.get("x-content-type-options")).toBe("nosniff");
      expect(page.text).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    });

    it("refuses a wrong token and a sign-in form without its CSRF token; sets a strict cookie otherwise", async () => {
      const client = new DashboardClient(t.url);
      const wrong = await client.signIn("not-the-token");
      expect(wrong.status).toBe(401);
      expect(wrong.text).toContain("not the API token");
      expect(client.cookies.has("fr_session")).toBe(false);

      await client.get("/login");
      const forged = await client.post("/login", { token: TEST_TOKEN, _csrf: "forged" });
      expect(forged.status).toBe(403);
      expect(client.cookies.has("fr_session")).toBe(false);
      // A form posted from another site carries no sign-in cookie (SameSite=Strict): refused too.
      const crossSite = await new DashboardClient(t.url).post("/login", {
        token: TEST_TOKEN,
        _csrf: client.csrf ?? "",
      });
      expect(crossSite.status).toBe(403);

      const ok = await client.signIn(TEST_TOKEN, "/formulas");
      expect(ok.status).toBe(303);
      expect(ok.location).toBe("/formulas");
      const cookie = ok.setCookies.find((c) => c.startsWith("fr_session="));
      expect(cookie).toMatch(/HttpOnly/);
      expect(cookie).toMatch(/SameSite=Strict/);
      expect(cookie).not.toMatch(/Secure/);
      expect(cookie).not.toContain(TEST_TOKEN);
      // Somewhere off-site is never a place to go after signing in.
      const away = await new DashboardClient(t.url).signIn(TEST_TOKEN, "//evil.example/");
      expect(away.location).toBe("/");
    });

    it("refuses an address that sent ten wrong tokens, with Retry-After, and no other address", async () => {
      // Another loopback address is another client to the server.
      const guesser = new DashboardClient(t.url, "127.0.0.3");
      for (let i = 0; i < 10; i++) expect((await guesser.signIn(`guess-${i}`)).status).toBe(401);
      const blocked = await guesser.signIn(TEST_TOKEN);
      expect(blocked.status).toBe(429);
      expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(800);
      expect(blocked.text).toContain("Too many wrong tokens from this address");
      expect(guesser.cookies.has("fr_session")).toBe(false);
      expect((await new DashboardClient(t.url, "127.0.0.4").signIn(TEST_TOKEN)).status).toBe(303);
    });

    it("marks the cookie Secure behind TLS", async () => {
      const client = new DashboardClient(t.url);
      await client.get("/login");
      const res = await client.post("/login", { token: TEST_TOKEN }, { "x-forwarded-proto": "https" });
      expect(res.status).toBe(303);
      expect(res.setCookies.find((c) => c.startsWith("fr_session="))).toMatch(/Secure/);
    });

    it("refuses a tampered session cookie and signs out on request", async () => {
      const client = new DashboardClient(t.url);
      await client.signIn(TEST_TOKEN);
      expect((await client.get("/")).status).toBe(200);
      const real = client.cookies.get("fr_session") ?? "";
      const [payload = "", signature = ""] = real.split(".");
      const forged = Buffer.from(JSON.stringify({ sid: "x", exp: 4_000_000_000 })).toString("base64url");
      client.cookies.set("fr_session", `${forged}.${signature}`);
      expect((await client.get("/")).status).toBe(302);
      client.cookies.set("fr_session", `${payload}.${signature}`);
      expect((await client.get("/")).status).toBe(200);
      const noCsrf = await client.post("/logout", { _csrf: null });
      expect(noCsrf.status).toBe(403);
      const out = await client.post("/logout");
      expect(out.status).toBe(303);
      expect(client.cookies.has("fr_session")).toBe(false);
      expect((await client.get("/")).status).toBe(302);
    });

    it("leaves the API as it was: bearer token, JSON errors", async () => {
      const res = await fetch(`${t.url}/api/runs`, {
        headers: { cookie: `fr_session=${browser.cookies.get("fr_session")}` },
      });
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({ error: { code: "unauthorized" } });
      expect(res.headers.get("content-security-policy")).toBeNull();
    });
  });

  describe("runs", () => {
    it("lists runs newest first with status, phase, trigger, issue link, duration, cost and turns", async () => {
      const id = await dispatch("quick", 42);
      await t.waitForRun(id);
      await t.db.database.db.insert(sessions).values({
        runId: id,
        seq: 9,
        kind: "resume",
        instanceId: "elsewhere",
        numTurns: 7,
        costUsd: 0.125,
        endedAt: new Date(),
      });
      const page = await browser.get("/");
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toMatch(/text\/html/);
      const row = page.text.slice(page.text.indexOf(`href="/runs/${id}"`));
      expect(row.slice(0, 900)).toMatch(/status-done/);
      expect(row.slice(0, 900)).toContain("quick");
      expect(row.slice(0, 900)).toContain("dispatch by api");
      expect(row.slice(0, 900)).toContain('href="https://github.com/acme/demo/issues/42"');
      expect(row.slice(0, 900)).toContain("$0.1250");
      expect(row.slice(0, 900)).toMatch(/<td>7<\/td>/);
      expect(page.text).not.toContain(TEST_TOKEN);
    });

    it("filters by status, formula and project, and pages with a cursor", async () => {
      const base = { formula: "bulk", project: "demo", triggerKind: "dispatch" as const, triggerRef: "seed" };
      await t.db.database.db
        .insert(runs)
        .values(Array.from({ length: 60 }, (_, i) => ({ ...base, status: i % 2 === 0 ? "done" : "failed" }) as const));
      const first = await browser.get("/?formula=bulk");
      const ids = [...first.text.matchAll(/href="\/runs\/(\d+)"/g)].map((m) => Number(m[1]));
      expect(ids).toHaveLength(50);
      expect(ids).toEqual([...ids].sort((a, b) => b - a));
      const next = /href="(\/\?formula=bulk&amp;cursor=[^"]+)" rel="next"/.exec(first.text)?.[1];
      expect(next).toBeDefined();
      const second = await browser.get((next as string).replaceAll("&amp;", "&"));
      const more = [...second.text.matchAll(/href="\/runs\/(\d+)"/g)].map((m) => Number(m[1]));
      expect(more).toHaveLength(10);
      expect(Math.max(...more)).toBeLessThan(Math.min(...ids));
      expect(second.text).not.toContain('rel="next"');

      const failed = await browser.get("/?status=failed&formula=bulk&project=demo");
      expect(failed.text).not.toContain("status-done");
      expect([...failed.text.matchAll(/status status-failed/g)].length).toBe(30);
      expect((await browser.get("/?status=nonsense")).status).toBe(400);
    });

    it("shows a crashed run's timeline, sessions, preserved worktree and log", async () => {
      const id = await dispatch("crash");
      const run = await t.waitForRun(id);
      expect(run.status).toBe("crashed");
      const page = await browser.get(`/runs/${id}`);
      expect(page.status).toBe(200);
      expect(page.text).toContain(`Run #${id}`);
      expect(page.text).toMatch(/<svg[^>]*role="img"[^>]*aria-label="Phase timeline/);
      expect(page.text).toContain('<span class="phase-name">working</span>');
      expect(page.text).toContain("recovery");
      expect(page.text).toContain(run.worktree.path);
      expect(page.text).toMatch(/status-preserved/);
      expect(page.text).toContain('data-live="0"');
      // A finished run has no cancel button.
      expect(page.text).not.toContain(`action="/runs/${id}/cancel"`);
      const log = await browser.get(`/runs/${id}/log`);
      expect(log.status).toBe(200);
      expect(log.headers.get("content-type")).toMatch(/text\/plain/);
      expect((await browser.get("/runs/999999")).status).toBe(404);
      expect((await browser.get("/runs/999999")).text).toContain("no run 999999");
    });

    it("strips terminal colours from the log", async () => {
      const id = await dispatch("quick");
      await t.waitForRun(id);
      t.server.services.runLog.append(id, "\u001b[31mred alert\u001b[0m plain\n");
      await t.server.services.runLog.flush(id);
      const page = await browser.get(`/runs/${id}`);
      expect(page.text).toContain("red alert plain");
      expect(page.text).not.toContain("\u001b");
    });

    it("streams the log of a run as server-sent events with the session cookie", async () => {
      const id = await dispatch("quick");
      await t.waitForRun(id);
      const res = await fetch(`${t.url}/runs/${id}/log/stream`, {
        headers: { cookie: `fr_session=${browser.cookies.get("fr_session")}` },
      });
      expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
      const text = await res.text();
      expect(text).toContain("event: end");
      expect(text).toContain('"status":"done"');
    });

    it("sends the changes of runs as server-sent events on /events", async () => {
      const aborted = new AbortController();
      const res = await fetch(`${t.url}/events`, {
        headers: { cookie: `fr_session=${browser.cookies.get("fr_session")}` },
        signal: aborted.signal,
      });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
      const reader = (res.body as ReadableStream<Uint8Array>).pipeThrough(new TextDecoderStream()).getReader();
      type Change = { id: number; status: string; phase: string | null };
      let text = "";
      /** Reads events until one matches (the test's timeout bounds the wait). */
      const until = async (match: (e: Change) => boolean): Promise<Change> => {
        for (;;) {
          const events = text.split("\n\n");
          text = events.pop() ?? "";
          for (const [i, event] of events.entries()) {
            const data = /^data: (.*)$/m.exec(event)?.[1];
            const change = /^event: run$/m.test(event) && data ? (JSON.parse(data) as Change) : undefined;
            if (change && match(change)) {
              text = `${events.slice(i + 1).join("\n\n")}${i + 1 < events.length ? "\n\n" : ""}${text}`;
              return change;
            }
          }
          const { value, done } = await reader.read();
          if (done) throw new Error("the feed ended");
          text += value;
        }
      };
      // A run that holds its phase: its start, then its end, each arrive as they happen.
      const id = await dispatch("hold");
      expect(await until((e) => e.id === id && e.phase === "working")).toEqual({
        id,
        status: "running",
        phase: "working",
      });
      expect((await t.api("POST", `/api/runs/${id}/cancel`)).status).toBe(200);
      expect(await until((e) => e.id === id && e.status !== "running")).toMatchObject({ id, status: "cancelled" });
      aborted.abort();
      // The feed is the dashboard's: no session, no feed.
      expect((await new DashboardClient(t.url).get("/events")).status).toBe(302);
    });

    it("answers an escalation from the page, refusing a form without the CSRF token", async () => {
      const id = await dispatch("ask", 5);
      await t.waitForRun(id, ["escalated"]);
      const page = await browser.get(`/runs/${id}`);
      expect(page.text).toContain("Should I drop the legacy API?");
      expect(page.text).toContain(`action="/runs/${id}/reply"`);
      expect(page.text).toMatch(/left before the issue is labelled blocked/);

      const refused = await browser.post(`/runs/${id}/reply`, { body: "yes", _csrf: "forged" });
      expect(refused.status).toBe(403);
      expect((await t.api("GET", `/api/runs/${id}`)).body.escalations[0].state).toBe("open");
      const empty = await browser.post(`/runs/${id}/reply`, { body: "  " });
      expect(empty.status).toBe(400);

      const answered = await browser.post(`/runs/${id}/reply`, { body: "Yes, drop it." });
      expect(answered.status).toBe(303);
      expect(answered.location).toMatch(new RegExp(`^/runs/${id}\\?notice=`));
      const done = await t.waitForRun(id, ["done", "failed", "crashed"]);
      expect(done.status).toBe("done");
      const after = await browser.get(`/runs/${id}`);
      expect(after.text).toContain("Answered by <strong>dashboard</strong>");
      expect(after.text).toContain("Yes, drop it.");
      const again = await browser.post(`/runs/${id}/reply`, { body: "twice" });
      expect(again.status).toBe(409);
    });

    it("cancels a running run from its page", async () => {
      const id = await dispatch("hold");
      await t.waitForRun(id, ["running"]);
      const asked = await t.api("POST", `/api/runs/${id}/outputs`, { type: "comment", body: "hello" });
      expect(asked.status).toBe(202);
      const page = await browser.get(`/runs/${id}`);
      expect(page.text).toContain('data-live="1"');
      expect(page.text).toContain("<dt>Sandbox</dt>");
      const outputs = page.text.slice(page.text.indexOf('id="outputs"'));
      expect(outputs).toMatch(/<td>comment<\/td>\s*<td>\s*<span class="status status-(queued|refused)">/);
      expect(page.text).toContain(`action="/runs/${id}/cancel"`);
      expect((await browser.post(`/runs/${id}/cancel`, { _csrf: "forged" })).status).toBe(403);
      expect((await t.api("GET", `/api/runs/${id}`)).body.status).toBe("running");
      const res = await browser.post(`/runs/${id}/cancel`);
      expect(res.status).toBe(303);
      expect((await t.waitForRun(id)).status).toBe("cancelled");
    });
  });

  describe("worktrees", () => {
    it("lists preserved worktrees with size, age and totals; previews a purge, then purges", async () => {
      const id = await dispatch("crash");
      const run = await t.waitForRun(id);
      const page = await browser.get("/worktrees");
      expect(page.status).toBe(200);
      expect(page.text).toContain(run.worktree.path);
      expect(page.text).toContain("Per project");
      expect(page.text).toMatch(/\d+(\.\d)? (B|KiB|MiB)/);

      const refused = await browser.post("/worktrees/purge", { older_than_hours: "0", _csrf: "forged" });
      expect(refused.status).toBe(403);

      const preview = await browser.post("/worktrees/purge", { older_than_hours: "0" });
      expect(preview.status).toBe(200);
      expect(preview.text).toContain("Purge preview");
      expect(preview.text).toContain("Nothing has been deleted yet");
      expect(preview.text).toContain(run.worktree.path);
      const [row] = await t.db.database.db.select().from(worktrees).where(eq(worktrees.id, run.worktree.id));
      expect(row?.state).toBe("preserved");

      const purged = await browser.post("/worktrees/purge", { older_than_hours: "0", confirm: "1" });
      expect(purged.status).toBe(200);
      expect(purged.text).toMatch(/Purged \d+ worktree/);
      const [after] = await t.db.database.db.select().from(worktrees).where(eq(worktrees.id, run.worktree.id));
      expect(after?.state).toBe("removed");
      expect((await browser.post("/worktrees/purge", { older_than_hours: "-1" })).status).toBe(400);
      const removed = await browser.get("/worktrees?state=removed");
      expect(removed.text).toContain(run.worktree.path);
      expect(removed.text).not.toContain(`action="/worktrees/${run.worktree.id}/delete"`);
    });

    it("deletes one worktree", async () => {
      const id = await dispatch("crash");
      const run = await t.waitForRun(id);
      expect((await browser.post(`/worktrees/${run.worktree.id}/delete`, { _csrf: "forged" })).status).toBe(403);
      const res = await browser.post(`/worktrees/${run.worktree.id}/delete`);
      expect(res.status).toBe(303);
      expect(res.location).toMatch(/^\/worktrees\?notice=/);
      const [row] = await t.db.database.db.select().from(worktrees).where(eq(worktrees.id, run.worktree.id));
      expect(row?.state).toBe("removed");
      expect((await browser.post("/worktrees/999999/delete")).status).toBe(404);
    });
  });

  describe("formulas and deliveries", () => {
    it("shows triggers, next fire times, last run and load problems; dispatches from a form", async () => {
      await writeFile(path.join(t.dir, "formulas", "broken.toml"), 'name = "broken"\ndescription = 5\n');
      expect((await browser.post("/formulas/reload", { _csrf: "forged" })).status).toBe(403);
      const reloaded = await browser.post("/formulas/reload");
      expect(reloaded.status).toBe(303);
      expect(decodeURIComponent(reloaded.location ?? "")).toMatch(/problem/);
      const page = await browser.get("/formulas");
      expect(page.status).toBe(200);
      expect(page.text).toContain('id="formula-nightly"');
      expect(page.text).toContain("<code>0 3 * * *</code>");
      expect(page.text).toMatch(/next: \d{4}-\d\d-\d\d 03:00:00Z/);
      expect(page.text).toContain("Load problems");
      expect(page.text).toContain("broken.toml");
      expect(page.text).toContain("<code>description</code>");
      // nightly does not allow dispatch: no form for it.
      expect(page.text).not.toContain('action="/formulas/nightly/dispatch"');

      const refused = await browser.post("/formulas/quick/dispatch", { project: "demo", _csrf: "forged" });
      expect(refused.status).toBe(403);
      const res = await browser.post("/formulas/quick/dispatch", { project: "demo", issue: "12" });
      expect(res.status).toBe(303);
      const runId = Number(/^\/runs\/(\d+)/.exec(res.location ?? "")?.[1]);
      const run = await t.waitForRun(runId);
      expect(run).toMatchObject({ formula: "quick", issue: 12, trigger: { kind: "dispatch", ref: "dashboard" } });
      const again = await browser.get("/formulas");
      expect(again.text).toContain(`href="/runs/${runId}"`);
      expect((await browser.post("/formulas/nightly/dispatch", { project: "demo" })).status).toBe(403);
    });

    it("lists deliveries with the runs they fired or why they fired nothing", async () => {
      await t.db.database.db.insert(deliveries).values({
        id: "delivery-ignored-1",
        forge: "github",
        event: "issues",
        action: "opened",
        project: "demo",
        repository: "acme/demo",
        sender: "alice",
        payload: {},
        outcome: "ignored",
        reason: "no formula matches issues.opened",
      });
      const page = await browser.get("/deliveries");
      expect(page.status).toBe(200);
      expect(page.text).toContain("delivery-ignored-1");
      expect(page.text).toContain("no formula matches issues.opened");
      const filtered = await browser.get("/deliveries?outcome=queued");
      expect(filtered.text).not.toContain("delivery-ignored-1");
    });
  });
});
