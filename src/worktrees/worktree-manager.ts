/**
 * Per-run git worktrees on this instance's disk: made from the freshly fetched primary
 * branch, removed on success, preserved (with an expiry) otherwise, purged in bulk by
 * housekeeping and the API, and adopted back into the database after a crash of the
 * server itself. Every directory this instance makes ends up with a row, and nothing
 * outside WORKTREE_ROOT is ever deleted.
 */
import { lstat, mkdir, readdir, readFile, realpath, rm } from "node:fs/promises";
import path from "node:path";
import { and, asc, desc, eq, inArray, isNull, lt, lte, or, type SQL, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  FINAL_RUN_STATUSES,
  type RunStatus,
  runs,
  type Worktree,
  type WorktreeRemover,
  type WorktreeState,
  worktrees,
} from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import { AppError, errorMessage } from "../errors.js";
import { formatDuration } from "../formulas/duration.js";
import type { Logger } from "../logger.js";
import { retryWhileUnavailable } from "../runs/retry-database.js";
import { CloneQueue } from "./clone-lock.js";
import { chunks, mapLimit } from "./concurrency.js";
import { type DeleteOutcome, deleteBelowRoot, isEntryName } from "./delete-below.js";
import { diskUsage } from "./disk-size.js";
import { git, WorktreeError, worktreeHead } from "./git.js";
import { ensureClone, gitCredentials } from "./managed-clone.js";
import { isInside, isLexicallyInside, isSafeSegment, parseWorktreeDirName, worktreePath } from "./paths.js";

export { WorktreeError } from "./git.js";

export type WorktreeRow = Worktree;

export interface WorktreeManagerDeps {
  database: Database;
  /** WORKTREE_ROOT: worktrees live at `<root>/<project>/<formula>-<runId>`. */
  root: string;
  /** This instance: it only ever deletes worktrees recorded with its id. */
  instanceId: string;
  log: Logger;
  now?: () => Date;
  /** The server's environment, inherited by git (PATH, HOME, GIT_SSH_COMMAND...). */
  env: Readonly<Record<string, string | undefined>>;
  /** Kill a `git fetch` that has not finished after this long (default 5 min). */
  fetchTimeoutMs?: number;
  /** Kill any other git command after this long (default 1 min). */
  gitTimeoutMs?: number;
}

/** One worktree in a purge report. */
export interface PurgeEntry {
  id: number;
  run_id: number | null;
  project: string;
  formula: string;
  path: string;
  /** Why it was (or would be) purged, or why it was kept. */
  reason: string;
  preserved_at: string | null;
  expires_at: string | null;
}

export interface PurgeOptions {
  /** Exactly these worktrees (each must be preserved, and match the other criteria if given). */
  ids?: number[];
  /** Only those past `expires_at` (what housekeeping uses). */
  expiredOnly?: boolean;
  /** Only those preserved at least this long ago. Default 24 h when neither `ids` nor `expiredOnly` is given. */
  olderThanMs?: number;
  /** Decide and report, delete nothing. */
  dryRun?: boolean;
  by: "housekeeping" | "api";
  /** The configured projects: their clones are pruned after the directories are deleted. */
  projects: readonly ProjectConfig[];
}

export interface PurgeResult {
  purged: PurgeEntry[];
  kept: PurgeEntry[];
}

export interface WorktreeListFilter {
  state?: WorktreeState;
  project?: string;
  formula?: string;
  runId?: number;
  /** Default 1000, at most 10,000. */
  limit?: number;
  /** Cursor: only rows with a smaller id (rows come newest first). */
  beforeId?: number;
}

/** The default age for `purge` from the API and CLI (`--older-than 24h`). */
export const DEFAULT_PURGE_AGE_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_LIST_LIMIT = 1000;
export const MAX_LIST_LIMIT = 10_000;

/** Run statuses during which a worktree is in use and must not be deleted. */
const IN_USE_RUN_STATUSES: readonly RunStatus[] = ["queued", "running", "escalated"];

/** Directories deleted at once during a purge (fs.rm runs on libuv's thread pool). */
const DELETE_CONCURRENCY = 8;

/** Rows per statement when a list of ids goes into `in (...)` (far below the 65,535 parameter limit). */
const ID_CHUNK = 5_000;

/** A clone in which `git worktree prune` must run after directories were deleted. */
interface PruneTarget {
  /** The queue key: the project's repo_path (the key `create` uses too). */
  key: string;
  /** Where git runs: always a configured project's clone, never one a worktree's `.git` file names. */
  repo: string;
}

/** A purge candidate that passed every check. */
interface Removal {
  row: WorktreeRow;
  /** False when the directory was already gone when it was inspected. */
  present: boolean;
  reason: string;
}

