import { createServer } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ProjectConfig } from "../../src/config.js";
import { ForgeClient, ForgeError } from "../../src/forge/forge-client.js";
import { Secret } from "../../src/secrets.js";
import { type FakeForge, type Flavor, startFakeForge } from "../helpers/fake-forge.js";

const REPO = "acme/widgets";
const TOKEN = "fr-test-forge-token-4f9a1c";

let forge: FakeForge;

beforeAll(async () => {
  forge = await startFakeForge();
  forge.addToken(TOKEN, "runner-bot");
});

afterAll(async () => {
  await forge.close();
});

beforeEach(() => {
  forge.reset();
});

function project(flavor: Flavor, overrides: Partial<ProjectConfig> = {}): ProjectConfig {
  return {
    name: "widgets",
    repoPath: "/nonexistent/widgets",
    primaryBranch: "main",
    forge: flavor === "github" ? "github" : "gitea",
    forgeUrl: flavor === "github" ? forge.url : forge.giteaUrl,
    repo: REPO,
    tokenEnv: "FORGE_TOKEN",
    token: new Secret(TOKEN),
    webhookSecretEnv: undefined,
    webhookSecret: undefined,
    botLogin: "runner-bot",
    escalationIssue: undefined,
    ...overrides,
  };
}

/** What a rejected call threw. */
async function failure(call: Promise<unknown>): Promise<ForgeError> {
  const error = await call.then(
    () => {
      throw new Error("expected the call to fail");
    },
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(ForgeError);
  return error as ForgeError;
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe.each(["github", "gitea"] as const)("ForgeClient against the %s flavour", (flavor) => {
  const requests = () => forge.requests.filter((r) => r.flavor === flavor);

  it("creates a comment as the token's user and edits it in place", async () => {
    const client = new ForgeClient(project(flavor));
    const created = await client.createComment(7, "status: queued");
    expect(created.id).toBeGreaterThan(0);
    expect(created.url).toBe(`${forge.url}/${REPO}/issues/7#issuecomment-${created.id}`);
    expect(forge.issue(REPO, 7).comments).toMatchObject([
      { id: created.id, body: "status: queued", user: { login: "runner-bot" } },
    ]);

    await client.updateComment(created.id, "status: done");
    expect(forge.issue(REPO, 7).comments.map((c) => c.body)).toEqual(["status: done"]);
    expect(requests().map((r) => `${r.method} ${r.path}`)).toEqual([
      `POST /repos/${REPO}/issues/7/comments`,
      `PATCH /repos/${REPO}/issues/comments/${created.id}`,
    ]);
    expect(requests().every((r) => r.headers.authorization === `token ${TOKEN}`)).toBe(true);
  });

  it("finds the newest comment holding a marker, reading the last page first", async () => {
    const client = new ForgeClient(project(flavor));
    const marker = "<!-- formula-runner:run:42 -->";
    const ids: number[] = [];
    for (let i = 0; i < 130; i++) {
      const body = i === 3 || i === 110 ? `old status\n${marker}` : `comment ${i}`;
      ids.push(forge.addComment(REPO, 9, { login: i % 2 ? "alice" : "runner-bot", body }).id);
    }
    expect(await client.findComment(9, marker)).toEqual({ id: ids[110] });
    // Page 1 tells where the last page is; the last page (the newest) holds the match.
    const lists = requests().filter((r) => r.method === "GET");
    const sizeParam = flavor === "github" ? "per_page" : "limit";
    expect(lists.map((r) => r.query.page)).toEqual(flavor === "github" ? ["1", "2"] : ["1", "3"]);
    expect(lists.every((r) => Number(r.query[sizeParam]) > 30)).toBe(true);

    expect(await client.findComment(9, "<!-- formula-runner:run:43 -->")).toBeUndefined();
    expect(await client.findComment(8, marker)).toBeUndefined();
  });

  it("passes `since` to the forge, so older comments are not matched", async () => {
    const client = new ForgeClient(project(flavor));
    const marker = "<!-- formula-runner:run:5 -->";
    forge.addComment(REPO, 4, { login: "runner-bot", body: marker, at: new Date("2024-01-01T00:00:00Z") });
    expect(await client.findComment(4, marker, new Date("2025-01-01T00:00:00Z"))).toBeUndefined();
    expect(requests().at(-1)?.query.since).toBe("2025-01-01T00:00:00.000Z");
    const recent = forge.addComment(REPO, 4, { login: "runner-bot", body: `new ${marker}` });
    expect(await client.findComment(4, marker, new Date("2025-01-01T00:00:00Z"))).toEqual({ id: recent.id });
  });

  it("looks at about the newest 1000 comments and no further", async () => {
    const client = new ForgeClient(project(flavor));
    const marker = "<!-- formula-runner:run:1 -->";
    forge.addComment(REPO, 3, { login: "runner-bot", body: marker });
    for (let i = 0; i < 1100; i++) forge.addComment(REPO, 3, { login: "alice", body: `chatter ${i}` });
    expect(await client.findComment(3, marker)).toBeUndefined();
    const pages = requests().filter((r) => r.method === "GET").length;
    expect(pages).toBeLessThanOrEqual(flavor === "github" ? 11 : 21);
    // Within reach it is found.
    const near = forge.addComment(REPO, 3, { login: "runner-bot", body: `again ${marker}` });
    for (let i = 0; i < 900; i++) forge.addComment(REPO, 3, { login: "alice", body: `more ${i}` });
    expect(await client.findComment(3, marker)).toEqual({ id: near.id });
  });

  it("adds labels by name, creating the ones the repository lacks", async () => {
    const client = new ForgeClient(project(flavor));
    const backlog = forge.addLabel(REPO, "backlog", "00ff00");
    forge.addLabel(REPO, "Docs", "0000ff");
    await client.addLabels(12, ["backlog", "blocked", "docs"]);
    expect(
      forge
        .issue(REPO, 12)
        .labels.map((l) => l.name)
        .sort(),
    ).toEqual(["Docs", "backlog", "blocked"]);

    const add = requests().find((r) => r.method === "POST" && r.path === `/repos/${REPO}/issues/12/labels`);
    if (flavor === "github") {
      // GitHub takes names and creates an unknown label itself.
      expect(add?.body).toEqual({ labels: ["backlog", "blocked", "docs"] });
    } else {
      // Gitea/Forgejo take ids: the missing label was created (in red) first.
      const create = requests().filter((r) => r.method === "POST" && r.path === `/repos/${REPO}/labels`);
      expect(create.map((r) => r.body)).toEqual([{ name: "blocked", color: "#d73a4a" }]);
      const blocked = forge.issue(REPO, 12).labels.find((l) => l.name === "blocked");
      expect(blocked?.color).toBe("d73a4a");
      const docs = forge.issue(REPO, 12).labels.find((l) => l.name === "Docs");
      expect(add?.body).toEqual({ labels: [backlog.id, blocked?.id, docs?.id] });
    }

    // Adding again keeps what is there and creates nothing new.
    await client.addLabels(12, ["blocked"]);
    expect(forge.issue(REPO, 12).labels).toHaveLength(3);
    if (flavor === "gitea")
      expect(requests().filter((r) => r.method === "POST" && r.path === `/repos/${REPO}/labels`)).toHaveLength(1);
  });

  it("turns forge errors into ForgeError with the status and the answer's headers, never the token", async () => {
    const client = new ForgeClient(project(flavor));
    forge.failNext({
      status: 429,
      headers: { "retry-after": "7" },
      body: { message: `slow down ${TOKEN.slice(0, 4)}` },
    });
    const limited = await failure(client.createComment(1, "hello"));
    expect(limited.status).toBe(429);
    expect(limited.headers?.["retry-after"]).toBe("7");
    expect(limited.headers?.["x-ratelimit-limit"]).toBe("5000");
    expect(limited.message).toContain("429");
    expect(limited.message).toContain(REPO);

    forge.failNext({ status: 404, body: { message: "Not Found" } });
    const missing = await failure(client.updateComment(999, "x"));
    expect(missing.status).toBe(404);
    expect(missing.message).toContain("Not Found");

    // A wrong token: 401, and the message does not repeat the token.
    const wrong = new ForgeClient(project(flavor, { token: new Secret("fr-wrong-token-0000") }));
    const denied = await failure(wrong.addLabels(1, ["x"]));
    expect(denied.status).toBe(401);
    for (const error of [limited, missing, denied]) {
      expect(error.message).not.toContain(TOKEN);
      expect(error.message).not.toContain("fr-wrong-token-0000");
      expect(JSON.stringify(error.headers)).not.toContain(TOKEN);
    }
  });

  it("reports a forge that does not answer as a ForgeError without a status", async () => {
    const port = await closedPort();
    const base = flavor === "github" ? `http://127.0.0.1:${port}` : `http://127.0.0.1:${port}/api/v1`;
    const unreachable = await failure(new ForgeClient(project(flavor, { forgeUrl: base })).createComment(1, "hi"));
    expect(unreachable.status).toBeUndefined();
    expect(unreachable.headers).toBeUndefined();

    forge.failNext({ delayMs: 2_000 });
    const slow = await failure(new ForgeClient(project(flavor), { timeoutMs: 200 }).createComment(1, "hi"));
    expect(slow.status).toBeUndefined();
    expect(slow.message).toContain("no answer within 0.2 s");
  });
});
