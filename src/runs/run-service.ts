import path from "node:path";
import { and, asc, desc, eq, gt, inArray, lt, max, type SQL, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  escalationReplies,
  escalations,
  FINAL_RUN_STATUSES,
  type InstanceRequest,
  phases,
  type Run,
  type RunStatus,
  runs,
  sessions,
  worktrees,
} from "../../db/schema/index.js";
import type { Config } from "../config.js";
import { AppError } from "../errors.js";
import type { OwnerRequests } from "../fleet/owner-requests.js";
import { formatProblem } from "../formulas/problems.js";
import type { FormulaStore } from "../formulas/store.js";
import type { Logger } from "../logger.js";
import type { SecretRegistry } from "../secrets.js";
import type { WorktreeManager } from "../worktrees/worktree-manager.js";
import type { RunEvent } from "./run-event.js";
import { activeWorktreeOf, settleWorktree } from "./run-executor.js";
import { runPaths } from "./run-paths.js";
import { enqueueRun } from "./run-queue.js";
import type { RunWorker } from "./run-worker.js";

export interface DispatchRequest {
  formula: string;
  project?: string | undefined;
  issue?: number | undefined;
  /** Who asked, kept as the trigger reference. */
  actor: string;
}

export interface RunFilter {
  status?: RunStatus[] | undefined;
  formula?: string | undefined;
  project?: string | undefined;
  limit?: number | undefined;
  cursor?: string | undefined;
}

const encodeCursor = (id: number) => Buffer.from(`run:${id}`).toString("base64url");
function decodeCursor(cursor: string): number {
  // At most 15 digits: a safe integer, inside the bigint column's range.
  const match = /^run:(\d{1,15})$/.exec(Buffer.from(cursor, "base64url").toString("utf8"));
  if (!match) throw new AppError({ code: "bad_request", message: "cursor is not one this server gave out" });
  return Number(match[1]);
}

/** A run as the API shows it (DESIGN "A run in JSON"), secret values scrubbed from its text. */
export function runJson(run: Run, secrets: Pick<SecretRegistry, "scrub">) {
  return {
    id: run.id,
    formula: run.formula,
    project: run.project,
    status: run.status,
    skip_reason: run.skipReason,
    issue: run.issue,
    trigger: { kind: run.triggerKind, ref: run.triggerRef },
    attempt: run.attempt,
    queued_at: run.queuedAt.toISOString(),
    started_at: run.startedAt?.toISOString() ?? null,
    finished_at: run.finishedAt?.toISOString() ?? null,
    phase: run.phase,
    detail: run.detail === null ? null : secrets.scrub(run.detail),
    instance_id: run.instanceId,
    concurrency_key: run.concurrencyKey,
    cancel_requested: run.cancelRequestedAt !== null,
    /** Whether the agent ran in the sandbox; null until a session started. */
    sandboxed: run.sandboxed,
    sandbox_note: run.sandboxNote,
    /** The formula handed the raw forge token to the agent (`[sandbox] forge_token = true`). */
    forge_token: run.forgeToken,
  };
}

export type RunJson = ReturnType<typeof runJson>;

/** The run operations behind the REST API and the CLI. */
/** One change of a run, as the live feed sends it. */
export interface RunChange {
  id: number;
  status: Run["status"];
  phase: string | null;
  updatedAt: Date;
}

export class RunService {
  constructor(
    private readonly deps: {
      database: Database;
      config: Config;
      formulas: FormulaStore;
      worktrees: WorktreeManager;
      worker: RunWorker | undefined;
      secrets: SecretRegistry;
      log: Logger;
      /** This instance; a run running on another one is cancelled by a request to it. */
      instanceId?: string;
      requests?: Pick<OwnerRequests, "ask">;
    },
  ) {}

