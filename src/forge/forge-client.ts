import { Octokit } from "@octokit/rest";
import type { ProjectConfig } from "../config.js";
import { PERMISSIONS, type Permission } from "../formulas/schema.js";

/** A sender's access to a repository, lowest first; `none` for strangers. */
export type AccessLevel = Permission | "none";

const RANK: Record<AccessLevel, number> = { none: 0, read: 1, triage: 2, write: 3, maintain: 4, admin: 5 };

/** Whether `level` is at least `needed`. */
export function hasAtLeast(level: AccessLevel, needed: Permission): boolean {
  return RANK[level] >= RANK[needed];
}

/**
 * Reads a collaborator-permission answer. GitHub says `admin|write|read|none` in
 * `permission` and the finer `maintain`/`triage` in `role_name`; Gitea/Forgejo add
 * `owner`, which is admin here. An unknown custom role falls back to `permission`.
 */
export function accessLevelOf(answer: { permission?: unknown; role_name?: unknown }): AccessLevel {
  const role = typeof answer.role_name === "string" ? answer.role_name : undefined;
  if (role && (PERMISSIONS as readonly string[]).includes(role)) return role as Permission;
  if (role === "owner") return "admin";
  const permission = typeof answer.permission === "string" ? answer.permission : "none";
  if (permission === "owner") return "admin";
  return (["read", "write", "admin"] as const).find((p) => p === permission) ?? "none";
}

/**
 * A forge call that failed: the HTTP status (undefined when no answer came: a timeout or a
 * network error), what the forge said, and the answer's headers (lower-case names), so a
 * caller can read `retry-after` and `x-ratelimit-*`. The message never holds the token.
 */
export class ForgeError extends Error {
  readonly headers: Record<string, string> | undefined;

  constructor(
    message: string,
    readonly status: number | undefined,
    options?: { cause?: unknown; headers?: Record<string, string> | undefined },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ForgeError";
    this.headers = options?.headers;
  }
}

