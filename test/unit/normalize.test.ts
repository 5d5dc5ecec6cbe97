import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FORGES, type Forge } from "../../src/config.js";
import { EVENT_KINDS, type ForgeEvent } from "../../src/forge/event-types.js";
import { normalizeEvent } from "../../src/forge/normalize.js";
import { loadFixture } from "../helpers/sign-webhook.js";

const ID = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
const codertocat = { login: "Codertocat", type: "User", bot: false };

describe("normalizeEvent: GitHub fixtures", () => {
  it("issues.opened", () => {
    const event = normalizeEvent("github", "issues", ID, loadFixture("github/issues.opened.json"));
    expect(event).toEqual({
      forge: "github",
      deliveryId: ID,
      event: "issues",
      kind: "issues",
      action: "opened",
      repository: "Codertocat/Hello-World",
      sender: codertocat,
      issue: {
        number: 1,
        title: "Spelling error in the README file",
        body: "It looks like you accidently spelled 'commit' with two 't's.",
        labels: ["bug"],
        author: "Codertocat",
        url: "https://github.com/Codertocat/Hello-World/issues/1",
        isPullRequest: false,
      },
    });
  });

  it("issues.labeled names the one label added", () => {
    const event = normalizeEvent("github", "issues", ID, loadFixture("github/issues.labeled.json"));
    expect(event).toMatchObject({
      kind: "issues",
      action: "labeled",
      label: "bug",
      issue: { number: 1, labels: ["bug"] },
    });
    expect(event.labels).toBeUndefined();
  });

  it("issues.unlabeled names the one label removed", () => {
    const payload = { ...loadFixture("github/issues.labeled.json"), action: "unlabeled" };
    payload.issue.labels = [];
    const event = normalizeEvent("github", "issues", ID, payload);
    expect(event).toMatchObject({ action: "unlabeled", label: "bug", issue: { labels: [] } });
  });

  it("issue_comment.created on an issue", () => {
    const event = normalizeEvent("github", "issue_comment", ID, loadFixture("github/issue_comment.created.json"));
    expect(event).toMatchObject({
      kind: "issue_comment",
      action: "created",
      repository: "Codertocat/Hello-World",
      sender: codertocat,
      comment: {
        id: 492700400,
        body: "You are totally right! I'll get this fixed right away.",
        author: "Codertocat",
        url: "https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400",
      },
      issue: { number: 1, isPullRequest: false },
    });
    expect(event.pullRequest).toBeUndefined();
  });

  it("issue_comment on a pull request: GitHub marks it with issue.pull_request", () => {
    const payload = loadFixture("github/issue_comment.created.json");
    payload.issue.pull_request = {
      url: "https://api.github.com/repos/Codertocat/Hello-World/pulls/1",
      html_url: "https://github.com/Codertocat/Hello-World/pull/1",
      diff_url: "https://github.com/Codertocat/Hello-World/pull/1.diff",
      patch_url: "https://github.com/Codertocat/Hello-World/pull/1.patch",
      merged_at: null,
    };
    expect(normalizeEvent("github", "issue_comment", ID, payload).issue?.isPullRequest).toBe(true);
  });

  it("pull_request.opened", () => {
    const event = normalizeEvent("github", "pull_request", ID, loadFixture("github/pull_request.opened.json"));
    expect(event).toMatchObject({
      kind: "pull_request",
      action: "opened",
      repository: "Codertocat/Hello-World",
      sender: codertocat,
      pullRequest: {
        number: 2,
        title: "Update the README with new information.",
        body: "This is a pretty simple change that we need to pull into master.",
        head: "changes",
        base: "master",
        labels: ["bug"],
        author: "Codertocat",
        url: "https://github.com/Codertocat/Hello-World/pull/2",
      },
    });
    expect(event.issue).toBeUndefined();
  });

  it("pull_request.synchronize", () => {
    const event = normalizeEvent("github", "pull_request", ID, loadFixture("github/pull_request.synchronize.json"));
    expect(event).toMatchObject({
      kind: "pull_request",
      action: "synchronize",
      pullRequest: { number: 2, head: "changes" },
    });
  });

  it("pull_request.labeled names the label", () => {
    const payload = {
      ...loadFixture("github/pull_request.opened.json"),
      action: "labeled",
      label: { name: "agent:review" },
    };
    expect(normalizeEvent("github", "pull_request", ID, payload)).toMatchObject({
      action: "labeled",
      label: "agent:review",
    });
  });

  it("push", () => {
    const event = normalizeEvent("github", "push", ID, loadFixture("github/push.json"));
    expect(event).toMatchObject({
      kind: "push",
      action: undefined,
      repository: "Codertocat/Hello-World",
      sender: codertocat,
      push: {
        ref: "refs/heads/master",
        before: "0000000000000000000000000000000000000000",
        after: "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        commits: 1,
      },
    });
  });

  it("ping", () => {
    const event = normalizeEvent("github", "ping", ID, loadFixture("github/ping.json"));
    expect(event).toEqual({
      forge: "github",
      deliveryId: ID,
      event: "ping",
      kind: "ping",
      action: undefined,
      repository: "Octocoders/Hello-World",
      sender: codertocat,
    });
  });
});