export class WorktreeManager {
  private readonly database: Database;
  private readonly root: string;
  private readonly instanceId: string;
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly fetchTimeoutMs: number;
  private readonly gitTimeoutMs: number;
  private readonly env: Readonly<Record<string, string | undefined>>;
  /** One git command sequence at a time per clone, across processes too (several instances may share a clone). */
  private readonly queue = new CloneQueue();
  /** Paths whose `create` is between `git worktree add` and the insert: not orphans. */
  private readonly creating = new Set<string>();
  /** Increments on every create arrival and every fetch start, to tell which fetch is fresh enough for whom. */
  private sequence = 0;
  /** The last fetch of each (clone, branch): when it started (in `sequence`) and the sha it found. */
  private readonly fetches = new Map<string, { startedAt: number; sha: string }>();
  /** Each clone's git directory (`git rev-parse --absolute-git-dir`), asked once. */
  private readonly gitDirs = new Map<string, string>();
  /** WORKTREE_ROOT's real path, once known. */
  private realRoot: string | undefined;

  constructor(deps: WorktreeManagerDeps) {
    if (!path.isAbsolute(deps.root)) throw new Error(`WORKTREE_ROOT must be absolute, got ${deps.root}`);
    this.database = deps.database;
    this.root = path.resolve(deps.root);
    this.instanceId = deps.instanceId;
    this.log = deps.log.child({ component: "worktrees" });
    this.now = deps.now ?? (() => new Date());
    this.fetchTimeoutMs = deps.fetchTimeoutMs ?? 5 * 60_000;
    this.gitTimeoutMs = deps.gitTimeoutMs ?? 60_000;
    this.env = deps.env;
  }

  /**
   * Fetches the project's primary branch and adds a detached worktree of it at
   * `<root>/<project>/<formula>-<runId>`, verifies it, and records it `active`.
   *
   * Any failure throws (git failures as WorktreeError with git's message) and leaves
   * neither a directory nor a row behind; there is no fallback into the shared clone.
   * Calls for one clone are serialised; a fetch that started after a call arrived is
   * fresh enough for it, so a burst of runs of one project shares fetches.
   */
  async create(args: { runId: number; project: ProjectConfig; formula: string }): Promise<WorktreeRow> {
    const { runId, project, formula } = args;
    const log = this.log.child({ runId, project: project.name, formula });
    let dir: string;
    try {
      dir = worktreePath(this.root, project.name, formula, runId);
    } catch (error) {
      throw new WorktreeError(`could not make a worktree for run ${runId}: ${errorMessage(error)}`, {
        gitMessage: "",
        cause: error,
      });
    }
    if (this.creating.has(dir)) {
      throw new WorktreeError(`could not make a worktree for run ${runId}: ${dir} is already being created`, {
        gitMessage: "",
      });
    }
    const repo = path.resolve(project.repoPath);
    const arrival = ++this.sequence;
    this.creating.add(dir);
    let existed = true;
    let added = false;
    try {
      const projectDir = path.dirname(dir);
      await mkdir(projectDir, { recursive: true });
      // A symlinked project directory would put the worktree (and later deletions) elsewhere.
      if (!(await isInside(this.root, projectDir))) {
        throw new WorktreeError(
          `could not make a worktree for run ${runId}: ${projectDir} leads outside WORKTREE_ROOT`,
          {
            gitMessage: "",
          },
        );
      }
      existed = await exists(dir);
      // A managed clone (clone_url) that is missing, say on a fresh volume, is cloned first.
      if (project.cloneUrl) await ensureClone(project, { env: this.env, log });
      const sha = await this.queue.run(repo, async () => {
        const fetched = await this.fetchPrimary(project, arrival, runId);
        await git(repo, ["worktree", "add", "--quiet", "--detach", dir, fetched], {
          timeoutMs: this.gitTimeoutMs,
          env: this.env,
          doing: `add the worktree ${dir} for run ${runId}`,
        });
        added = true;
        return fetched;
      });
      const head = await worktreeHead(dir);
      if (head !== sha) {
        throw new WorktreeError(
          `could not make a worktree for run ${runId}: ${dir} ${head === undefined ? "is not a git worktree" : `has HEAD ${head}`} after git worktree add, expected ${sha}`,
          { gitMessage: "" },
        );
      }
      const row = await this.record(runId, project.name, formula, dir, log);
      log.info({ worktreeId: row.id, path: dir, sha }, "worktree created");
      return row;
    } catch (error) {
      if (added || (!existed && (await exists(dir)))) await this.discard(dir, repo, log);
      throw error;
    } finally {
      this.creating.delete(dir);
    }
  }

  /**
   * Records a just-made worktree `active`, retried while the database is out of reach: a
   * connection cut at this moment must not fail a run whose worktree is ready (the chaos
   * run saw exactly that). An attempt whose insert committed before its answer was lost
   * leaves the row the retry then finds by its path.
   */
  private async record(
    runId: number,
    project: string,
    formula: string,
    dir: string,
    log: Logger,
  ): Promise<WorktreeRow> {
    return retryWhileUnavailable(
      async () => {
        const [inserted] = await this.database.db
          .insert(worktrees)
          .values({
            runId,
            project,
            formula,
            path: dir,
            state: "active",
            instanceId: this.instanceId,
            createdAt: this.now(),
          })
          .onConflictDoNothing({ target: worktrees.path })
          .returning();
        if (inserted) return inserted;
        const [existing] = await this.database.db.select().from(worktrees).where(eq(worktrees.path, dir));
        if (existing?.runId === runId && existing.state === "active") return existing;
        throw new WorktreeError(`could not record the worktree of run ${runId}: ${dir} is recorded already`, {
          gitMessage: "",
        });
      },
      { log, what: `record the worktree of run ${runId}`, giveUpAfterMs: 2 * 60_000 },
    );
  }