  /** Queues a run of a formula that allows dispatch (`[on] dispatch = true`). */
  async dispatch(request: DispatchRequest): Promise<Run> {
    const formula = this.deps.formulas.get(request.formula);
    if (!formula) {
      // A file that is there but failed to load is not "unknown": say what is wrong with it.
      const broken = this.deps.formulas
        .problems()
        .filter((p) => p.severity === "error" && path.basename(p.file, ".toml") === request.formula);
      if (broken.length > 0) {
        throw new AppError({
          code: "conflict",
          message:
            `formula "${request.formula}" has errors: ${broken.map((p) => `${p.field}: ${p.message}`).join("; ")} ` +
            "(fix the file, then `formula-runner formulas reload`)",
          details: { problems: broken.map(formatProblem) },
        });
      }
      const known = this.deps.formulas.list().map((f) => f.name);
      throw new AppError({
        code: "not_found",
        message: `no formula "${request.formula}"${known.length > 0 ? ` (known: ${known.join(", ")})` : ""}`,
      });
    }
    if (!formula.on.dispatch) {
      throw new AppError({
        code: "forbidden",
        message: `formula "${formula.name}" does not allow dispatch ([on] dispatch = true)`,
      });
    }
    const projects = this.deps.config.projects;
    let projectName = request.project;
    if (projectName === undefined) {
      if (projects.length !== 1) {
        throw new AppError({
          code: "bad_request",
          message:
            projects.length === 0
              ? "no projects are configured (add [[projects]] to formula-runner.toml)"
              : `project is required: one of ${projects.map((p) => p.name).join(", ")}`,
        });
      }
      projectName = projects[0]?.name as string;
    }
    if (!projects.some((p) => p.name === projectName)) {
      throw new AppError({ code: "not_found", message: `no project "${projectName}"` });
    }
    const event: RunEvent = { kind: "dispatch", sender: request.actor };
    const run = await enqueueRun(this.deps.database.db, {
      formula,
      project: projectName,
      issue: request.issue,
      trigger: { kind: "dispatch", ref: request.actor },
      event,
    });
    this.deps.log.info(
      { runId: run.id, formula: formula.name, project: projectName, actor: request.actor },
      "run dispatched",
    );
    this.deps.worker?.notify();
    return run;
  }

  async list(filter: RunFilter): Promise<{ runs: Run[]; nextCursor: string | null }> {
    const limit = filter.limit ?? 50;
    const conditions: SQL[] = [];
    if (filter.status && filter.status.length > 0) conditions.push(inArray(runs.status, filter.status));
    if (filter.formula) conditions.push(eq(runs.formula, filter.formula));
    if (filter.project) conditions.push(eq(runs.project, filter.project));
    if (filter.cursor) conditions.push(lt(runs.id, decodeCursor(filter.cursor)));
    const rows = await this.deps.database.db
      .select()
      .from(runs)
      .where(conditions.length > 0 ? and(...conditions) : undefined)
      .orderBy(desc(runs.id))
      .limit(limit + 1);
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return { runs: page, nextCursor: rows.length > limit && last ? encodeCursor(last.id) : null };
  }

  /**
   * Runs whose row changed after `since` (queued, a phase, a status), oldest change first,
   * compared in the database's clock: the dashboard's live feed. `updated_at` moves with
   * every state change of a run on any instance.
   */
  async changedSince(since: Date, limit: number): Promise<RunChange[]> {
    const rows = await this.deps.database.db
      .select({ id: runs.id, status: runs.status, phase: runs.phase, updatedAt: runs.updatedAt })
      .from(runs)
      .where(gt(runs.updatedAt, since))
      .orderBy(asc(runs.updatedAt), asc(runs.id))
      .limit(limit);
    return rows.map((r) => ({ ...r, id: Number(r.id) }));
  }

  /** When a run last changed, in the database's clock (the epoch before the first run). */
  async lastChange(): Promise<Date> {
    const [row] = await this.deps.database.db.select({ at: max(runs.updatedAt) }).from(runs);
    return row?.at ?? new Date(0);
  }

  /** The stored hash of a run's token while its agent runs (a token is worthless otherwise). */
  async liveTokenHash(id: number): Promise<string | undefined> {
    if (!Number.isSafeInteger(id)) return undefined;
    const [row] = await this.deps.database.db
      .select({ hash: runs.tokenHash })
      .from(runs)
      .where(and(eq(runs.id, id), eq(runs.status, "running")));
    return row?.hash ?? undefined;
  }