/** Turns whatever Octokit (or fetch under it) threw into a ForgeError that says what was being done. */
export function toForgeError(what: string, error: unknown, timeoutMs?: number): ForgeError {
  if (error instanceof ForgeError) return error;
  const response = (error as { response?: { status?: unknown; headers?: unknown } } | undefined)?.response;
  if (response && typeof response.status === "number") {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries((response.headers ?? {}) as Record<string, unknown>)) {
      if (value !== undefined && value !== null) headers[name.toLowerCase()] = String(value);
    }
    const said = error instanceof Error && error.message ? `: ${error.message}` : "";
    return new ForgeError(`${what} failed: HTTP ${response.status}${said}`, response.status, { cause: error, headers });
  }
  const name = (error as { name?: unknown } | undefined)?.name;
  if ((name === "AbortError" || name === "TimeoutError") && timeoutMs !== undefined) {
    return new ForgeError(`${what} failed: no answer within ${timeoutMs / 1000} s`, undefined, { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new ForgeError(`${what} failed: ${message}`, undefined, { cause: error });
}

const PERMISSION_TIMEOUT_MS = 3_000;
/** How long one write or listing call may take before it counts as failed (and is retried by the outbox). */
const WRITE_TIMEOUT_MS = 30_000;
/** findComment looks at this many of the newest comments at most. */
const FIND_COMMENT_LIMIT = 1_000;
/** Colours of labels the runner creates on Gitea/Forgejo (GitHub picks one itself). */
const LABEL_COLOURS: Record<string, string> = { blocked: "#d73a4a" };
const DEFAULT_LABEL_COLOUR = "#ededed";

export interface ForgeClientOptions {
  /** Per-request timeout of comment and label calls; default 30 s. */
  timeoutMs?: number;
}

interface ListedComment {
  id: number;
  body?: string | null;
  user?: { login?: string } | null;
}

/** A pull request or issue the forge answered with: its number and web address. */
export interface ForgeItem {
  number: number;
  url: string | undefined;
}

interface ListedPull {
  number: number;
  state?: string;
  html_url?: string | null;
  head?: { ref?: string };
}

interface ListedIssue {
  number: number;
  body?: string | null;
  html_url?: string | null;
  pull_request?: unknown;
}

/** Pages of pull requests or issues read when looking for one (100 or 50 each). */
const FIND_PAGES = 20;

function itemOf(data: { number: number; html_url?: string | null }): ForgeItem {
  return {
    number: data.number,
    url: typeof data.html_url === "string" && data.html_url !== "" ? data.html_url : undefined,
  };
}

interface RepoLabel {
  id: number;
  name: string;
}

/**
 * One project's forge, through @octokit/rest: GitHub at its API URL, Gitea and Forgejo at
 * `https://host/api/v1`. Their paths for comments, labels and collaborator permission match
 * GitHub's; where they differ (page size parameter, labels added by id) it is handled here,
 * so callers make the same calls whatever the forge.
 */
export class ForgeClient {
  readonly octokit: Octokit;
  readonly #owner: string;
  readonly #repo: string;
  readonly #gitea: boolean;
  readonly #timeoutMs: number;
  /** The token's own login when no bot_login is configured, asked once. */
  #ownLogin: Promise<string> | undefined;

  constructor(
    readonly project: ProjectConfig,
    options: ForgeClientOptions = {},
  ) {
    const [owner, repo] = project.repo.split("/") as [string, string];
    this.#owner = owner;
    this.#repo = repo;
    this.#gitea = project.forge !== "github";
    this.#timeoutMs = options.timeoutMs ?? WRITE_TIMEOUT_MS;
    this.octokit = new Octokit({
      baseUrl: project.forgeUrl,
      ...(project.token ? { auth: project.token.reveal() } : {}),
      userAgent: "formula-runner",
      log: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
    });
  }

  /** The user's access to the repository; `none` when the forge does not know them as a collaborator. */
  async accessLevel(login: string): Promise<AccessLevel> {
    try {
      const { data } = await this.#call(
        `reading ${login}'s permission on ${this.project.repo}`,
        (signal) =>
          this.octokit.rest.repos.getCollaboratorPermissionLevel({
            owner: this.#owner,
            repo: this.#repo,
            username: login,
            request: { signal },
          }),
        PERMISSION_TIMEOUT_MS,
      );
      return accessLevelOf(data as { permission?: unknown; role_name?: unknown });
    } catch (error) {
      if (error instanceof ForgeError && error.status === 404) return "none";
      throw error;
    }
  }

  /**
   * The login the runner writes as: the project's `bot_login`, else the account of its
   * token (asked once; a failed answer is asked again next time).
   */
  ownLogin(): Promise<string> {
    if (this.project.botLogin) return Promise.resolve(this.project.botLogin);
    this.#ownLogin ??= this.#call(`asking who the token of ${this.project.repo} belongs to`, (signal) =>
      this.octokit.request("GET /user", { request: { signal } }),
    ).then(
      (res) => String((res.data as { login?: unknown }).login ?? ""),
      (error: unknown) => {
        this.#ownLogin = undefined;
        throw error;
      },
    );
    return this.#ownLogin;
  }

  /**
   * Who the token belongs to and, on GitHub with a classic token, its scopes (the
   * `x-oauth-scopes` answer header; undefined when the forge does not say, as for
   * fine-grained tokens and on Gitea/Forgejo). One `GET /user`; `doctor` uses it.
   */
  async tokenOwner(): Promise<{ login: string; scopes: string[] | undefined }> {
    const res = await this.#call(
      `asking ${this.project.forgeUrl} who the token of ${this.project.repo} belongs to`,
      (signal) => this.octokit.request("GET /user", { request: { signal } }),
    );
    const header = (res.headers as Record<string, unknown>)["x-oauth-scopes"];
    return {
      login: String((res.data as { login?: unknown }).login ?? ""),
      scopes:
        typeof header === "string"
          ? header
              .split(",")
              .map((scope) => scope.trim())
              .filter(Boolean)
          : undefined,
    };
  }

  /** Posts a comment on an issue (or pull request); its id and web address. */
  async createComment(issue: number, body: string): Promise<{ id: number; url: string | undefined }> {
    const { data } = await this.#call(`posting a comment on ${this.project.repo}#${issue}`, (signal) =>
      this.octokit.rest.issues.createComment({
        owner: this.#owner,
        repo: this.#repo,
        issue_number: issue,
        body,
        request: { signal },
      }),
    );
    return { id: data.id, url: typeof data.html_url === "string" && data.html_url !== "" ? data.html_url : undefined };
  }

  /** Replaces the body of a comment. */
  async updateComment(commentId: number, body: string): Promise<void> {
    await this.#call(`editing comment ${commentId} on ${this.project.repo}`, (signal) =>
      this.octokit.rest.issues.updateComment({
        owner: this.#owner,
        repo: this.#repo,
        comment_id: commentId,
        body,
        request: { signal },
      }),
    );
  }

  /**
   * The newest comment of the issue whose body contains `marker` (only comments updated
   * since `since`, when given). The forges list comments oldest first, so this reads the
   * last page first and walks back, looking at about 1000 comments at most. A Gitea that
   * does not paginate this listing answers everything at once, which is read the same way.
   */
  async findComment(issue: number, marker: string, since?: Date): Promise<{ id: number } | undefined> {
    // Only the runner's own comments: anyone can write a marker into a comment of theirs
    // ahead of a run (run ids are sequential) and would have it edited as the status.
    const author = (await this.ownLogin()).toLowerCase();
    const perPage = this.#gitea ? 50 : 100;
    const maxPages = Math.ceil(FIND_COMMENT_LIMIT / perPage);
    const page = (n: number) =>
      this.#call(`listing the comments of ${this.project.repo}#${issue}`, (signal) =>
        this.octokit.request("GET /repos/{owner}/{repo}/issues/{issue_number}/comments", {
          owner: this.#owner,
          repo: this.#repo,
          issue_number: issue,
          ...(this.#gitea ? { limit: perPage } : { per_page: perPage }),
          page: n,
          ...(since ? { since: since.toISOString() } : {}),
          request: { signal },
        }),
      );
    const first = await page(1);
    const last = lastPageOf(first.headers.link) ?? 1;
    const lowest = Math.max(1, last - maxPages + 1);
    for (let n = last; n >= lowest; n--) {
      const comments = (n === 1 ? first.data : (await page(n)).data) as ListedComment[];
      for (let i = comments.length - 1; i >= 0; i--) {
        const comment = comments[i] as ListedComment;
        if (comment.user?.login?.toLowerCase() !== author) continue;
        if (typeof comment.body === "string" && comment.body.includes(marker)) return { id: comment.id };
      }
    }
    return undefined;
  }

  /**
   * Adds labels to an issue, keeping the ones it has. GitHub takes names and creates
   * unknown labels itself; Gitea and Forgejo take label ids, so their repository labels are
   * listed and a missing one is created first (`blocked` in red).
   */
  async addLabels(issue: number, labels: string[]): Promise<void> {
    if (labels.length === 0) return;
    const what = `labelling ${this.project.repo}#${issue} ${labels.join(", ")}`;
    if (!this.#gitea) {
      await this.#call(what, (signal) =>
        this.octokit.rest.issues.addLabels({
          owner: this.#owner,
          repo: this.#repo,
          issue_number: issue,
          labels,
          request: { signal },
        }),
      );
      return;
    }
    const ids: number[] = [];
    let known = await this.#giteaLabels();
    for (const name of labels) {
      let label = findLabel(known, name);
      if (!label) {
        try {
          label = await this.#giteaCreateLabel(name);
        } catch (error) {
          // Someone (another instance) may have created it meanwhile: look again before giving up.
          known = await this.#giteaLabels();
          label = findLabel(known, name);
          if (!label) throw error;
        }
        known = [...known, label];
      }
      ids.push(label.id);
    }
    await this.#call(what, (signal) =>
      this.octokit.request({
        method: "POST",
        url: "/repos/{owner}/{repo}/issues/{issue_number}/labels",
        owner: this.#owner,
        repo: this.#repo,
        issue_number: issue,
        labels: ids,
        request: { signal },
      }),
    );
  }

  /**
   * Removes labels from an issue. A label the issue does not carry (404), or that the
   * repository does not know (Gitea, which removes by id), is already removed.
   */
  async removeLabels(issue: number, labels: string[]): Promise<void> {
    if (labels.length === 0) return;
    const known = this.#gitea ? await this.#giteaLabels() : [];
    for (const name of labels) {
      let key: string | number = name;
      if (this.#gitea) {
        const label = findLabel(known, name);
        if (!label) continue;
        key = label.id;
      }
      try {
        await this.#call(`removing label ${name} from ${this.project.repo}#${issue}`, (signal) =>
          this.octokit.request("DELETE /repos/{owner}/{repo}/issues/{issue_number}/labels/{name}", {
            owner: this.#owner,
            repo: this.#repo,
            issue_number: issue,
            name: String(key),
            request: { signal },
          }),
        );
      } catch (error) {
        if (!(error instanceof ForgeError && error.status === 404)) throw error;
      }
    }
  }

  /**
   * The open pull request whose head is the branch `head` of this repository, if any.
   * GitHub filters by `owner:branch`; Gitea lists the open pull requests, read page by page.
   */
  async findOpenPullRequest(head: string): Promise<ForgeItem | undefined> {
    const perPage = this.#gitea ? 50 : 100;
    for (let page = 1; page <= FIND_PAGES; page++) {
      const { data } = await this.#call(`listing the pull requests of ${this.project.repo}`, (signal) =>
        this.octokit.request("GET /repos/{owner}/{repo}/pulls", {
          owner: this.#owner,
          repo: this.#repo,
          state: "open",
          ...(this.#gitea ? { limit: perPage } : { per_page: perPage, head: `${this.#owner}:${head}` }),
          page,
          request: { signal },
        }),
      );
      const pulls = (Array.isArray(data) ? data : []) as ListedPull[];
      const found = pulls.find((p) => p.head?.ref === head && (p.state === undefined || p.state === "open"));
      if (found) return itemOf(found);
      if (pulls.length < perPage) return undefined;
    }
    return undefined;
  }

  /** Opens a pull request from branch `head`; Gitea and Forgejo take no draft flag, so a draft's title says "WIP: ". */
  async createPullRequest(request: {
    head: string;
    base: string;
    title: string;
    body: string;
    draft: boolean;
  }): Promise<ForgeItem> {
    const title = this.#gitea && request.draft ? `WIP: ${request.title}` : request.title;
    const { data } = await this.#call(`opening a pull request on ${this.project.repo}`, (signal) =>
      this.octokit.request("POST /repos/{owner}/{repo}/pulls", {
        owner: this.#owner,
        repo: this.#repo,
        head: request.head,
        base: request.base,
        title,
        body: request.body,
        ...(this.#gitea ? {} : { draft: request.draft }),
        request: { signal },
      }),
    );
    return itemOf(data as ListedPull);
  }

  /** Replaces a pull request's title and body (a draft on Gitea keeps its "WIP: "). */
  async updatePullRequest(number: number, request: { title: string; body: string; draft: boolean }): Promise<void> {
    const title = this.#gitea && request.draft ? `WIP: ${request.title}` : request.title;
    await this.#call(`editing pull request ${this.project.repo}#${number}`, (signal) =>
      this.octokit.request("PATCH /repos/{owner}/{repo}/pulls/{pull_number}", {
        owner: this.#owner,
        repo: this.#repo,
        pull_number: number,
        title,
        body: request.body,
        request: { signal },
      }),
    );
  }

  /**
   * The open issue (not pull request) whose body contains `marker`, among those updated
   * since `since`, newest first, about 1000 at most.
   */
  async findIssue(marker: string, since: Date): Promise<ForgeItem | undefined> {
    const perPage = this.#gitea ? 50 : 100;
    for (let page = 1; page <= FIND_PAGES; page++) {
      const { data } = await this.#call(`listing the issues of ${this.project.repo}`, (signal) =>
        this.octokit.request("GET /repos/{owner}/{repo}/issues", {
          owner: this.#owner,
          repo: this.#repo,
          state: "open",
          since: since.toISOString(),
          ...(this.#gitea
            ? { type: "issues", limit: perPage }
            : { sort: "created", direction: "desc", per_page: perPage }),
          page,
          request: { signal },
        }),
      );
      const issues = (Array.isArray(data) ? data : []) as ListedIssue[];
      const found = issues.find((i) => !i.pull_request && typeof i.body === "string" && i.body.includes(marker));
      if (found) return itemOf(found);
      if (issues.length < perPage) return undefined;
    }
    return undefined;
  }

  /** Opens an issue. */
  async createIssue(title: string, body: string): Promise<ForgeItem> {
    const { data } = await this.#call(`opening an issue on ${this.project.repo}`, (signal) =>
      this.octokit.request("POST /repos/{owner}/{repo}/issues", {
        owner: this.#owner,
        repo: this.#repo,
        title,
        body,
        request: { signal },
      }),
    );
    return itemOf(data as ListedIssue);
  }

  /** Every label of the repository (Gitea pages them by `limit`). */
  async #giteaLabels(): Promise<RepoLabel[]> {
    const limit = 50;
    const all: RepoLabel[] = [];
    const seen = new Set<number>();
    for (let page = 1; page <= 100; page++) {
      const { data } = await this.#call(`listing the labels of ${this.project.repo}`, (signal) =>
        this.octokit.request({
          method: "GET",
          url: "/repos/{owner}/{repo}/labels",
          owner: this.#owner,
          repo: this.#repo,
          limit,
          page,
          request: { signal },
        }),
      );
      const labels = (Array.isArray(data) ? data : []) as RepoLabel[];
      const fresh = labels.filter((l) => !seen.has(l.id));
      for (const label of fresh) {
        seen.add(label.id);
        all.push({ id: label.id, name: label.name });
      }
      // A short page is the last; a page of nothing new means the forge ignores paging.
      if (labels.length < limit || fresh.length === 0) break;
    }
    return all;
  }

  async #giteaCreateLabel(name: string): Promise<RepoLabel> {
    const { data } = await this.#call(`creating label "${name}" on ${this.project.repo}`, (signal) =>
      this.octokit.request({
        method: "POST",
        url: "/repos/{owner}/{repo}/labels",
        owner: this.#owner,
        repo: this.#repo,
        name,
        color: LABEL_COLOURS[name.toLowerCase()] ?? DEFAULT_LABEL_COLOUR,
        request: { signal },
      }),
    );
    const label = data as RepoLabel;
    return { id: label.id, name: label.name };
  }

  /** One forge call with a timeout; any failure becomes a ForgeError saying what was being done. */
  async #call<T>(what: string, call: (signal: AbortSignal) => Promise<T>, timeoutMs = this.#timeoutMs): Promise<T> {
    const controller = new AbortController();
    // A plain timer cleared when the call ends, so no timer outlives the call.
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      return await call(controller.signal);
    } catch (error) {
      throw toForgeError(what, error, timeoutMs);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The page number of `rel="last"` in a Link header. */
function lastPageOf(link: string | undefined): number | undefined {
  if (!link) return undefined;
  for (const part of link.split(",")) {
    if (!/rel="last"/.test(part)) continue;
    const url = /<([^>]+)>/.exec(part)?.[1];
    if (!url) continue;
    const page = Number(new URL(url, "http://x").searchParams.get("page"));
    if (Number.isInteger(page) && page > 0) return page;
  }
  return undefined;
}

/** A label by exact name, else ignoring case (Gitea keeps the case it was created with). */
function findLabel(labels: readonly RepoLabel[], name: string): RepoLabel | undefined {
  return labels.find((l) => l.name === name) ?? labels.find((l) => l.name.toLowerCase() === name.toLowerCase());
}

/** Caches permission answers for a minute (DESIGN), sharing lookups in flight. */
export class PermissionCache {
  readonly #entries = new Map<string, { level: AccessLevel; at: number }>();
  readonly #inflight = new Map<string, Promise<AccessLevel>>();

  constructor(
    private readonly clientFor: (project: ProjectConfig) => ForgeClient,
    private readonly ttlMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  async level(project: ProjectConfig, login: string): Promise<AccessLevel> {
    const key = `${project.name}\0${login.toLowerCase()}`;
    const hit = this.#entries.get(key);
    if (hit && this.now() - hit.at < this.ttlMs) return hit.level;
    const pending = this.#inflight.get(key);
    if (pending) return pending;
    const lookup = this.clientFor(project)
      .accessLevel(login)
      .then((level) => {
        this.#entries.set(key, { level, at: this.now() });
        return level;
      })
      .finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, lookup);
    return lookup;
  }
}