  /**
   * Deletes the worktree's directory, prunes it from the clone (`project`'s, else the one
   * its `.git` file names) and records it removed by `by`. Idempotent: a removed row is
   * returned as it is. This is the run's own clean-up, so it removes an active worktree
   * without asking about the run; the API checks that itself (or uses `purge({ids})`,
   * which does). Refusals (another instance's worktree, a path outside WORKTREE_ROOT) are
   * AppError `conflict`; a missing row is `not_found`.
   */
  async remove(worktree: WorktreeRow, by: WorktreeRemover, project?: ProjectConfig): Promise<WorktreeRow> {
    const current = await this.get(worktree.id);
    if (!current) throw new AppError({ code: "not_found", message: `worktree ${worktree.id} does not exist` });
    if (current.state === "removed") return current;
    const log = this.log.child({ worktreeId: current.id, runId: current.runId, project: current.project });
    if (current.instanceId !== this.instanceId) {
      throw new AppError({
        code: "conflict",
        message: `worktree ${current.id} lives on instance ${current.instanceId}; remove it there`,
        details: { id: current.id, instance_id: current.instanceId },
      });
    }
    const outcome = await this.deleteDir(current.path);
    if (outcome.kind === "kept") {
      throw new AppError({
        code: "conflict",
        message: `will not delete ${current.path} of worktree ${current.id}: ${outcome.reason}`,
        details: { id: current.id },
      });
    }
    await this.prune(this.pruneTargets([current], project ? [project] : []), log);
    const [row] = await this.database.db
      .update(worktrees)
      .set({ state: "removed", removedAt: this.now(), removedBy: by })
      .where(and(eq(worktrees.id, current.id), inArray(worktrees.state, ["active", "preserved"])))
      .returning();
    log.info({ path: current.path, by, gone: outcome.kind === "gone" }, "worktree removed");
    return row ?? ((await this.get(current.id)) as WorktreeRow);
  }

  /**
   * Keeps the worktree for inspection: `preserved` with `reason` (the run outcome),
   * expiring `retentionMs` from now, its size measured once now (not on every listing).
   * Preserving a preserved worktree again renews reason and expiry; a removed one is a conflict.
   */
  async preserve(worktree: WorktreeRow, reason: string, retentionMs: number): Promise<WorktreeRow> {
    if (!Number.isFinite(retentionMs) || retentionMs < 0)
      throw new RangeError(`retention must be a non-negative number of ms, got ${retentionMs}`);
    const log = this.log.child({ worktreeId: worktree.id, runId: worktree.runId, project: worktree.project });
    let sizeBytes: number | null = null;
    try {
      sizeBytes = (await diskUsage(worktree.path)) ?? null;
    } catch (error) {
      // The size is informative only; a walk that fails must not stop the worktree being kept.
      log.warn({ err: error, path: worktree.path }, "could not measure a preserved worktree");
    }
    const now = this.now();
    const [row] = await this.database.db
      .update(worktrees)
      .set({
        state: "preserved",
        reason,
        preservedAt: now,
        expiresAt: new Date(now.getTime() + retentionMs),
        sizeBytes,
      })
      .where(and(eq(worktrees.id, worktree.id), inArray(worktrees.state, ["active", "preserved"])))
      .returning();
    if (!row) {
      const current = await this.get(worktree.id);
      if (!current) throw new AppError({ code: "not_found", message: `worktree ${worktree.id} does not exist` });
      throw new AppError({
        code: "conflict",
        message: `worktree ${worktree.id} is already removed`,
        details: { id: worktree.id },
      });
    }
    log.info({ path: row.path, reason, expiresAt: row.expiresAt, sizeBytes }, "worktree preserved");
    return row;
  }

