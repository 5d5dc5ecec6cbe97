import { and, asc, desc, eq, isNotNull, lte, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Escalation, escalationReplies, escalations, type Run, runs } from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import { AppError, errorMessage } from "../errors.js";
import type { ForgeEvent } from "../forge/event-types.js";
import { type AccessLevel, hasAtLeast, type PermissionCache } from "../forge/forge-client.js";
import { enqueueOutbox } from "../forge/outbox.js";
import type { Logger } from "../logger.js";

/** Who answered and what, as the resumed session gets it. */
export interface EscalationAnswer {
  escalation: Escalation;
  author: string;
  body: string;
}

export interface EscalationDeps {
  database: Database;
  projects: readonly ProjectConfig[];
  permissions: PermissionCache;
  log: Logger;
  now: () => Date;
  /** A run has an answer to resume with (wakes the worker). */
  onAnswered: () => void;
  /** Forge writes were queued (wakes the outbox). */
  onOutbox: () => void;
  /** Settles a run that failed for want of an answer (its worktree, observers). */
  onExpired?: (run: Run) => Promise<void>;
}

/** What a comment did to an open question: answered it, was refused as an answer (and why), or neither. */
export type CommentReply =
  | { outcome: "delivered"; runId: number }
  | { outcome: "ignored"; runId: number; reason: string }
  | { outcome: "none" };

/**
 * Questions agents ask (PHASE:escalate) and the answers people give: from an issue
 * comment (the first one after the question by someone with write access, not a bot)
 * or from POST /api/runs/:id/reply. The claim of an answer is one conditional UPDATE
 * (open -> answered), so it happens exactly once however many deliveries or instances
 * race; the run stays `escalated` (holding its worktree and concurrency key) until its
 * instance starts the resumed session. Unanswered questions expire: label `blocked`,
 * a comment saying why, run `failed`.
 */
export class EscalationService {
  constructor(private readonly deps: EscalationDeps) {}