describe("normalizeEvent: Gitea and Forgejo fixtures", () => {
  it("gitea issues.opened", () => {
    const event = normalizeEvent("gitea", "issues", ID, loadFixture("gitea/issues.opened.json"));
    expect(event).toEqual({
      forge: "gitea",
      deliveryId: ID,
      event: "issues",
      kind: "issues",
      action: "opened",
      repository: "acme/demo",
      sender: { login: "alice", type: "User", bot: false },
      issue: {
        number: 12,
        title: "Crash when the config file is empty",
        body: "Steps:\n1. `touch formula-runner.toml`\n2. start the server\n\nIt exits with a stack trace.",
        labels: [],
        author: "alice",
        url: "https://gitea.example.com/acme/demo/issues/12",
        isPullRequest: false,
      },
    });
  });

  it("gitea issues.label_updated becomes labeled with the full label list", () => {
    const event = normalizeEvent("gitea", "issues", ID, loadFixture("gitea/issues.label_updated.json"));
    expect(event).toMatchObject({
      kind: "issues",
      action: "labeled",
      labels: ["bug", "agent:fix"],
      sender: { login: "acme", bot: false },
      issue: { number: 12, labels: ["bug", "agent:fix"] },
    });
    expect(event.label).toBeUndefined();
  });

  it("forgejo issues.label_updated likewise", () => {
    const event = normalizeEvent("forgejo", "issues", ID, loadFixture("forgejo/issues.label_updated.json"));
    expect(event).toMatchObject({
      forge: "forgejo",
      action: "labeled",
      labels: ["agent:fix"],
      repository: "acme/demo",
    });
    expect(event.label).toBeUndefined();
  });

  it("label_updated takes a top-level labels list when the issue has none", () => {
    const payload = loadFixture("gitea/issues.label_updated.json");
    delete payload.issue.labels;
    payload.labels = [{ id: 9, name: "triage" }];
    expect(normalizeEvent("gitea", "issues", ID, payload)).toMatchObject({ action: "labeled", labels: ["triage"] });
  });

  it("label_cleared becomes unlabeled with no labels", () => {
    const payload = { ...loadFixture("gitea/issues.label_updated.json"), action: "label_cleared" };
    payload.issue.labels = [];
    const event = normalizeEvent("gitea", "issues", ID, payload);
    expect(event).toMatchObject({ action: "unlabeled", labels: [] });
    expect(event.label).toBeUndefined();
  });

  it("gitea issue_comment.created on an issue", () => {
    const event = normalizeEvent("gitea", "issue_comment", ID, loadFixture("gitea/issue_comment.created.json"));
    expect(event).toMatchObject({
      kind: "issue_comment",
      action: "created",
      repository: "acme/demo",
      sender: { login: "alice" },
      comment: {
        id: 57,
        body: "/fix please",
        author: "alice",
        url: "https://gitea.example.com/acme/demo/issues/12#issuecomment-57",
      },
      issue: { number: 12, isPullRequest: false },
    });
  });

  it("a Gitea comment on a pull request is marked by is_pull", () => {
    const payload = { ...loadFixture("gitea/issue_comment.created.json"), is_pull: true };
    expect(normalizeEvent("gitea", "issue_comment", ID, payload).issue?.isPullRequest).toBe(true);
  });

  it("forgejo issue_comment.created on a pull request", () => {
    const event = normalizeEvent("forgejo", "issue_comment", ID, loadFixture("forgejo/issue_comment.created.json"));
    expect(event).toMatchObject({
      forge: "forgejo",
      kind: "issue_comment",
      action: "created",
      comment: { id: 61, body: "/review\n\nPlease look at the error path too.", author: "alice" },
      issue: { number: 14, isPullRequest: true, author: "bob" },
    });
    // issue.pull_request alone is enough too
    const payload = loadFixture("forgejo/issue_comment.created.json");
    delete payload.is_pull;
    expect(normalizeEvent("forgejo", "issue_comment", ID, payload).issue?.isPullRequest).toBe(true);
  });

  it("gitea pull_request.opened", () => {
    const event = normalizeEvent("gitea", "pull_request", ID, loadFixture("gitea/pull_request.opened.json"));
    expect(event).toMatchObject({
      kind: "pull_request",
      action: "opened",
      repository: "acme/demo",
      sender: { login: "bob", type: "User", bot: false },
      pullRequest: {
        number: 14,
        title: "Treat an empty config file as no projects",
        body: "Fixes #12.",
        head: "fix/empty-config",
        base: "main",
        labels: ["bug"],
        author: "bob",
        url: "https://gitea.example.com/acme/demo/pulls/14",
      },
    });
  });

  it("gitea pull_request.synchronized becomes synchronize", () => {
    const event = normalizeEvent("gitea", "pull_request", ID, loadFixture("gitea/pull_request.synchronized.json"));
    expect(event).toMatchObject({
      event: "pull_request",
      kind: "pull_request",
      action: "synchronize",
      pullRequest: { number: 14 },
    });
  });

  it("gitea pull_request label_updated becomes labeled with the pull request's labels", () => {
    const payload = { ...loadFixture("gitea/pull_request.opened.json"), action: "label_updated" };
    const event = normalizeEvent("gitea", "pull_request", ID, payload);
    expect(event).toMatchObject({ action: "labeled", labels: ["bug"], pullRequest: { labels: ["bug"] } });
    expect(event.label).toBeUndefined();
  });

  it("gitea push counts total_commits, not the capped commits list", () => {
    const event = normalizeEvent("gitea", "push", ID, loadFixture("gitea/push.json"));
    expect(event).toMatchObject({
      kind: "push",
      push: {
        ref: "refs/heads/main",
        before: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        after: "c0ffee0d15ea5e5ba5eba11fee1dead0badcafe0",
        commits: 2,
      },
    });
    const capped = { ...loadFixture("gitea/push.json"), total_commits: 40 };
    expect(normalizeEvent("gitea", "push", ID, capped).push?.commits).toBe(40);
  });

  it("a Gitea/Forgejo Test Delivery (a push with before = after) is a ping", () => {
    const payload = loadFixture("gitea/push.json");
    payload.before = payload.after = "0000000000000000000000000000000000000000";
    for (const forge of ["gitea", "forgejo"] as const) {
      expect(normalizeEvent(forge, "push", ID, payload)).toMatchObject({ event: "push", kind: "ping" });
    }
  });

  it("treats a ping event from any forge as a ping", () => {
    for (const forge of FORGES) {
      expect(normalizeEvent(forge, "ping", ID, {}).kind).toBe("ping");
    }
  });
});