  /**
   * Removes preserved worktrees of this instance in bulk: selects them, deletes every
   * directory, then runs ONE `git worktree prune` per clone, then marks the rows removed.
   * Kept (and why): worktrees whose run is still queued/running/escalated, those of
   * another instance, paths outside WORKTREE_ROOT (as written or through a symlink).
   * A directory already gone is simply marked removed. Nothing to purge is a success.
   */
  async purge(opts: PurgeOptions): Promise<PurgeResult> {
    const now = this.now();
    const log = this.log.child({ purgeBy: opts.by, dryRun: opts.dryRun === true });
    const olderThanMs =
      opts.olderThanMs ?? (opts.ids === undefined && !opts.expiredOnly ? DEFAULT_PURGE_AGE_MS : undefined);
    if (olderThanMs !== undefined && (!Number.isFinite(olderThanMs) || olderThanMs < 0)) {
      throw new RangeError(`olderThanMs must be a non-negative number, got ${olderThanMs}`);
    }
    const cutoff = olderThanMs === undefined ? undefined : new Date(now.getTime() - olderThanMs);

    const selected = await this.selectForPurge(opts.ids, now, opts.expiredOnly === true, cutoff);
    const kept: PurgeEntry[] = [];
    const removals: Removal[] = [];
    if (opts.ids) {
      const found = new Set(selected.map((s) => s.row.id));
      for (const id of new Set(opts.ids)) {
        if (!found.has(id))
          kept.push({
            id,
            run_id: null,
            project: "",
            formula: "",
            path: "",
            reason: "no such worktree",
            preserved_at: null,
            expires_at: null,
          });
      }
    }
    await mapLimit(selected, DELETE_CONCURRENCY, async ({ row, runStatus }) => {
      const keep = (reason: string) => kept.push(entry(row, reason));
      if (row.state === "removed")
        return keep(`already removed${row.removedAt ? ` at ${row.removedAt.toISOString()}` : ""}`);
      if (row.state === "active") return keep(`worktree is active${row.runId === null ? "" : ` (run ${row.runId})`}`);
      if (opts.expiredOnly && (row.expiresAt === null || row.expiresAt > now)) {
        return keep(row.expiresAt === null ? "has no expiry" : `expires at ${row.expiresAt.toISOString()}`);
      }
      if (cutoff && (row.preservedAt === null || row.preservedAt > cutoff)) {
        return keep(`preserved less than ${formatDuration(olderThanMs as number)} ago`);
      }
      if (row.instanceId !== this.instanceId) return keep(`lives on instance ${row.instanceId}`);
      const busy = inUse(row.runId, runStatus);
      if (busy) return keep(busy);
      const check = await this.deleteDir(row.path, { inspect: true });
      if (check.kind === "kept") return keep(check.reason);
      const why = opts.ids
        ? "requested"
        : opts.expiredOnly
          ? `expired at ${row.expiresAt?.toISOString()}`
          : `preserved more than ${formatDuration(olderThanMs as number)} ago`;
      removals.push({
        row,
        present: check.kind === "deleted",
        reason: check.kind === "gone" ? `${why}; directory already gone` : why,
      });
    });
    removals.sort((a, b) => a.row.id - b.row.id);
    kept.sort((a, b) => a.id - b.id);

    if (opts.dryRun || removals.length === 0) {
      if (removals.length > 0) log.info({ wouldPurge: removals.length, kept: kept.length }, "worktree purge dry run");
      return { purged: removals.map((r) => entry(r.row, r.reason)), kept };
    }

    // 1. every directory, by descriptor below the root (checked again: the disk may have changed since)
    const targets = this.pruneTargets(
      removals.map((r) => r.row),
      opts.projects,
    );
    const deleted: Removal[] = [];
    await mapLimit(removals, DELETE_CONCURRENCY, async (removal) => {
      if (!removal.present) return void deleted.push(removal);
      try {
        const outcome = await this.deleteDir(removal.row.path);
        if (outcome.kind === "kept") {
          log.warn({ path: removal.row.path, worktreeId: removal.row.id, reason: outcome.reason }, "worktree kept");
          kept.push(entry(removal.row, outcome.reason));
        } else
          deleted.push(
            outcome.kind === "gone" ? { ...removal, reason: `${removal.reason}; directory already gone` } : removal,
          );
      } catch (error) {
        log.error(
          { err: error, path: removal.row.path, worktreeId: removal.row.id },
          "could not delete a worktree directory",
        );
        kept.push(entry(removal.row, `could not delete: ${errorMessage(error)}`));
      }
    });
    // 2. one prune per clone
    await this.prune(targets, log);
    // 3. the rows, in one statement (per few thousand ids)
    const removedAt = this.now();
    const ids = deleted.map((d) => d.row.id);
    for (let i = 0; i < ids.length; i += ID_CHUNK) {
      await this.database.db
        .update(worktrees)
        .set({ state: "removed", removedAt, removedBy: opts.by })
        .where(and(inArray(worktrees.id, ids.slice(i, i + ID_CHUNK)), eq(worktrees.state, "preserved")));
    }
    deleted.sort((a, b) => a.row.id - b.row.id);
    kept.sort((a, b) => a.id - b.id);
    log.info({ purged: deleted.length, kept: kept.length, clones: targets.length }, "worktrees purged");
    return { purged: deleted.map((d) => entry(d.row, d.reason)), kept };
  }

