import { Octokit } from "@octokit/rest";
import { afterEach, describe, expect, it } from "vitest";
import { type FakeForge, type FakeForgeOptions, startFakeForge } from "../helpers/fake-forge.js";

const REPO = "acme/widgets";
const [owner, repo] = REPO.split("/") as [string, string];
const TOKEN = "tok-bot";

const forges: FakeForge[] = [];
async function start(opts: FakeForgeOptions = { tokens: { [TOKEN]: "runner-bot" } }): Promise<FakeForge> {
  const forge = await startFakeForge(opts);
  forges.push(forge);
  return forge;
}

afterEach(async () => {
  for (const forge of forges.splice(0)) {
    await forge.close();
    // Nothing is left listening.
    await expect(fetch(`${forge.url}/user`)).rejects.toThrow();
  }
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };
/** An Octokit as the server will use it; `auth: null` sends no token at all. */
function octokit(baseUrl: string, auth: string | null = TOKEN): Octokit {
  return new Octokit({ baseUrl, auth: auth ?? undefined, log: quiet, request: { retries: 0 } });
}

/** The HTTP status of a rejected Octokit call (RequestError carries it). */
async function statusOf(
  call: Promise<unknown>,
): Promise<{ status: number; headers: Record<string, unknown>; message: string }> {
  const error = (await call.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (err: unknown) => err,
  )) as { status: number; message: string; response?: { headers: Record<string, unknown> } };
  return { status: error.status, headers: error.response?.headers ?? {}, message: error.message };
}