  /**
   * Agent turns and cost summed over each run's sessions, for a page of runs (one grouped
   * query); a run whose agent reported neither is absent from the map.
   */
  async totals(ids: readonly number[]): Promise<Map<number, { numTurns: number | null; costUsd: number | null }>> {
    if (ids.length === 0) return new Map();
    const rows = await this.deps.database.db
      .select({
        runId: sessions.runId,
        numTurns: sql<number | null>`sum(${sessions.numTurns})::int`,
        costUsd: sql<number | null>`sum(${sessions.costUsd})::float8`,
      })
      .from(sessions)
      .where(inArray(sessions.runId, [...ids]))
      .groupBy(sessions.runId);
    return new Map(
      rows
        .filter((r) => r.numTurns !== null || r.costUsd !== null)
        .map((r) => [
          Number(r.runId),
          {
            numTurns: r.numTurns === null ? null : Number(r.numTurns),
            costUsd: r.costUsd === null ? null : Number(r.costUsd),
          },
        ]),
    );
  }

  async get(id: number): Promise<Run> {
    const [run] = await this.deps.database.db.select().from(runs).where(eq(runs.id, id));
    if (!run) throw new AppError({ code: "not_found", message: `no run ${id}` });
    return run;
  }

  /** The run with its phases, sessions, worktree and escalations. */
  async detail(id: number) {
    const run = await this.get(id);
    const { db } = this.deps.database;
    const [phaseRows, sessionRows, worktreeRows, escalationRows] = await Promise.all([
      db.select().from(phases).where(eq(phases.runId, id)).orderBy(asc(phases.id)),
      db.select().from(sessions).where(eq(sessions.runId, id)).orderBy(asc(sessions.seq)),
      db.select().from(worktrees).where(eq(worktrees.runId, id)).orderBy(desc(worktrees.id)).limit(1),
      db.select().from(escalations).where(eq(escalations.runId, id)).orderBy(asc(escalations.id)),
    ]);
    // Every comment considered as an answer, accepted or not, with why not.
    const replyRows =
      escalationRows.length === 0
        ? []
        : await db
            .select()
            .from(escalationReplies)
            .where(
              inArray(
                escalationReplies.escalationId,
                escalationRows.map((e) => e.id),
              ),
            )
            .orderBy(asc(escalationReplies.id));
    const scrub = (text: string | null) => (text === null ? null : this.deps.secrets.scrub(text));
    const worktree = worktreeRows[0];
    const sum = (pick: (s: (typeof sessionRows)[number]) => number | null) =>
      sessionRows.some((s) => pick(s) !== null) ? sessionRows.reduce((n, s) => n + (pick(s) ?? 0), 0) : null;
    return {
      ...runJson(run, this.deps.secrets),
      // Totals over the sessions, as the agent reported them (null when it reports nothing).
      num_turns: sum((s) => s.numTurns),
      cost_usd: sum((s) => s.costUsd),
      phases: phaseRows.map((p) => ({
        phase: p.phase,
        detail: scrub(p.detail),
        at: p.at.toISOString(),
        session: p.sessionId,
      })),
      sessions: sessionRows.map((s) => ({
        id: s.id,
        seq: s.seq,
        kind: s.kind,
        pid: s.pid,
        started_at: s.startedAt.toISOString(),
        ended_at: s.endedAt?.toISOString() ?? null,
        exit_code: s.exitCode,
        signal: s.signal,
        outcome: s.outcome,
        detail: scrub(s.detail),
        duration_ms: s.endedAt ? s.endedAt.getTime() - s.startedAt.getTime() : null,
        agent_session_id: s.agentSessionId,
        num_turns: s.numTurns,
        tool_calls: s.toolCalls,
        cost_usd: s.costUsd,
        /** The agent's final result object, shortened (Claude Code: subtype, is_error, usage, text...). */
        result: s.result,
        output_tail: scrub(s.outputTail),
      })),
      worktree: worktree
        ? {
            id: worktree.id,
            path: worktree.path,
            state: worktree.state,
            reason: worktree.reason,
            created_at: worktree.createdAt.toISOString(),
            preserved_at: worktree.preservedAt?.toISOString() ?? null,
            expires_at: worktree.expiresAt?.toISOString() ?? null,
            removed_at: worktree.removedAt?.toISOString() ?? null,
            removed_by: worktree.removedBy,
          }
        : null,
      escalations: escalationRows.map((e) => ({
        id: e.id,
        state: e.state,
        question: scrub(e.question),
        issue: e.issue,
        asked_at: e.askedAt.toISOString(),
        deadline_at: e.deadlineAt.toISOString(),
        reply_author: e.replyAuthor,
        reply_body: scrub(e.replyBody),
        claimed_at: e.claimedAt?.toISOString() ?? null,
        replies: replyRows
          .filter((r) => r.escalationId === e.id)
          .map((r) => ({
            source: r.source,
            author: r.author,
            outcome: r.outcome,
            comment_id: r.commentId,
            received_at: r.receivedAt.toISOString(),
          })),
      })),
    };
  }