  /**
   * Puts every worktree directory of this instance back on the record after a crash of
   * the server itself:
   * - a directory `<root>/<project>/<name>` with no row (the server died between
   *   `git worktree add` and the insert) gets a `preserved` row, reason "adopted",
   *   expiring `retentionMs` from now, with the run id of `<formula>-<runId>` when that
   *   run exists for the same project and formula;
   * - a row `active` on this instance whose run is over (or gone) is preserved, reason "leaked".
   * Every project directory under the root is scanned, configured in `projects` or not,
   * so leftovers of a project removed from the config still expire. Returns the rows it
   * adopted or preserved.
   */
  async adoptOrphans(projects: readonly ProjectConfig[], retentionMs: number): Promise<WorktreeRow[]> {
    if (!Number.isFinite(retentionMs) || retentionMs < 0)
      throw new RangeError(`retention must be a non-negative number of ms, got ${retentionMs}`);
    const configured = new Set(projects.map((p) => p.name));
    const found = (await this.scanRoot()).filter((c) => !this.creating.has(c.path));
    const result: WorktreeRow[] = [];

    if (found.length > 0) {
      const recorded = new Map<string, WorktreeRow>();
      for (const chunk of chunks(
        found.map((c) => c.path),
        ID_CHUNK,
      )) {
        for (const row of await this.database.db.select().from(worktrees).where(inArray(worktrees.path, chunk)))
          recorded.set(row.path, row);
      }
      const orphans = found.filter(
        (c) => recorded.get(c.path)?.state !== "active" && recorded.get(c.path)?.state !== "preserved",
      );
      const runIds = [
        ...new Set(
          orphans.map((o) => parseWorktreeDirName(o.name)?.runId).filter((id): id is number => id !== undefined),
        ),
      ];
      const knownRuns = new Map<
        number,
        { project: string; formula: string; status: RunStatus; instanceId: string | null }
      >();
      for (const chunk of chunks(runIds, ID_CHUNK)) {
        const rows = await this.database.db
          .select({
            id: runs.id,
            project: runs.project,
            formula: runs.formula,
            status: runs.status,
            instanceId: runs.instanceId,
          })
          .from(runs)
          .where(inArray(runs.id, chunk));
        for (const r of rows) knownRuns.set(r.id, r);
      }
      const now = this.now();
      const expiresAt = new Date(now.getTime() + retentionMs);
      await mapLimit(orphans, DELETE_CONCURRENCY, async (orphan) => {
        const parsed = parseWorktreeDirName(orphan.name);
        const run = parsed ? knownRuns.get(parsed.runId) : undefined;
        const runId =
          parsed && run && run.project === orphan.project && run.formula === parsed.formula ? parsed.runId : null;
        // The server died between `git worktree add` and the insert of a run it still
        // owns: the directory is that run's worktree, in use, for its takeover to reuse.
        const inUse =
          runId !== null &&
          run !== undefined &&
          run.instanceId === this.instanceId &&
          (run.status === "running" || run.status === "escalated");
        const sizeBytes = inUse ? null : ((await diskUsage(orphan.path).catch(() => undefined)) ?? null);
        const values = {
          runId,
          project: orphan.project,
          formula: parsed?.formula ?? orphan.name,
          path: orphan.path,
          state: inUse ? ("active" as const) : ("preserved" as const),
          reason: "adopted",
          instanceId: this.instanceId,
          preservedAt: inUse ? null : now,
          expiresAt: inUse ? null : expiresAt,
          sizeBytes,
        };
        const previous = recorded.get(orphan.path);
        // A row marked removed whose directory is back (or never went): that row is the record again.
        const [row] = previous
          ? await this.database.db
              .update(worktrees)
              .set({ ...values, removedAt: null, removedBy: null })
              .where(and(eq(worktrees.id, previous.id), eq(worktrees.state, "removed")))
              .returning()
          : await this.database.db
              .insert(worktrees)
              .values({ ...values, createdAt: now })
              .onConflictDoNothing({ target: worktrees.path })
              .returning();
        if (!row) return;
        result.push(row);
        // One line per directory only at debug: a start after a crash may find thousands
        // (housekeeping logs one line with the count).
        this.log.debug(
          { worktreeId: row.id, path: row.path, runId, configured: configured.has(orphan.project) },
          "adopted a worktree directory that had no record",
        );
      });
    }

    const leaked = await this.database.db
      .select({ worktree: worktrees })
      .from(worktrees)
      .leftJoin(runs, eq(runs.id, worktrees.runId))
      .where(
        and(
          eq(worktrees.state, "active"),
          eq(worktrees.instanceId, this.instanceId),
          or(isNull(runs.id), inArray(runs.status, [...FINAL_RUN_STATUSES])),
        ),
      );
    for (const { worktree } of leaked) {
      if (this.creating.has(worktree.path)) continue;
      const row = await this.preserve(worktree, "leaked", retentionMs);
      this.log.debug(
        { worktreeId: row.id, path: row.path, runId: row.runId },
        "preserved a worktree left active by a finished run",
      );
      result.push(row);
    }
    return result.sort((a, b) => a.id - b.id);
  }

