import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { type Context, Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";

/**
 * A fake GitHub / Gitea / Forgejo REST API on a random loopback port, for the outbound forge
 * calls (comments, labels, permissions). GitHub paths are served at the root (`url`), the
 * same API in Gitea's shape under `/api/v1` (`giteaUrl`). It records every request and can
 * fail on demand. State lives in memory per repository "owner/name" (case-insensitive).
 */
export interface FakeForge {
  /** GitHub-style API base, e.g. http://127.0.0.1:PORT */
  readonly url: string;
  /** Gitea/Forgejo-style API base: `${url}/api/v1` */
  readonly giteaUrl: string;
  /** Every request in arrival order (the same array for the forge's lifetime; reset() empties it). */
  readonly requests: RecordedRequest[];
  /**
   * Accepts `token` as `login`. With `scopes`, GitHub-flavoured answers to it carry them
   * in `x-oauth-scopes`, as GitHub does for a classic token.
   */
  addToken(token: string, login: string, scopes?: readonly string[]): void;
  setPermission(repo: string, login: string, role: Role): void;
  /** Defines a repository label (Gitea adds labels to issues by id); returns it. */
  addLabel(repo: string, name: string, color?: string): FakeLabel;
  /** A snapshot of an issue's comments and labels (an unknown issue is empty). */
  issue(repo: string, number: number): FakeIssue;
  /** The pull requests of a repository, oldest first (snapshots). */
  pullRequests(repo: string): FakePull[];
  /** The issues opened through the API (POST /repos/:o/:r/issues), oldest first (snapshots). */
  openedIssues(repo: string): FakeOpenedIssue[];
  /** Injects a comment as if a person wrote it (e.g. a reply to an escalation). */
  addComment(repo: string, number: number, comment: { login: string; body: string; at?: Date }): FakeComment;
  /** The next `count` matching requests get this answer instead of the real one. */
  failNext(fault?: Fault): void;
  /** While down, every request gets 503. */
  setDown(down: boolean): void;
  /**
   * While hanging, requests get no answer: each is held until the hang ends (or the forge
   * closes) and then answered 503, like a forge behind a stalled proxy. A client timeout
   * shorter than the hang sees it as a timeout.
   */
  setHanging(hanging: boolean): void;
  /** Forgets requests, issues, comments, labels, permissions, faults and the outage; tokens stay. */
  reset(): void;
  /** Stops the server and drops every open connection; idempotent. */
  close(): Promise<void>;
}

export type Flavor = "github" | "gitea";
/** Repository roles as GitHub names them; `permission` answers collapse maintain to write and triage to read. */
export type Role = "admin" | "maintain" | "write" | "triage" | "read" | "none";

export interface FakeComment {
  id: number;
  body: string;
  user: { login: string; id: number; type: "User" | "Bot" };
  html_url: string;
  issue_url: string;
  created_at: string;
  updated_at: string;
}
export interface FakeLabel {
  id: number;
  name: string;
  color: string;
}
/** A pull request as the fake keeps it (GitHub's shape, a subset). */
export interface FakePull {
  number: number;
  title: string;
  body: string;
  state: "open" | "closed";
  draft: boolean;
  head: { ref: string; label: string };
  base: { ref: string };
  user: { login: string };
  html_url: string;
  created_at: string;
  updated_at: string;
}
/** An issue opened through the API. */
export interface FakeOpenedIssue {
  number: number;
  title: string;
  body: string;
  state: "open" | "closed";
  user: { login: string };
  html_url: string;
  created_at: string;
  updated_at: string;
}
export interface FakeIssue {
  comments: FakeComment[];
  labels: FakeLabel[];
}

export interface RecordedRequest {
  method: string;
  /** The API path without query and without the `/api/v1` prefix, e.g. /repos/o/r/issues/1/comments */
  path: string;
  query: Record<string, string>;
  flavor: Flavor;
  /** Lower-cased names. */
  headers: Record<string, string>;
  /** Parsed JSON, else the raw text; undefined when empty. */
  body: unknown;
  /** The status answered (0 while the answer is pending). */
  status: number;
  at: Date;
}

export interface Fault {
  /** How many matching requests fail; default 1. */
  count?: number;
  /** Default 500. */
  status?: number;
  headers?: Record<string, string>;
  /** An object is sent as JSON, a string as text; default `{message: "fake forge fault"}`. */
  body?: unknown;
  /** Wait this long before answering (a client timeout shorter than this sees a hung forge). */
  delayMs?: number;
  /** Which requests; default all. A string path must equal the API path or the full path. */
  match?: { method?: string; path?: string | RegExp; flavor?: Flavor };
}

export interface FakeForgeOptions {
  /** token -> login. With no tokens at all, any request is accepted as "runner-bot". */
  tokens?: Record<string, string>;
  /** Clock for timestamps; default the real clock made strictly increasing (so an edit always changes updated_at). */
  now?: () => Date;
}

const PERMISSIONS: Record<Role, "admin" | "write" | "read" | "none"> = {
  admin: "admin",
  maintain: "write",
  write: "write",
  triage: "read",
  read: "read",
  none: "none",
};
const RATE_LIMIT = 5000;

interface IssueState {
  comments: FakeComment[];
  labels: string[]; // names, lower-cased keys into RepoState.labels
}
interface RepoState {
  labels: Map<string, FakeLabel>;
  issues: Map<number, IssueState>;
  roles: Map<string, Role>;
  pulls: FakePull[];
  opened: FakeOpenedIssue[];
}
type Env = { Variables: { login: string; body: unknown } };

export async function startFakeForge(opts: FakeForgeOptions = {}): Promise<FakeForge> {
  const tokens = new Map(Object.entries(opts.tokens ?? {}));
  const scopes = new Map<string, readonly string[]>();
  const requests: RecordedRequest[] = [];
  let repos = new Map<string, RepoState>();
  let faults: Array<Fault & { left: number }> = [];
  let down = false;
  let hang: { ended: Promise<void>; end: () => void } | undefined;
  let nextId = 1000; // comment and label ids; far from issue numbers so a mix-up shows
  const userIds = new Map<string, number>();
  const closing = new AbortController();
  let origin = "";

  let last = 0;
  const now =
    opts.now ??
    (() => {
      last = Math.max(Date.now(), last + 1);
      return new Date(last);
    });
  const rateLimitReset = String(Math.floor(Date.now() / 1000) + 3600);

  const repoState = (repo: string): RepoState => {
    const key = repo.toLowerCase();
    let state = repos.get(key);
    if (!state) {
      state = { labels: new Map(), issues: new Map(), roles: new Map(), pulls: [], opened: [] };
      repos.set(key, state);
    }
    return state;
  };
  const issueState = (repo: string, number: number): IssueState => {
    const issues = repoState(repo).issues;
    let issue = issues.get(number);
    if (!issue) {
      issue = { comments: [], labels: [] };
      issues.set(number, issue);
    }
    return issue;
  };
  const issueLabels = (repo: string, issue: IssueState): FakeLabel[] =>
    issue.labels.map((name) => ({ ...repoState(repo).labels.get(name)! }));
  const labelByName = (repo: string, name: string, color = "ededed"): FakeLabel => {
    const labels = repoState(repo).labels;
    let label = labels.get(name.toLowerCase());
    if (!label) {
      label = { id: nextId++, name, color };
      labels.set(name.toLowerCase(), label);
    }
    return label;
  };
  const findComment = (repo: string, id: number) => {
    for (const [number, issue] of repoState(repo).issues) {
      const comment = issue.comments.find((c) => c.id === id);
      if (comment) return { number, issue, comment };
    }
    return undefined;
  };
  const createComment = (repo: string, number: number, login: string, body: string, at = now()): FakeComment => {
    if (!userIds.has(login)) userIds.set(login, userIds.size + 1);
    const id = nextId++;
    const comment: FakeComment = {
      id,
      body,
      user: { login, id: userIds.get(login)!, type: login.endsWith("[bot]") ? "Bot" : "User" },
      html_url: `${origin}/${repo}/issues/${number}#issuecomment-${id}`,
      issue_url: `${origin}/repos/${repo}/issues/${number}`,
      created_at: at.toISOString(),
      updated_at: at.toISOString(),
    };
    issueState(repo, number).comments.push(comment);
    return { ...comment, user: { ...comment.user } };
  };

  /** The routes of one flavour; both share the state above. */
  const api = (flavor: Flavor) => {
    const r = new Hono<Env>();
    const repoOf = (c: Context<Env>) => `${c.req.param("owner")}/${c.req.param("repo")}`;
    const numberOf = (c: Context<Env>) => Number(c.req.param("number"));
    const invalid = (c: Context<Env>, message = "Validation Failed") => c.json({ message }, 422);
    const notFound = (c: Context<Env>) => c.json({ message: "Not Found" }, 404);

    r.get("/user", (c) => c.json({ login: c.get("login"), id: userIds.get(c.get("login")) ?? 0 }));

    r.post("/repos/:owner/:repo/issues/:number{[0-9]+}/comments", (c) => {
      const body = c.get("body") as { body?: unknown } | undefined;
      if (typeof body?.body !== "string") return invalid(c);
      return c.json(createComment(repoOf(c), numberOf(c), c.get("login"), body.body), 201);
    });

    r.get("/repos/:owner/:repo/issues/:number{[0-9]+}/comments", (c) => {
      const sizeParam = flavor === "github" ? "per_page" : "limit";
      const perPage = Math.min(Number(c.req.query(sizeParam) ?? 30) || 30, flavor === "github" ? 100 : 50);
      const page = Math.max(Number(c.req.query("page") ?? 1) || 1, 1);
      const since = c.req.query("since");
      if (since !== undefined && Number.isNaN(Date.parse(since))) return invalid(c);
      const all = issueState(repoOf(c), numberOf(c)).comments.filter(
        (comment) => since === undefined || Date.parse(comment.updated_at) >= Date.parse(since),
      );
      const lastPage = Math.max(Math.ceil(all.length / perPage), 1);
      const link = (p: number, rel: string) => {
        const u = new URL(c.req.url);
        u.searchParams.set(sizeParam, String(perPage));
        u.searchParams.set("page", String(p));
        return `<${u.href}>; rel="${rel}"`;
      };
      const links = [];
      if (page < lastPage) links.push(link(page + 1, "next"), link(lastPage, "last"));
      if (page > 1) links.push(link(1, "first"), link(page - 1, "prev"));
      if (links.length > 0) c.header("link", links.join(", "));
      c.header("x-total-count", String(all.length));
      return c.json(all.slice((page - 1) * perPage, page * perPage));
    });

    r.on(["GET", "PATCH", "DELETE"], "/repos/:owner/:repo/issues/comments/:id{[0-9]+}", (c) => {
      const found = findComment(repoOf(c), Number(c.req.param("id")));
      if (!found) return notFound(c);
      if (c.req.method === "DELETE") {
        found.issue.comments.splice(found.issue.comments.indexOf(found.comment), 1);
        return c.body(null, 204);
      }
      if (c.req.method === "PATCH") {
        const body = c.get("body") as { body?: unknown } | undefined;
        if (typeof body?.body !== "string") return invalid(c);
        found.comment.body = body.body;
        found.comment.updated_at = now().toISOString();
      }
      return c.json(found.comment);
    });

    r.get("/repos/:owner/:repo/labels", (c) => c.json([...repoState(repoOf(c)).labels.values()]));
    r.post("/repos/:owner/:repo/labels", (c) => {
      const body = c.get("body") as { name?: unknown; color?: unknown } | undefined;
      if (typeof body?.name !== "string" || repoState(repoOf(c)).labels.has(body.name.toLowerCase())) return invalid(c);
      const color = typeof body.color === "string" ? body.color.replace(/^#/, "") : undefined;
      return c.json(labelByName(repoOf(c), body.name, color), 201);
    });

    const labelsPath = "/repos/:owner/:repo/issues/:number{[0-9]+}/labels";
    r.get(labelsPath, (c) => c.json(issueLabels(repoOf(c), issueState(repoOf(c), numberOf(c)))));
    // POST adds, PUT replaces. GitHub takes names (or {name} objects); Gitea ids or names.
    r.on(["POST", "PUT"], labelsPath, (c) => {
      const repo = repoOf(c);
      const body = c.get("body");
      const entries: unknown = Array.isArray(body) ? body : (body as { labels?: unknown } | undefined)?.labels;
      if (!Array.isArray(entries)) return invalid(c);
      const names: string[] = [];
      for (const entry of entries) {
        const name =
          typeof entry === "object" && entry !== null && flavor === "github"
            ? (entry as { name?: unknown }).name
            : entry;
        if (typeof name === "string") names.push(labelByName(repo, name).name.toLowerCase());
        else if (typeof name === "number" && flavor === "gitea") {
          const label = [...repoState(repo).labels.values()].find((l) => l.id === name);
          if (!label) return invalid(c, `label ${name} does not exist`);
          names.push(label.name.toLowerCase());
        } else return invalid(c);
      }
      const issue = issueState(repo, numberOf(c));
      const kept = c.req.method === "PUT" ? [] : issue.labels;
      issue.labels = [...new Set([...kept, ...names])];
      return c.json(issueLabels(repo, issue));
    });
    r.delete(labelsPath, (c) => {
      issueState(repoOf(c), numberOf(c)).labels = [];
      return c.body(null, 204);
    });
    // By name (GitHub) or by id (Gitea); either is accepted on both.
    r.delete(`${labelsPath}/:label`, (c) => {
      const repo = repoOf(c);
      const issue = issueState(repo, numberOf(c));
      const key = c.req.param("label");
      const index = issue.labels.findIndex(
        (name) => name === key.toLowerCase() || String(repoState(repo).labels.get(name)!.id) === key,
      );
      if (index < 0) return c.json({ message: "Label does not exist" }, 404);
      issue.labels.splice(index, 1);
      return flavor === "github" ? c.json(issueLabels(repo, issue)) : c.body(null, 204);
    });

    /** Issues and pull requests share numbers, above any issue a test has used. */
    const nextNumber = (repo: string) => {
      const state = repoState(repo);
      const used = [...state.issues.keys(), ...state.pulls.map((p) => p.number), ...state.opened.map((i) => i.number)];
      return Math.max(100, ...used) + 1;
    };
    const pageOf = <T>(c: Context<Env>, items: T[]): T[] => {
      const sizeParam = flavor === "github" ? "per_page" : "limit";
      const perPage = Math.min(Number(c.req.query(sizeParam) ?? 30) || 30, flavor === "github" ? 100 : 50);
      const page = Math.max(Number(c.req.query("page") ?? 1) || 1, 1);
      return items.slice((page - 1) * perPage, page * perPage);
    };

    r.get("/repos/:owner/:repo/pulls", (c) => {
      const repo = repoOf(c);
      const state = c.req.query("state") ?? "open";
      // GitHub filters by "owner:branch"; Gitea has no head filter on this listing.
      const head = flavor === "github" ? c.req.query("head") : undefined;
      const pulls = repoState(repo)
        .pulls.filter((p) => state === "all" || p.state === state)
        .filter((p) => head === undefined || p.head.label === head)
        .sort((a, b) => b.number - a.number);
      return c.json(pageOf(c, pulls));
    });
    r.post("/repos/:owner/:repo/pulls", (c) => {
      const repo = repoOf(c);
      const body = c.get("body") as Record<string, unknown> | undefined;
      const { title, head, base } = body ?? {};
      if (typeof title !== "string" || typeof head !== "string" || typeof base !== "string") return invalid(c);
      const pulls = repoState(repo).pulls;
      if (pulls.some((p) => p.state === "open" && p.head.ref === head && p.base.ref === base)) {
        // What each forge answers for a second pull request of the same branches.
        return flavor === "github"
          ? invalid(c, `A pull request already exists for ${repo.split("/")[0]}:${head}.`)
          : c.json({ message: "pull request already exists for these targets" }, 409);
      }
      const at = now().toISOString();
      const number = nextNumber(repo);
      const pull: FakePull = {
        number,
        title,
        body: typeof body?.body === "string" ? body.body : "",
        state: "open",
        draft: flavor === "github" && body?.draft === true,
        head: { ref: head, label: `${repo.split("/")[0]}:${head}` },
        base: { ref: base },
        user: { login: c.get("login") },
        html_url: `${origin}/${repo}/pull/${number}`,
        created_at: at,
        updated_at: at,
      };
      pulls.push(pull);
      return c.json(structuredClone(pull), 201);
    });
    r.patch("/repos/:owner/:repo/pulls/:number{[0-9]+}", (c) => {
      const pull = repoState(repoOf(c)).pulls.find((p) => p.number === numberOf(c));
      if (!pull) return notFound(c);
      const body = c.get("body") as Record<string, unknown> | undefined;
      if (typeof body?.title === "string") pull.title = body.title;
      if (typeof body?.body === "string") pull.body = body.body;
      if (body?.state === "open" || body?.state === "closed") pull.state = body.state;
      pull.updated_at = now().toISOString();
      return c.json(structuredClone(pull));
    });

    r.get("/repos/:owner/:repo/issues", (c) => {
      const state = c.req.query("state") ?? "open";
      const since = c.req.query("since");
      if (since !== undefined && Number.isNaN(Date.parse(since))) return invalid(c);
      const issues = repoState(repoOf(c))
        .opened.filter((i) => state === "all" || i.state === state)
        .filter((i) => since === undefined || Date.parse(i.updated_at) >= Date.parse(since))
        .sort((a, b) => b.number - a.number);
      return c.json(pageOf(c, issues));
    });
    r.post("/repos/:owner/:repo/issues", (c) => {
      const repo = repoOf(c);
      const body = c.get("body") as Record<string, unknown> | undefined;
      if (typeof body?.title !== "string" || body.title === "") return invalid(c);
      const at = now().toISOString();
      const number = nextNumber(repo);
      const issue: FakeOpenedIssue = {
        number,
        title: body.title,
        body: typeof body.body === "string" ? body.body : "",
        state: "open",
        user: { login: c.get("login") },
        html_url: `${origin}/${repo}/issues/${number}`,
        created_at: at,
        updated_at: at,
      };
      repoState(repo).opened.push(issue);
      issueState(repo, number);
      return c.json(structuredClone(issue), 201);
    });

    r.get("/repos/:owner/:repo/collaborators/:username/permission", (c) => {
      const login = c.req.param("username");
      const role = repoState(repoOf(c)).roles.get(login.toLowerCase()) ?? "none";
      return c.json({ permission: PERMISSIONS[role], role_name: role, user: { login } });
    });
    return r;
  };

  /** An outage, a fault or bad credentials answer before any route does. */
  const intercept = async (c: Context<Env>, record: RecordedRequest): Promise<Response | undefined> => {
    if (hang) {
      // close() ends the hang too.
      await hang.ended;
      return c.json({ message: "fake forge hang" }, 503);
    }
    if (down) return c.json({ message: "Service Unavailable" }, 503);
    const fault = faults.find((f) => matches(f, record, new URL(c.req.url).pathname));
    if (fault) {
      if (--fault.left <= 0) faults = faults.filter((f) => f !== fault);
      if (fault.delayMs) await sleep(fault.delayMs, closing.signal);
      const status = fault.status ?? 500;
      if (status === 204 || status === 304) return c.body(null, status, fault.headers);
      const body = fault.body ?? { message: "fake forge fault" };
      const json = typeof body !== "string";
      return c.body(json ? JSON.stringify(body) : body, status as ContentfulStatusCode, {
        "content-type": json ? "application/json; charset=utf-8" : "text/plain; charset=utf-8",
        ...fault.headers,
      });
    }
    if (tokens.size === 0) {
      c.set("login", "runner-bot");
      return undefined;
    }
    const auth = /^(?:token|bearer)\s+(\S+)$/i.exec(c.req.header("authorization") ?? "")?.[1];
    const login = tokens.get(auth ?? c.req.query("access_token") ?? c.req.query("token") ?? "");
    if (login === undefined) return c.json({ message: "Bad credentials" }, 401);
    const granted = scopes.get(auth ?? "");
    if (granted !== undefined && record.flavor === "github") c.header("x-oauth-scopes", granted.join(", "));
    c.set("login", login);
    return undefined;
  };

  const app = new Hono<Env>();
  app.use("*", async (c, next) => {
    const url = new URL(c.req.url);
    const gitea = url.pathname === "/api/v1" || url.pathname.startsWith("/api/v1/");
    const text = await c.req.text();
    let body: unknown = text === "" ? undefined : text;
    try {
      body = text === "" ? undefined : JSON.parse(text);
    } catch {
      // not JSON: the raw text is recorded and routes reject it
    }
    const record: RecordedRequest = {
      method: c.req.method,
      path: gitea ? url.pathname.slice("/api/v1".length) || "/" : url.pathname,
      query: Object.fromEntries(url.searchParams),
      flavor: gitea ? "gitea" : "github",
      headers: c.req.header(),
      body,
      status: 0,
      at: now(),
    };
    requests.push(record);
    c.set("body", body);
    c.header("x-ratelimit-limit", String(RATE_LIMIT));
    c.header("x-ratelimit-remaining", String(Math.max(RATE_LIMIT - requests.length, 0)));
    c.header("x-ratelimit-used", String(Math.min(requests.length, RATE_LIMIT)));
    c.header("x-ratelimit-reset", rateLimitReset);
    c.header("x-ratelimit-resource", "core");
    const early = await intercept(c, record);
    if (early) {
      record.status = early.status;
      return early;
    }
    await next();
    record.status = c.res.status;
  });
  app.route("/api/v1", api("gitea"));
  app.route("/", api("github"));
  app.notFound((c) => c.json({ message: "Not Found" }, 404));
  app.onError((err, c) => c.json({ message: `fake forge error: ${err.message}` }, 500));

  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0, overrideGlobalObjects: false }, () =>
      resolve(s as Server),
    );
    s.once("error", reject);
  });
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // Idle connections are the client's to close: a server that closes one after 5 s (Node's
  // default) races a client reusing it on a loaded host, and the send fails with ECONNRESET.
  server.keepAliveTimeout = 120_000;

  let closed: Promise<void> | undefined;
  return {
    url: origin,
    giteaUrl: `${origin}/api/v1`,
    requests,
    addToken: (token, login, granted) => {
      tokens.set(token, login);
      if (granted !== undefined) scopes.set(token, granted);
    },
    setPermission: (repo, login, role) => void repoState(repo).roles.set(login.toLowerCase(), role),
    addLabel: (repo, name, color) => ({ ...labelByName(repo, name, color) }),
    issue(repo, number) {
      const issue = repoState(repo).issues.get(number) ?? { comments: [], labels: [] };
      return { comments: structuredClone(issue.comments), labels: issueLabels(repo, issue) };
    },
    pullRequests: (repo) => structuredClone(repoState(repo).pulls),
    openedIssues: (repo) => structuredClone(repoState(repo).opened),
    addComment: (repo, number, { login, body, at }) => createComment(repo, number, login, body, at),
    failNext: (fault = {}) => void faults.push({ ...fault, left: fault.count ?? 1 }),
    setDown: (value) => {
      down = value;
    },
    setHanging: (value) => {
      if (value && !hang) {
        let end = () => {};
        const ended = new Promise<void>((resolve) => {
          end = resolve;
        });
        hang = { ended, end };
      } else if (!value && hang) {
        hang.end();
        hang = undefined;
      }
    },
    reset() {
      requests.length = 0;
      repos = new Map();
      faults = [];
      down = false;
      hang?.end();
      hang = undefined;
    },
    close() {
      closed ??= new Promise<void>((resolve, reject) => {
        closing.abort();
        hang?.end();
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

function matches(fault: Fault, record: RecordedRequest, fullPath: string): boolean {
  const { method, path, flavor } = fault.match ?? {};
  if (method !== undefined && method.toUpperCase() !== record.method) return false;
  if (flavor !== undefined && flavor !== record.flavor) return false;
  if (path === undefined) return true;
  return typeof path === "string"
    ? path === record.path || path === fullPath
    : path.test(record.path) || path.test(fullPath);
}

/** Resolves after `ms`, or at once when the forge closes (so close() never waits on a delayed answer). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