describe("normalizeEvent: senders", () => {
  const withSender = (sender: unknown) =>
    normalizeEvent("github", "issues", ID, { ...loadFixture("github/issues.opened.json"), sender });

  it("a Bot type is a bot", () => {
    expect(withSender({ login: "renovate", type: "Bot" }).sender).toEqual({
      login: "renovate",
      type: "Bot",
      bot: true,
    });
  });

  it("a login ending in [bot] is a bot whatever its type", () => {
    expect(withSender({ login: "dependabot[bot]", type: "User" }).sender).toEqual({
      login: "dependabot[bot]",
      type: "User",
      bot: true,
    });
  });

  it("Gitea: login or username; a recent Gitea's type Bot", () => {
    const payload = loadFixture("gitea/issues.opened.json");
    payload.sender = { id: 9, username: "ci-runner" };
    expect(normalizeEvent("gitea", "issues", ID, payload).sender).toEqual({
      login: "ci-runner",
      type: "User",
      bot: false,
    });
    payload.sender = { id: 9, login: "ci-runner", username: "ci-runner", type: "Bot" };
    expect(normalizeEvent("gitea", "issues", ID, payload).sender?.bot).toBe(true);
  });

  it("no sender, or one without a login, is undefined", () => {
    expect(withSender(undefined).sender).toBeUndefined();
    expect(withSender({ type: "User" }).sender).toBeUndefined();
    expect(withSender({ login: "" }).sender).toBeUndefined();
    expect(withSender("Codertocat").sender).toBeUndefined();
  });
});