  /**
   * The worktree of a run this instance left running, recorded `active` when its directory
   * is there without an active row (the server died between `git worktree add` and the
   * insert). The takeover calls it for each run it resumes, so it never waits for the
   * (background) scan of the whole root. Undefined when there is no such directory.
   */
  async adoptRunDirectory(run: { id: number; project: string; formula: string }): Promise<WorktreeRow | undefined> {
    let dir: string;
    try {
      dir = worktreePath(this.root, run.project, run.formula, run.id);
    } catch {
      return undefined;
    }
    const info = await lstat(dir).catch(() => undefined);
    if (!info?.isDirectory() || this.creating.has(dir)) return undefined;
    const values = {
      runId: run.id,
      project: run.project,
      formula: run.formula,
      path: dir,
      state: "active" as const,
      reason: "adopted",
      instanceId: this.instanceId,
      preservedAt: null,
      expiresAt: null,
      removedAt: null,
      removedBy: null,
    };
    const [inserted] = await this.database.db
      .insert(worktrees)
      .values({ ...values, createdAt: this.now() })
      .onConflictDoNothing({ target: worktrees.path })
      .returning();
    if (inserted) return inserted;
    // A row for the path exists: taken back only when it says the directory is gone.
    const [revived] = await this.database.db
      .update(worktrees)
      .set(values)
      .where(and(eq(worktrees.path, dir), eq(worktrees.state, "removed")))
      .returning();
    return revived;
  }

  /** Rows for the API, newest first; no disk access (size was measured when preserved). */
  async list(filter: WorktreeListFilter = {}): Promise<WorktreeRow[]> {
    const wanted =
      filter.limit !== undefined && Number.isFinite(filter.limit) ? Math.trunc(filter.limit) : DEFAULT_LIST_LIMIT;
    const limit = Math.min(MAX_LIST_LIMIT, Math.max(1, wanted));
    const conditions: SQL[] = [];
    if (filter.state !== undefined) conditions.push(eq(worktrees.state, filter.state));
    if (filter.project !== undefined) conditions.push(eq(worktrees.project, filter.project));
    if (filter.formula !== undefined) conditions.push(eq(worktrees.formula, filter.formula));
    if (filter.runId !== undefined) conditions.push(eq(worktrees.runId, filter.runId));
    if (filter.beforeId !== undefined) conditions.push(lt(worktrees.id, filter.beforeId));
    return this.database.db
      .select()
      .from(worktrees)
      .where(conditions.length > 0 ? and(...conditions) : undefined)
      .orderBy(desc(worktrees.id))
      .limit(limit);
  }

  /**
   * The same rows as `list`, already serialised as a JSON array by the database (the
   * API's field names, ISO 8601 times in UTC). Listing 10,000 records this way takes a
   * third of the time on the embedded database: no per-row objects in JavaScript.
   */
  async listJson(filter: WorktreeListFilter = {}): Promise<{ json: string; count: number; lastId: number | null }> {
    if (this.database.kind === "postgres") {
      // PostgreSQL builds JSON slowly (json_agg of 10,000 rows: ~150 ms here, ~200 ms with
      // the time formatting); postgres.js reads the rows and JavaScript writes the JSON in
      // about half that. PGlite is the other way round.
      const rows = await this.list(filter);
      return { json: JSON.stringify(rows.map(worktreeJson)), count: rows.length, lastId: rows.at(-1)?.id ?? null };
    }
    const wanted =
      filter.limit !== undefined && Number.isFinite(filter.limit) ? Math.trunc(filter.limit) : DEFAULT_LIST_LIMIT;
    const limit = Math.min(MAX_LIST_LIMIT, Math.max(1, wanted));
    const conditions: SQL[] = [];
    if (filter.state !== undefined) conditions.push(sql`state = ${filter.state}`);
    if (filter.project !== undefined) conditions.push(sql`project = ${filter.project}`);
    if (filter.formula !== undefined) conditions.push(sql`formula = ${filter.formula}`);
    if (filter.runId !== undefined) conditions.push(sql`run_id = ${filter.runId}`);
    if (filter.beforeId !== undefined) conditions.push(sql`id < ${filter.beforeId}`);
    const where = conditions.length > 0 ? sql`where ${sql.join(conditions, sql` and `)}` : sql``;
    const iso = (column: string) => sql.raw(`to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`);
    const [row] = await this.database.rows<{ json: string; count: number; last_id: number | null }>(sql`
      select
        coalesce(json_agg(json_build_object(
          'id', id, 'run_id', run_id, 'project', project, 'formula', formula, 'path', path,
          'state', state, 'reason', reason, 'instance_id', instance_id, 'size_bytes', size_bytes,
          'created_at', ${iso("created_at")}, 'preserved_at', ${iso("preserved_at")},
          'expires_at', ${iso("expires_at")}, 'removed_at', ${iso("removed_at")}, 'removed_by', removed_by
        ) order by id desc), '[]')::text as json,
        count(*)::int as count,
        min(id)::int as last_id
      from (select * from worktrees ${where} order by id desc limit ${limit}) page`);
    return { json: row?.json ?? "[]", count: row?.count ?? 0, lastId: row?.last_id ?? null };
  }