  /** Path of the run's log file (it may not exist yet for a queued run). */
  async logFile(id: number): Promise<string> {
    await this.get(id);
    return runPaths(this.deps.config.settings.dataDir, id).log;
  }

  /**
   * Cancels a run: a queued or escalated one at once; a running one on this instance by
   * stopping its agent group (waits for it); a running one elsewhere by a request its
   * instance picks up within a second (answered with the run still `running` and the
   * request to follow).
   */
  async cancel(id: number): Promise<{ run: Run; request?: InstanceRequest }> {
    const { db } = this.deps.database;
    const before = await this.get(id);
    if ((FINAL_RUN_STATUSES as readonly string[]).includes(before.status)) {
      throw new AppError({ code: "conflict", message: `run ${id} already ended (${before.status})` });
    }
    if (before.status === "queued" || before.status === "escalated") {
      const [cancelled] = await db
        .update(runs)
        .set({
          status: "cancelled",
          detail: "cancelled on request",
          finishedAt: sql`now()`,
          updatedAt: sql`now()`,
          cancelRequestedAt: sql`now()`,
        })
        .where(and(eq(runs.id, id), inArray(runs.status, ["queued", "escalated"])))
        .returning();
      if (!cancelled) return this.cancel(id); // it moved on meanwhile: decide again
      await db
        .update(escalations)
        .set({ state: "cancelled" })
        .where(and(eq(escalations.runId, id), eq(escalations.state, "open")));
      // The worker settles the worktree and tells the observers (the status comment, metrics);
      // without one (an API-only setup) the worktree is settled the same way, no one to tell.
      if (this.deps.worker) await this.deps.worker.settleEnded(cancelled);
      else
        await settleWorktree(
          this.deps,
          cancelled,
          "cancelled",
          await activeWorktreeOf(this.deps.database, id),
          this.deps.log,
        );
      this.deps.log.info({ runId: id }, "run cancelled");
      return { run: cancelled };
    }
    const owner = before.instanceId;
    const requests = this.deps.requests;
    if (requests && owner && this.deps.instanceId !== undefined && owner !== this.deps.instanceId) {
      // Only the owner can stop its agent: the flag (which a takeover honours too) and the
      // request that wakes the owner commit together.
      const request = await db.transaction(async (tx) => {
        await tx.update(runs).set({ cancelRequestedAt: sql`now()`, updatedAt: sql`now()` }).where(eq(runs.id, id));
        return requests.ask({ kind: "cancel_run", owner, runId: id }, tx);
      });
      return { run: await this.get(id), request };
    }
    await db.update(runs).set({ cancelRequestedAt: sql`now()`, updatedAt: sql`now()` }).where(eq(runs.id, id));
    const local = this.deps.worker?.cancelLocal(id, "cancelled on request");
    if (local) await local;
    return { run: await this.get(id) };
  }
}