describe("normalizeEvent: odd payloads", () => {
  it("null bodies become empty strings", () => {
    const payload = loadFixture("github/issues.opened.json");
    payload.issue.body = null;
    expect(normalizeEvent("github", "issues", ID, payload).issue?.body).toBe("");
    const pr = loadFixture("gitea/pull_request.opened.json");
    pr.pull_request.body = null;
    expect(normalizeEvent("gitea", "pull_request", ID, pr).pullRequest?.body).toBe("");
  });

  it("an event it does not understand keeps its name and action, with no kind", () => {
    const event = normalizeEvent("github", "release", ID, { action: "published", repository: { full_name: "a/b" } });
    expect(event).toEqual({
      forge: "github",
      deliveryId: ID,
      event: "release",
      kind: undefined,
      action: "published",
      repository: "a/b",
      sender: undefined,
    });
  });

  it("a payload that is not an object yields only what the headers said", () => {
    for (const payload of [null, 42, "issues", [1, 2], true]) {
      expect(normalizeEvent("gitea", "issues", ID, payload)).toEqual({
        forge: "gitea",
        deliveryId: ID,
        event: "issues",
        kind: "issues",
        action: undefined,
        repository: undefined,
        sender: undefined,
      });
    }
  });

  it("drops an issue, comment or pull request without a usable number or id", () => {
    const issue = loadFixture("github/issue_comment.created.json");
    issue.issue.number = "1";
    issue.comment.id = -3;
    const event = normalizeEvent("github", "issue_comment", ID, issue);
    expect(event.issue).toBeUndefined();
    expect(event.comment).toBeUndefined();
    const pr = loadFixture("github/pull_request.opened.json");
    pr.pull_request.number = 2.5;
    pr.number = null;
    expect(normalizeEvent("github", "pull_request", ID, pr).pullRequest).toBeUndefined();
  });

  it("keeps only label names that are strings", () => {
    const payload = loadFixture("github/issues.opened.json");
    payload.issue.labels = [{ name: "bug" }, { name: 3 }, null, "plain", { id: 1 }, { name: "" }];
    expect(normalizeEvent("github", "issues", ID, payload).issue?.labels).toEqual(["bug", "plain"]);
  });
});

/** Checks the shape the type promises, so a property test catches a wrong type leaking through. */
function expectWellTyped(event: ForgeEvent): void {
  const optionalString = (v: unknown) => v === undefined || typeof v === "string";
  const isStrings = (v: unknown) => Array.isArray(v) && v.every((s) => typeof s === "string");
  expect(EVENT_KINDS as readonly unknown[]).toContain(event.kind ?? EVENT_KINDS[0]);
  expect(optionalString(event.action) && optionalString(event.repository) && optionalString(event.label)).toBe(true);
  if (event.labels !== undefined) expect(isStrings(event.labels)).toBe(true);
  if (event.sender) {
    expect(typeof event.sender.login).toBe("string");
    expect(typeof event.sender.type).toBe("string");
    expect(typeof event.sender.bot).toBe("boolean");
  }
  if (event.issue) {
    expect(Number.isSafeInteger(event.issue.number)).toBe(true);
    expect(typeof event.issue.title + typeof event.issue.body).toBe("stringstring");
    expect(isStrings(event.issue.labels)).toBe(true);
    expect(optionalString(event.issue.author) && optionalString(event.issue.url)).toBe(true);
    expect(typeof event.issue.isPullRequest).toBe("boolean");
  }
  if (event.comment) {
    expect(Number.isSafeInteger(event.comment.id)).toBe(true);
    expect(typeof event.comment.body + typeof event.comment.author).toBe("stringstring");
  }
  if (event.pullRequest) {
    const pr = event.pullRequest;
    expect(Number.isSafeInteger(pr.number)).toBe(true);
    expect([pr.title, pr.body, pr.head, pr.base].every((s) => typeof s === "string")).toBe(true);
    expect(isStrings(pr.labels)).toBe(true);
  }
  if (event.push) {
    expect([event.push.ref, event.push.before, event.push.after].every((s) => typeof s === "string")).toBe(true);
    expect(Number.isSafeInteger(event.push.commits)).toBe(true);
  }
}

