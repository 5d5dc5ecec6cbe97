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

/** A forge call that failed: HTTP status (if any) and what the forge said. */
export class ForgeError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ForgeError";
  }
}

const PERMISSION_TIMEOUT_MS = 3_000;

/**
 * One project's forge, through @octokit/rest: GitHub at its API URL, Gitea and Forgejo at
 * `https://host/api/v1` (their paths for comments, labels and collaborator permission
 * match GitHub's; where they differ it is handled here).
 */
export class ForgeClient {
  readonly octokit: Octokit;
  readonly #owner: string;
  readonly #repo: string;

  constructor(readonly project: ProjectConfig) {
    const [owner, repo] = project.repo.split("/") as [string, string];
    this.#owner = owner;
    this.#repo = repo;
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
      const { data } = await this.octokit.rest.repos.getCollaboratorPermissionLevel({
        owner: this.#owner,
        repo: this.#repo,
        username: login,
        request: { signal: AbortSignal.timeout(PERMISSION_TIMEOUT_MS) },
      });
      return accessLevelOf(data as { permission?: unknown; role_name?: unknown });
    } catch (error) {
      const status = (error as { status?: number }).status;
      if (status === 404) return "none";
      throw new ForgeError(`could not read ${login}'s permission on ${this.project.repo}: ${(error as Error).message}`, status, { cause: error });
    }
  }
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