  /** An issue comment, seen through a webhook: maybe the answer to an open question. */
  async handleComment(project: ProjectConfig, event: ForgeEvent): Promise<CommentReply> {
    const none = { outcome: "none" } as const;
    if (event.kind !== "issue_comment" || event.action !== "created" || !event.comment || !event.issue) return none;
    const comment = event.comment;
    const open = await this.deps.database.db
      .select({ escalation: escalations })
      .from(escalations)
      .innerJoin(runs, eq(runs.id, escalations.runId))
      .where(
        and(
          eq(escalations.state, "open"),
          eq(runs.project, project.name),
          eq(escalations.issue, event.issue.number),
          isNotNull(escalations.commentId),
        ),
      )
      .orderBy(asc(escalations.id));
    // The first reply AFTER the question: comment ids grow on both GitHub and Gitea.
    const target = open.map((o) => o.escalation).find((e) => (e.commentId ?? Number.MAX_SAFE_INTEGER) < comment.id);
    if (!target) return none;
    const log = this.deps.log.child({ runId: target.runId, escalationId: target.id });

    const author = comment.author;
    const refuse = async (outcome: string) => {
      await this.#record(target.id, { source: "comment", commentId: comment.id, author, body: comment.body, outcome });
      log.info({ author, outcome }, `reply by ${author} not delivered: ${outcome}`);
      return { outcome: "ignored", runId: target.runId, reason: outcome } as const;
    };
    if (project.botLogin && author.toLowerCase() === project.botLogin.toLowerCase()) return none;
    if (event.sender?.bot || author.endsWith("[bot]")) return refuse("bot");
    let level: AccessLevel;
    try {
      level = await this.deps.permissions.level(project, author);
    } catch (error) {
      return refuse(`permission check failed: ${errorMessage(error)}`);
    }
    if (!hasAtLeast(level, "write")) return refuse(`not permitted (${level} access; write needed)`);
    const claimed = await this.#claim(
      target,
      { source: "comment", commentId: comment.id, author, body: comment.body },
      project,
    );
    return claimed ? { outcome: "delivered", runId: target.runId } : refuse("already answered");
  }

  /** POST /api/runs/:id/reply: the API token holder answers the run's open question. */
  async replyViaApi(runId: number, body: string, author: string): Promise<Escalation> {
    const [target] = await this.deps.database.db
      .select()
      .from(escalations)
      .where(and(eq(escalations.runId, runId), eq(escalations.state, "open")))
      .orderBy(asc(escalations.id))
      .limit(1);
    if (!target) {
      const [run] = await this.deps.database.db.select({ status: runs.status }).from(runs).where(eq(runs.id, runId));
      if (!run) throw new AppError({ code: "not_found", message: `no run ${runId}` });
      throw new AppError({ code: "conflict", message: `run ${runId} has no open question (status ${run.status})` });
    }
    const [run] = await this.deps.database.db.select().from(runs).where(eq(runs.id, runId));
    const project = this.deps.projects.find((p) => p.name === run?.project);
    const claimed = await this.#claim(target, { source: "api", commentId: null, author, body }, project);
    if (!claimed) throw new AppError({ code: "conflict", message: `run ${runId}'s question was answered meanwhile` });
    return claimed;
  }

  async #claim(
    target: Escalation,
    reply: { source: string; commentId: number | null; author: string; body: string },
    project: ProjectConfig | undefined,
  ): Promise<Escalation | undefined> {
    const claimed = await this.deps.database.db.transaction(async (tx) => {
      const [row] = await tx
        .update(escalations)
        .set({
          state: "answered",
          replyBody: reply.body,
          replyAuthor: reply.author,
          replyCommentId: reply.commentId,
          claimedAt: sql`now()`,
        })
        .where(and(eq(escalations.id, target.id), eq(escalations.state, "open")))
        .returning();
      if (!row) return undefined;
      await tx.insert(escalationReplies).values({ escalationId: row.id, ...reply, outcome: "delivered" });
      await tx
        .update(runs)
        .set({ detail: `answered by ${reply.author}; resuming`, updatedAt: sql`now()` })
        .where(eq(runs.id, row.runId));
      if (project && row.issue !== null) {
        await enqueueOutbox(tx, {
          project: project.name,
          runId: row.runId,
          issue: row.issue,
          payload: { kind: "comment", body: `Thanks @${reply.author}: run ${row.runId} resumes with your answer.` },
        });
      }
      return row;
    });
    if (claimed) {
      this.deps.log.info(
        { runId: claimed.runId, escalationId: claimed.id, author: reply.author },
        "escalation answered; the run resumes",
      );
      this.deps.onAnswered();
      this.deps.onOutbox();
    }
    return claimed;
  }

  async #record(
    escalationId: number,
    reply: { source: string; commentId: number | null; author: string; body: string; outcome: string },
  ) {
    await this.deps.database.db.insert(escalationReplies).values({ escalationId, ...reply });
  }

  /**
   * Open questions past their deadline: escalation `expired`, run `failed`, label
   * `blocked` and a comment on the issue. Any instance may do it; the conditional update
   * makes it happen once.
   */
  async expireDue(): Promise<number> {
    const due = await this.deps.database.db
      .select()
      .from(escalations)
      .where(and(eq(escalations.state, "open"), lte(escalations.deadlineAt, this.deps.now())));
    let expired = 0;
    for (const escalation of due) {
      const run = await this.deps.database.db.transaction(async (tx) => {
        const [row] = await tx
          .update(escalations)
          .set({ state: "expired" })
          .where(and(eq(escalations.id, escalation.id), eq(escalations.state, "open")))
          .returning();
        if (!row) return undefined;
        const hours = Math.round((row.deadlineAt.getTime() - row.askedAt.getTime()) / 3_600_000);
        const [failed] = await tx
          .update(runs)
          .set({
            status: "failed",
            detail: `no reply to the agent's question within ${hours} h (escalation_timeout)`,
            finishedAt: sql`now()`,
            updatedAt: sql`now()`,
          })
          .where(and(eq(runs.id, row.runId), eq(runs.status, "escalated")))
          .returning();
        if (failed && row.issue !== null) {
          await enqueueOutbox(tx, {
            project: failed.project,
            runId: failed.id,
            issue: row.issue,
            payload: { kind: "label", labels: ["blocked"] },
          });
          await enqueueOutbox(tx, {
            project: failed.project,
            runId: failed.id,
            issue: row.issue,
            payload: {
              kind: "comment",
              body: `Run ${failed.id} (\`${failed.formula}\`) waited ${hours} h for an answer to its question and has stopped: labelled \`blocked\`. Start it again once the question is settled.`,
            },
          });
        }
        return failed;
      });
      if (!run) continue;
      expired++;
      this.deps.log.warn(
        { runId: run.id, escalationId: escalation.id },
        "escalation timed out: run failed, issue labelled blocked",
      );
      await this.deps
        .onExpired?.(run)
        .catch((error: unknown) =>
          this.deps.log.error({ err: error, runId: run.id }, "settling an expired run failed"),
        );
    }
    if (expired > 0) this.deps.onOutbox();
    return expired;
  }

  /** Records that the answer reached a session (a crash before this re-delivers it). */
  async markResumed(escalationId: number, sessionId: number): Promise<void> {
    await this.deps.database.db
      .update(escalations)
      .set({ resumedSessionId: sessionId })
      .where(eq(escalations.id, escalationId));
  }

  /** The latest answered question of a run: what resumed (and later) sessions continue from. */
  async answerFor(runId: number): Promise<EscalationAnswer | undefined> {
    const [row] = await this.deps.database.db
      .select()
      .from(escalations)
      .where(and(eq(escalations.runId, runId), eq(escalations.state, "answered")))
      .orderBy(desc(escalations.id))
      .limit(1);
    if (!row?.replyBody || !row.replyAuthor) return undefined;
    return { escalation: row, author: row.replyAuthor, body: row.replyBody };
  }
}

/** Runs `expireDue` every interval (a minute by default); deadlines live in the database, not in timers. */
export class EscalationMonitor {
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<unknown> | undefined;

  constructor(
    private readonly service: EscalationService,
    private readonly log: Logger,
    private readonly intervalMs = 60_000,
  ) {}

  async start(): Promise<void> {
    if (this.#timer) return;
    await this.tick();
    this.#timer = setInterval(() => void this.tick(), this.intervalMs);
    this.#timer.unref();
  }

  tick(): Promise<unknown> {
    this.#tick ??= this.service
      .expireDue()
      .catch((error: unknown) => this.log.error({ err: error }, `escalation timeouts: ${errorMessage(error)}`))
      .finally(() => {
        this.#tick = undefined;
      });
    return this.#tick;
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#tick;
  }
}