  async get(id: number): Promise<WorktreeRow | undefined> {
    const [row] = await this.database.db.select().from(worktrees).where(eq(worktrees.id, id));
    return row;
  }

  /** Fetches `origin/<primary>` unless a fetch that started after `arrival` already did; returns its sha. */
  private async fetchPrimary(project: ProjectConfig, arrival: number, runId: number): Promise<string> {
    const repo = path.resolve(project.repoPath);
    const branch = project.primaryBranch;
    const key = `${repo}\0${branch}`;
    const last = this.fetches.get(key);
    if (last && last.startedAt > arrival) return last.sha;
    const startedAt = ++this.sequence;
    const tracking = `refs/remotes/origin/${branch}`;
    // A FETCH_HEAD left by an earlier fetch must never pass for this one's, whatever git decides to write.
    const fetchHead = await this.fetchHeadFile(repo, runId);
    await rm(fetchHead, { force: true });
    // An explicit refspec: the tracking ref moves even in a clone whose configured refspec would not move it.
    const credentials = gitCredentials(project);
    await git(
      repo,
      [...credentials.args, "fetch", "--quiet", "--no-tags", "origin", `+refs/heads/${branch}:${tracking}`],
      {
        timeoutMs: this.fetchTimeoutMs,
        env: { ...this.env, ...credentials.env },
        doing: `fetch origin/${branch} for run ${runId}`,
      },
    );
    // The sha the fetch just wrote to FETCH_HEAD (a file read) rather than a third git process.
    const sha =
      (await fetchedSha(fetchHead, branch)) ??
      (await git(repo, ["rev-parse", "--verify", `${tracking}^{commit}`], {
        timeoutMs: this.gitTimeoutMs,
        env: this.env,
        doing: `resolve origin/${branch} for run ${runId}`,
      }));
    this.fetches.set(key, { startedAt, sha });
    return sha;
  }

  /** The clone's FETCH_HEAD file; its git directory is asked of git once per clone. */
  private async fetchHeadFile(repo: string, runId: number): Promise<string> {
    let gitDir = this.gitDirs.get(repo);
    if (gitDir === undefined) {
      gitDir = await git(repo, ["rev-parse", "--absolute-git-dir"], {
        timeoutMs: this.gitTimeoutMs,
        env: this.env,
        doing: `locate the git directory for run ${runId}`,
      });
      this.gitDirs.set(repo, gitDir);
    }
    return path.join(gitDir, "FETCH_HEAD");
  }

  /** Undoes a half-made worktree; failures are logged, the error that caused the undo is what the caller sees. */
  private async discard(dir: string, repo: string, log: Logger): Promise<void> {
    try {
      const outcome = await this.deleteDir(dir);
      if (outcome.kind === "kept")
        log.error({ path: dir, reason: outcome.reason }, "left a half-made worktree in place");
      await this.prune([{ key: repo, repo }], log);
    } catch (error) {
      log.error({ err: error, path: dir }, "could not clean up a half-made worktree");
    }
  }

  /** WORKTREE_ROOT's real path, resolved once (the first time it exists) and trusted from then on. */
  private async rootReal(): Promise<string | undefined> {
    if (this.realRoot === undefined) {
      try {
        this.realRoot = await realpath(this.root);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw error;
      }
    }
    return this.realRoot;
  }

  /**
   * Deletes (or with `inspect`, checks) a worktree directory. Only `<root>/<project>/<name>`
   * as written is ever a worktree; the walk itself goes by descriptor (deleteBelowRoot).
   */
  private async deleteDir(candidate: string, options: { inspect?: boolean } = {}): Promise<DeleteOutcome> {
    const resolved = path.resolve(candidate);
    if (resolved === this.root) return { kind: "kept", reason: "is WORKTREE_ROOT itself" };
    if (!isLexicallyInside(this.root, resolved)) return { kind: "kept", reason: "outside WORKTREE_ROOT" };
    const segments = path.relative(this.root, resolved).split(path.sep);
    if (segments.length !== 2 || !segments.every(isEntryName)) {
      return { kind: "kept", reason: "not a worktree path (<WORKTREE_ROOT>/<project>/<name>)" };
    }
    const realRoot = await this.rootReal();
    if (realRoot === undefined) return { kind: "gone" };
    return deleteBelowRoot(realRoot, segments, options);
  }

  /**
   * The clones to prune once `rows` are deleted: the configured clone of each row's
   * project. Never a clone named by a worktree's `.git` file: that file is the agent's to
   * write, and pointing it at another repository must not make the server prune there.
   * Rows of a project no longer configured leave their clone's stale entries to git's own gc.
   */
  private pruneTargets(rows: readonly WorktreeRow[], projects: readonly ProjectConfig[]): PruneTarget[] {
    const names = new Set(rows.map((r) => r.project));
    const targets = new Map<string, PruneTarget>();
    for (const project of projects) {
      if (!names.has(project.name)) continue;
      const repo = path.resolve(project.repoPath);
      targets.set(repo, { key: repo, repo });
    }
    return [...targets.values()];
  }