const FIXTURES: { forge: Forge; event: string; file: string }[] = [
  { forge: "github", event: "issues", file: "github/issues.labeled.json" },
  { forge: "github", event: "issues", file: "github/issues.opened.json" },
  { forge: "github", event: "issue_comment", file: "github/issue_comment.created.json" },
  { forge: "github", event: "pull_request", file: "github/pull_request.opened.json" },
  { forge: "github", event: "pull_request", file: "github/pull_request.synchronize.json" },
  { forge: "github", event: "push", file: "github/push.json" },
  { forge: "github", event: "ping", file: "github/ping.json" },
  { forge: "gitea", event: "issues", file: "gitea/issues.label_updated.json" },
  { forge: "gitea", event: "issues", file: "gitea/issues.opened.json" },
  { forge: "gitea", event: "issue_comment", file: "gitea/issue_comment.created.json" },
  { forge: "gitea", event: "pull_request", file: "gitea/pull_request.opened.json" },
  { forge: "gitea", event: "pull_request", file: "gitea/pull_request.synchronized.json" },
  { forge: "gitea", event: "push", file: "gitea/push.json" },
  { forge: "forgejo", event: "issues", file: "forgejo/issues.label_updated.json" },
  { forge: "forgejo", event: "issue_comment", file: "forgejo/issue_comment.created.json" },
];

/** Every path to a value inside `value` (objects and arrays), up to `depth` levels. */
function paths(value: unknown, depth = 4, prefix: (string | number)[] = []): (string | number)[][] {
  if (depth === 0 || typeof value !== "object" || value === null) return [];
  const entries: [string | number, unknown][] = Array.isArray(value)
    ? value.map((v, i) => [i, v])
    : Object.entries(value);
  return entries.flatMap(([key, child]) => [[...prefix, key], ...paths(child, depth - 1, [...prefix, key])]);
}

describe("normalizeEvent properties", () => {
  const forge = fc.constantFrom(...FORGES);
  const eventName = fc.oneof(fc.constantFrom(...EVENT_KINDS), fc.string({ unit: "binary" }));

  it("never throws for any JSON value and any event name", () => {
    fc.assert(
      fc.property(forge, eventName, fc.string(), fc.jsonValue(), (f, e, id, payload) => {
        const event = normalizeEvent(f, e, id, payload);
        expect(event).toMatchObject({ forge: f, event: e, deliveryId: id });
        expectWellTyped(event);
      }),
      { numRuns: 500 },
    );
  });

  it("never throws when any field of a real payload is replaced by any JSON value", () => {
    const fixture = fc.constantFrom(...FIXTURES).chain((f) => {
      const all = paths(loadFixture(f.file));
      const values = fc.array(fc.jsonValue({ maxDepth: 3 }), { minLength: 4, maxLength: 4 });
      return fc.tuple(fc.constant(f), fc.subarray(all, { maxLength: 4 }), values);
    });
    fc.assert(
      fc.property(fixture, ([f, chosen, values]) => {
        const payload = loadFixture(f.file);
        chosen.forEach((path, i) => {
          let at = payload;
          for (const key of path.slice(0, -1)) {
            if (typeof at !== "object" || at === null) return;
            at = at[key];
          }
          if (typeof at === "object" && at !== null) at[path[path.length - 1] as string | number] = values[i];
        });
        expectWellTyped(normalizeEvent(f.forge, f.event, ID, payload));
      }),
      { numRuns: 500 },
    );
  });
});