function gitea(forge: FakeForge, path: string, init: { method?: string; body?: unknown; token?: string } = {}) {
  return fetch(`${forge.giteaUrl}${path}`, {
    method: init.method ?? "GET",
    headers: { authorization: `token ${init.token ?? TOKEN}`, "content-type": "application/json" },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
}

describe("fake forge, GitHub flavour through Octokit", () => {
  it("creates, edits, lists and deletes comments as the token's user", async () => {
    const forge = await start({ tokens: { [TOKEN]: "runner-bot", "tok-alice": "alice" } });
    const gh = octokit(forge.url);

    const created = await gh.issues.createComment({ owner, repo, issue_number: 7, body: "status: queued" });
    expect(created.status).toBe(201);
    expect(created.data).toMatchObject({ body: "status: queued", user: { login: "runner-bot" } });
    expect(created.data.html_url).toBe(`${forge.url}/${REPO}/issues/7#issuecomment-${created.data.id}`);

    const edited = await gh.issues.updateComment({ owner, repo, comment_id: created.data.id, body: "status: done" });
    expect(edited.data).toMatchObject({
      id: created.data.id,
      body: "status: done",
      created_at: created.data.created_at,
    });
    expect(Date.parse(edited.data.updated_at)).toBeGreaterThan(Date.parse(created.data.updated_at));

    await octokit(forge.url, "tok-alice").issues.createComment({ owner, repo, issue_number: 7, body: "thanks" });
    const listed = await gh.issues.listComments({ owner, repo, issue_number: 7 });
    expect(listed.data.map((c) => [c.user?.login, c.body])).toEqual([
      ["runner-bot", "status: done"],
      ["alice", "thanks"],
    ]);
    expect(forge.issue(REPO, 7).comments.map((c) => c.body)).toEqual(["status: done", "thanks"]);
    // Another issue and another repository are separate.
    expect((await gh.issues.listComments({ owner, repo, issue_number: 8 })).data).toEqual([]);
    expect((await gh.issues.listComments({ owner, repo: "other", issue_number: 7 })).data).toEqual([]);

    const fetched = await gh.issues.getComment({ owner, repo, comment_id: created.data.id });
    expect(fetched.data.body).toBe("status: done");
    expect((await gh.issues.deleteComment({ owner, repo, comment_id: created.data.id })).status).toBe(204);
    expect(forge.issue(REPO, 7).comments.map((c) => c.body)).toEqual(["thanks"]);
    expect((await statusOf(gh.issues.getComment({ owner, repo, comment_id: created.data.id }))).status).toBe(404);
  });

  it("paginates with per_page/page and a Link header, and filters by since", async () => {
    const forge = await start();
    const gh = octokit(forge.url);
    for (let i = 1; i <= 5; i++) forge.addComment(REPO, 3, { login: "alice", body: `c${i}` });

    const page2 = await gh.issues.listComments({ owner, repo, issue_number: 3, per_page: 2, page: 2 });
    expect(page2.data.map((c) => c.body)).toEqual(["c3", "c4"]);
    expect(page2.headers.link).toContain('rel="next"');

    const all = await gh.paginate(gh.issues.listComments, { owner, repo, issue_number: 3, per_page: 2 });
    expect(all.map((c) => c.body)).toEqual(["c1", "c2", "c3", "c4", "c5"]);
    expect(forge.requests.filter((r) => r.method === "GET").map((r) => r.query.page ?? "1")).toEqual([
      "2",
      "1",
      "2",
      "3",
    ]);

    const later = forge.addComment(REPO, 3, { login: "alice", body: "reply", at: new Date(Date.now() + 60_000) });
    const since = await gh.issues.listComments({
      owner,
      repo,
      issue_number: 3,
      since: new Date(Date.now() + 30_000).toISOString(),
    });
    expect(since.data.map((c) => c.id)).toEqual([later.id]);
  });

  it("adds, lists and removes labels by name; numeric ids are a GitHub 422", async () => {
    const forge = await start();
    const gh = octokit(forge.url);

    const added = await gh.issues.addLabels({ owner, repo, issue_number: 4, labels: ["blocked", "backlog"] });
    expect(added.data.map((l) => l.name)).toEqual(["blocked", "backlog"]);
    expect(added.data[0]).toEqual({ id: expect.any(Number), name: "blocked", color: expect.any(String) });
    // Adding again is idempotent; a bare array body works too.
    await gh.request("POST /repos/{owner}/{repo}/issues/{issue_number}/labels", {
      owner,
      repo,
      issue_number: 4,
      data: ["blocked"],
    } as never);
    expect((await gh.issues.listLabelsOnIssue({ owner, repo, issue_number: 4 })).data.map((l) => l.name)).toEqual([
      "blocked",
      "backlog",
    ]);

    const removed = await gh.issues.removeLabel({ owner, repo, issue_number: 4, name: "blocked" });
    expect(removed.data.map((l) => l.name)).toEqual(["backlog"]);
    expect(forge.issue(REPO, 4).labels.map((l) => l.name)).toEqual(["backlog"]);
    expect((await statusOf(gh.issues.removeLabel({ owner, repo, issue_number: 4, name: "blocked" }))).status).toBe(404);

    const ids = gh.request("POST /repos/{owner}/{repo}/issues/{issue_number}/labels", {
      owner,
      repo,
      issue_number: 4,
      labels: [added.data[0]!.id],
    } as never);
    expect((await statusOf(ids)).status).toBe(422);
  });

  it("answers collaborator permissions the way GitHub does, maintain as write and triage as read", async () => {
    const forge = await start();
    const gh = octokit(forge.url);
    forge.setPermission(REPO, "ada", "admin");
    forge.setPermission(REPO, "mia", "maintain");
    forge.setPermission(REPO, "wes", "write");
    forge.setPermission(REPO, "tia", "triage");
    forge.setPermission(REPO, "rob", "read");
    forge.setPermission("acme/other", "eve", "admin");

    const answers: Record<string, [string, string]> = {};
    for (const username of ["ada", "mia", "wes", "tia", "rob", "eve", "nobody"]) {
      const { data } = await gh.repos.getCollaboratorPermissionLevel({ owner, repo, username });
      expect(data.user?.login).toBe(username);
      answers[username] = [data.permission, data.role_name];
    }
    expect(answers).toEqual({
      ada: ["admin", "admin"],
      mia: ["write", "maintain"],
      wes: ["write", "write"],
      tia: ["read", "triage"],
      rob: ["read", "read"],
      eve: ["none", "none"],
      nobody: ["none", "none"],
    });
  });

  it("rejects unknown or missing tokens with 401 and knows who a token belongs to", async () => {
    const forge = await start();
    const bad = await statusOf(
      octokit(forge.url, "wrong").issues.createComment({ owner, repo, issue_number: 1, body: "x" }),
    );
    expect(bad).toMatchObject({ status: 401, message: expect.stringContaining("Bad credentials") });
    expect((await statusOf(octokit(forge.url, null).users.getAuthenticated())).status).toBe(401);
    expect(forge.issue(REPO, 1).comments).toEqual([]);

    forge.addToken("tok-carol", "carol");
    expect((await octokit(forge.url, "tok-carol").users.getAuthenticated()).data.login).toBe("carol");
    expect((await octokit(forge.url).users.getAuthenticated()).data.login).toBe("runner-bot");
  });

  it("accepts anything as runner-bot when no tokens are configured", async () => {
    const forge = await start({});
    expect((await octokit(forge.url, "whatever").users.getAuthenticated()).data.login).toBe("runner-bot");
    const { data } = await octokit(forge.url, null).issues.createComment({ owner, repo, issue_number: 1, body: "hi" });
    expect(data.user?.login).toBe("runner-bot");
  });
});

describe("fake forge, Gitea/Forgejo flavour under /api/v1", () => {
  it("serves comments with limit/page and edits them in place, over plain fetch", async () => {
    const forge = await start();
    const post = await gitea(forge, `/repos/${REPO}/issues/2/comments`, {
      method: "POST",
      body: { body: "question?" },
    });
    expect(post.status).toBe(201);
    const comment = (await post.json()) as { id: number; body: string; user: { login: string } };
    expect(comment).toMatchObject({ body: "question?", user: { login: "runner-bot" } });
    forge.addComment(REPO, 2, { login: "alice", body: "answer" });

    const page = await gitea(forge, `/repos/${REPO}/issues/2/comments?limit=1&page=2`);
    expect(((await page.json()) as Array<{ body: string }>).map((c) => c.body)).toEqual(["answer"]);
    expect(page.headers.get("x-total-count")).toBe("2");

    const patch = await gitea(forge, `/repos/${REPO}/issues/comments/${comment.id}`, {
      method: "PATCH",
      body: { body: "edited" },
    });
    expect(patch.status).toBe(200);
    expect(forge.issue(REPO, 2).comments.map((c) => c.body)).toEqual(["edited", "answer"]);
    expect((await gitea(forge, `/repos/${REPO}/issues/comments/${comment.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await gitea(forge, `/repos/${REPO}/issues/2/comments`, { token: "wrong" })).status).toBe(401);
  });

  it("adds labels by id or name and removes them by id", async () => {
    const forge = await start();
    const blocked = forge.addLabel(REPO, "blocked", "d73a4a");
    const labels = await gitea(forge, `/repos/${REPO}/labels`);
    expect(await labels.json()).toEqual([{ id: blocked.id, name: "blocked", color: "d73a4a" }]);

    const add = await gitea(forge, `/repos/${REPO}/issues/5/labels`, {
      method: "POST",
      body: { labels: [blocked.id, "backlog"] },
    });
    expect(add.status).toBe(200);
    expect(((await add.json()) as Array<{ name: string }>).map((l) => l.name)).toEqual(["blocked", "backlog"]);
    expect(
      (await gitea(forge, `/repos/${REPO}/issues/5/labels`, { method: "POST", body: { labels: [999999] } })).status,
    ).toBe(422);

    const del = await gitea(forge, `/repos/${REPO}/issues/5/labels/${blocked.id}`, { method: "DELETE" });
    expect(del.status).toBe(204);
    expect(forge.issue(REPO, 5).labels.map((l) => l.name)).toEqual(["backlog"]);
  });

  it("works with Octokit pointed at giteaUrl", async () => {
    const forge = await start();
    forge.setPermission(REPO, "mia", "maintain");
    const client = octokit(forge.giteaUrl);

    const { data } = await client.issues.createComment({ owner, repo, issue_number: 9, body: "hello" });
    await client.issues.updateComment({ owner, repo, comment_id: data.id, body: "hello again" });
    const listed = await client.issues.listComments({ owner, repo, issue_number: 9 });
    expect(listed.data.map((c) => c.body)).toEqual(["hello again"]);
    await client.issues.addLabels({ owner, repo, issue_number: 9, labels: ["blocked"] });
    expect(forge.issue(REPO, 9).labels.map((l) => l.name)).toEqual(["blocked"]);
    const perm = await client.repos.getCollaboratorPermissionLevel({ owner, repo, username: "mia" });
    expect(perm.data).toMatchObject({ permission: "write", role_name: "maintain" });

    expect(forge.requests.map((r) => [r.flavor, r.method, r.path])).toEqual([
      ["gitea", "POST", `/repos/${REPO}/issues/9/comments`],
      ["gitea", "PATCH", `/repos/${REPO}/issues/comments/${data.id}`],
      ["gitea", "GET", `/repos/${REPO}/issues/9/comments`],
      ["gitea", "POST", `/repos/${REPO}/issues/9/labels`],
      ["gitea", "GET", `/repos/${REPO}/collaborators/mia/permission`],
    ]);
  });
});

describe("fake forge faults and records", () => {
  it("fails the next matching request with 429 and Retry-After, then recovers", async () => {
    const forge = await start();
    const gh = octokit(forge.url);
    forge.failNext({ status: 429, headers: { "retry-after": "1" }, match: { method: "POST", path: /\/comments$/ } });

    // A GET does not match the fault and is not consumed by it.
    expect((await gh.issues.listComments({ owner, repo, issue_number: 1 })).status).toBe(200);
    const limited = await statusOf(gh.issues.createComment({ owner, repo, issue_number: 1, body: "x" }));
    expect(limited.status).toBe(429);
    expect(limited.headers["retry-after"]).toBe("1");
    expect(forge.issue(REPO, 1).comments).toEqual([]);

    expect((await gh.issues.createComment({ owner, repo, issue_number: 1, body: "x" })).status).toBe(201);
    expect(forge.requests.map((r) => r.status)).toEqual([200, 429, 201]);
  });

  it("models a primary rate limit (403, remaining 0) for count requests, on either flavour", async () => {
    const forge = await start();
    const reset = String(Math.floor(Date.now() / 1000) + 30);
    forge.failNext({
      count: 2,
      status: 403,
      headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset },
      body: { message: "API rate limit exceeded" },
    });
    const first = await statusOf(octokit(forge.url).users.getAuthenticated());
    expect(first).toMatchObject({ status: 403, message: expect.stringContaining("rate limit") });
    expect(first.headers).toMatchObject({ "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset });
    expect((await gitea(forge, "/user")).status).toBe(403);

    const ok = await gitea(forge, "/user");
    expect(ok.status).toBe(200);
    expect(Number(ok.headers.get("x-ratelimit-remaining"))).toBeGreaterThan(0);
    expect(ok.headers.get("x-ratelimit-limit")).toBe("5000");
  });

  it("answers 503 to everything while down", async () => {
    const forge = await start();
    forge.setDown(true);
    expect((await statusOf(octokit(forge.url).users.getAuthenticated())).status).toBe(503);
    expect(
      (await gitea(forge, `/repos/${REPO}/issues/1/comments`, { method: "POST", body: { body: "x" } })).status,
    ).toBe(503);
    expect(forge.issue(REPO, 1).comments).toEqual([]);
    forge.setDown(false);
    expect((await octokit(forge.url).users.getAuthenticated()).status).toBe(200);
  });

  it("delays an answer past a client timeout, and close() does not wait for it", async () => {
    const forge = await start();
    forge.failNext({ delayMs: 10_000, status: 502 });
    await expect(fetch(`${forge.url}/user`, { signal: AbortSignal.timeout(100) })).rejects.toMatchObject({
      name: "TimeoutError",
    });
    expect(forge.requests).toHaveLength(1);

    const started = Date.now();
    await forge.close();
    await forge.close(); // idempotent
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("records method, path, flavour, lower-cased headers, parsed body and status; reset forgets", async () => {
    const forge = await start();
    await octokit(forge.url).issues.createComment({ owner, repo, issue_number: 1, body: "from github" });
    await gitea(forge, `/repos/${REPO}/issues/1/comments`, { method: "POST", body: { body: "from gitea" } });
    await fetch(`${forge.url}/nope`, { headers: { Authorization: `Bearer ${TOKEN}` } });

    expect(forge.requests).toHaveLength(3);
    const [github, giteaReq, missing] = forge.requests;
    expect(github).toMatchObject({
      method: "POST",
      path: `/repos/${REPO}/issues/1/comments`,
      flavor: "github",
      body: { body: "from github" },
      status: 201,
    });
    expect(github!.headers.authorization).toBe(`token ${TOKEN}`);
    expect(github!.at).toBeInstanceOf(Date);
    expect(giteaReq).toMatchObject({ flavor: "gitea", path: `/repos/${REPO}/issues/1/comments`, status: 201 });
    expect(missing).toMatchObject({ method: "GET", path: "/nope", status: 404 });

    forge.setPermission(REPO, "ada", "admin");
    forge.reset();
    expect(forge.requests).toEqual([]);
    expect(forge.issue(REPO, 1).comments).toEqual([]);
    const { data } = await octokit(forge.url).repos.getCollaboratorPermissionLevel({ owner, repo, username: "ada" });
    expect(data.permission).toBe("none");
  });
});