  /** `git worktree prune` in each clone, in parallel across clones; a failure is logged (the rows still describe the disk). */
  private async prune(targets: readonly PruneTarget[], log: Logger): Promise<void> {
    await Promise.all(
      targets.map(async (target) => {
        if (!(await exists(target.repo))) return;
        try {
          await this.queue.run(target.key, () =>
            git(target.repo, ["worktree", "prune"], {
              timeoutMs: this.gitTimeoutMs,
              env: this.env,
              doing: "prune deleted worktrees",
            }),
          );
        } catch (error) {
          log.error(
            { err: error, repo: target.repo },
            "git worktree prune failed; stale entries stay listed until the next prune",
          );
        }
      }),
    );
  }

  private async selectForPurge(
    ids: readonly number[] | undefined,
    now: Date,
    expiredOnly: boolean,
    cutoff: Date | undefined,
  ): Promise<{ row: WorktreeRow; runStatus: RunStatus | null }[]> {
    const query = (where: SQL | undefined) =>
      this.database.db
        .select({ row: worktrees, runStatus: runs.status })
        .from(worktrees)
        .leftJoin(runs, eq(runs.id, worktrees.runId))
        .where(where)
        .orderBy(asc(worktrees.id));
    if (ids !== undefined) {
      const out: { row: WorktreeRow; runStatus: RunStatus | null }[] = [];
      // Every requested id is looked at whatever its state, so the report can say why one was kept.
      for (const chunk of chunks([...new Set(ids)], ID_CHUNK)) out.push(...(await query(inArray(worktrees.id, chunk))));
      return out;
    }
    const conditions: SQL[] = [eq(worktrees.state, "preserved")];
    if (expiredOnly) conditions.push(lte(worktrees.expiresAt, now));
    if (cutoff) conditions.push(lte(worktrees.preservedAt, cutoff));
    return query(and(...conditions));
  }

  /** Every `<root>/<project>/<name>` directory on disk (symlinks and files are not worktrees and are skipped). */
  private async scanRoot(): Promise<{ project: string; name: string; path: string }[]> {
    const out: { project: string; name: string; path: string }[] = [];
    for (const projectEntry of await readdirOrEmpty(this.root)) {
      if (!projectEntry.isDirectory()) continue;
      const projectDir = path.join(this.root, projectEntry.name);
      for (const entry of await readdirOrEmpty(projectDir)) {
        const full = path.join(projectDir, entry.name);
        if (!entry.isDirectory()) {
          this.log.warn({ path: full }, "not a directory under WORKTREE_ROOT; left alone");
          continue;
        }
        if (!isSafeSegment(projectEntry.name)) {
          this.log.warn(
            { path: full },
            "directory under WORKTREE_ROOT with a name no project can have; adopted anyway",
          );
        }
        out.push({ project: projectEntry.name, name: entry.name, path: full });
      }
    }
    return out;
  }
}

/**
 * The commit of `branch` in a FETCH_HEAD the fetch just wrote, or undefined when the file is
 * missing or does not name that branch exactly once: then the caller asks git instead.
 * Read instead of `git rev-parse` to save a process per run; safe because fetches of one
 * clone are serialised and the file was removed before the fetch.
 */
async function fetchedSha(fetchHead: string, branch: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(fetchHead, "utf8");
  } catch {
    return undefined;
  }
  const shas = text
    .split("\n")
    .map((line) => line.split("\t"))
    .filter((fields) => fields.length >= 3 && (fields[2] as string).startsWith(`branch '${branch}' of `))
    .map((fields) => fields[0] as string);
  return shas.length === 1 && /^[0-9a-f]{40}([0-9a-f]{24})?$/.test(shas[0] as string) ? shas[0] : undefined;
}

function inUse(runId: number | null, status: RunStatus | null): string | undefined {
  if (runId === null || status === null || !IN_USE_RUN_STATUSES.includes(status)) return undefined;
  return `run ${runId} is still running${status === "running" ? "" : ` (${status})`}`;
}

function entry(row: WorktreeRow, reason: string): PurgeEntry {
  return {
    id: row.id,
    run_id: row.runId,
    project: row.project,
    formula: row.formula,
    path: row.path,
    reason,
    preserved_at: row.preservedAt?.toISOString() ?? null,
    expires_at: row.expiresAt?.toISOString() ?? null,
  };
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

async function readdirOrEmpty(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

/** A worktree as the API shows it (listJson writes the same fields on PGlite). */
export function worktreeJson(w: Worktree) {
  return {
    id: w.id,
    run_id: w.runId,
    project: w.project,
    formula: w.formula,
    path: w.path,
    state: w.state,
    reason: w.reason,
    instance_id: w.instanceId,
    size_bytes: w.sizeBytes,
    created_at: w.createdAt.toISOString(),
    preserved_at: w.preservedAt?.toISOString() ?? null,
    expires_at: w.expiresAt?.toISOString() ?? null,
    removed_at: w.removedAt?.toISOString() ?? null,
    removed_by: w.removedBy,
  };
}
