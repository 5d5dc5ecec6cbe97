import { and, asc, eq, inArray, lt, lte, notExists, sql } from "drizzle-orm";
import { alias } from "drizzle-orm/pg-core";
import type { Database, Db, Tx } from "../../db/client.js";
import { escalations, type OutboxEntry, type OutboxKind, outbox, outputs, runs } from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { SecretRegistry } from "../secrets.js";
import { WakeableSleep } from "../worktrees/concurrency.js";
import { type ForgeClient, ForgeError } from "./forge-client.js";

/** What one outbox row asks the forge to do (the row's `payload`). */
export type OutboxPayload =
  /** The run's status comment, rendered when sent; `rev` counts the upserts since the row was made. */
  | { kind: "status"; rev: number }
  /** A new comment; with `escalationId`, its forge id is stored on that escalation once posted. */
  | { kind: "comment"; body: string; escalationId?: number }
  | { kind: "comment_edit"; commentId: number; body: string }
  /** Labels added to the issue, and (from an agent's `label` output) removed. */
  | { kind: "label"; labels: string[]; remove?: string[] }
  /**
   * An agent's `pull_request` output: the server has pushed its commits to `head`; the
   * open pull request from `head` is updated, or one is opened.
   */
  | { kind: "pull_request"; head: string; base: string; title: string; body: string; draft: boolean }
  /** An agent's `issue` output; `marker` (in the body) finds it again so it is opened once. */
  | { kind: "issue"; title: string; body: string; marker: string };

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A forge write as callers ask for it (a status write carries no rev: the outbox counts). */
export type OutboxWrite = DistributiveOmit<OutboxPayload, "rev">;

export interface OutboxRequest {
  project: string;
  /** The run the write belongs to; required for `status`. */
  runId?: number | null;
  /** Issue (or pull request) number the write goes to. */
  issue: number;
  payload: OutboxWrite;
}

/**
 * The hidden marker that finds a run's status comment again (after a crash between posting
 * and recording it, or when it was deleted). It carries the run's random `status_nonce`, so
 * nobody can post a future run's marker ahead of it; runs made before nonces existed
 * (null) keep the marker their comments already carry.
 */
export const statusMarker = (runId: number, nonce: string | null) =>
  nonce === null ? `<!-- formula-runner:run:${runId} -->` : `<!-- formula-runner:run:${runId}:${nonce} -->`;

/**
 * Text the runner posts for others (an agent's comment, a question, output in a status
 * comment) with every formula-runner marker in it defanged, so no comment of the bot's
 * but the real one ever carries a marker the outbox searches for.
 */
export function defangMarkers(text: string): string {
  return text.replace(/<!--(\s*)formula-runner:/gi, "<!--$1(quoted) formula-runner:");
}

/** The hidden marker on a `comment` row's comment, so a retry after an unclear failure does not post it twice. */
export const outboxMarker = (rowId: number) => `<!-- formula-runner:outbox:${rowId} -->`;

/**
 * Adds a forge write to the outbox, in the caller's transaction when given one (so the
 * write exists exactly when the change it reports does). Call the worker's `notify()`
 * after the transaction commits.
 *
 * A `status` write is an upsert on `outbox_status_pending_idx` (one pending status row per
 * run): a new row is due now; an existing one gets `payload.rev` bumped, so a burst of
 * phases costs one edit. Its `next_attempt_at` is left alone: a row waiting for its turn
 * is already due; a row being sent is made due again by its sender when it sees the rev
 * moved (so a second instance cannot pick it up mid-send and post a second comment); a row
 * backing off after a failure keeps honouring the backoff and the forge's Retry-After.
 */
export async function enqueueOutbox(db: Db | Tx, entry: OutboxRequest): Promise<void> {
  const runId = entry.runId ?? null;
  if (entry.payload.kind !== "status") {
    await db
      .insert(outbox)
      .values({ project: entry.project, runId, kind: entry.payload.kind, issue: entry.issue, payload: entry.payload });
    return;
  }
  if (runId === null) throw new Error("a status write needs the run it reports on");
  await db
    .insert(outbox)
    .values({ project: entry.project, runId, kind: "status", issue: entry.issue, payload: { kind: "status", rev: 1 } })
    .onConflictDoUpdate({
      target: outbox.runId,
      targetWhere: sql`kind = 'status' and state = 'pending'`,
      set: {
        payload: sql`jsonb_set(${outbox.payload}, '{rev}', to_jsonb(coalesce((${outbox.payload} ->> 'rev')::int, 0) + 1))`,
        issue: sql`excluded.issue`,
        project: sql`excluded.project`,
      },
    });
}

export interface OutboxDeps {
  database: Database;
  projects: readonly ProjectConfig[];
  clientFor: (project: ProjectConfig) => ForgeClient;
  /** The current status comment body of a run (including statusMarker), or undefined to skip. */
  renderStatus: (runId: number) => Promise<string | undefined>;
  secrets: SecretRegistry;
  log: Logger;
  now?: () => Date;
  /** Jitter source, [0, 1). */
  random?: () => number;
  /** How often due rows are looked for without a notify(); default 1 s. */
  pollMs?: number;
  /** How long a claimed row is this instance's to send before it is due again; default 60 s. */
  leaseMs?: number;
}

/** Rows claimed per pass. */
const CLAIM_BATCH = 20;
const BACKOFF_BASE_MS = 2_000;
const BACKOFF_CAP_MS = 10 * 60_000;
/** A row still failing this long after it was queued is given up. */
const GIVE_UP_AFTER_MS = 3 * 24 * 3_600_000;
/**
 * Comments are searched from this long before the row (or run) was made: the forge's clock
 * and ours may disagree, and a missed comment would be posted twice.
 */
const CLOCK_SKEW_MS = 10 * 60_000;

/** How a try ended. */
type Outcome =
  | { kind: "sent"; result?: unknown }
  | { kind: "retry"; error: string; at: Date; status?: number | undefined }
  | { kind: "failed"; error: string; status?: number | undefined };

/** A row with no earlier pending row for the same issue: the head of that issue's queue. */
const earlier = alias(outbox, "earlier");

/**
 * Sends the outbox: claims due rows (`FOR UPDATE SKIP LOCKED`, then a lease), sends each
 * outside the transaction, and records the outcome. Rows of one issue go out in id order
 * (a row waits while an earlier row of its issue is pending); projects go in parallel.
 * At-least-once: a row whose sender died is due again when its lease ends; status
 * comments are found again by their marker, comments by theirs, so a retry edits rather
 * than posts twice. The loop never dies: errors are logged and the next pass tries again.
 */
export class OutboxWorker {
  readonly #deps: OutboxDeps;
  readonly #now: () => Date;
  readonly #random: () => number;
  readonly #pollMs: number;
  readonly #leaseMs: number;
  readonly #inflight = new Set<Promise<number>>();
  #loop: Promise<void> | undefined;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  readonly #idle = new WakeableSleep();
  /** A notify() that came while a pass was running: pass again before sleeping. */
  #notified = false;

  constructor(deps: OutboxDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? (() => new Date());
    this.#random = deps.random ?? Math.random;
    this.#pollMs = deps.pollMs ?? 1_000;
    this.#leaseMs = deps.leaseMs ?? 60_000;
  }

  async start(): Promise<void> {
    if (this.#loop) return;
    this.#stopping = false;
    this.#stopped = undefined;
    this.#loop = this.#run();
  }

  /** Wakes the loop now (rows were just queued). */
  notify(): void {
    this.#notified = true;
    this.#idle.wake();
  }

  /** Stops the loop and waits for the sends in flight. Idempotent. */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stopping = true;
      this.#idle.wake();
      await this.#loop;
      this.#loop = undefined;
      await Promise.allSettled([...this.#inflight]);
    })();
    return this.#stopped;
  }

  /** One pass: claims due rows and sends them; how many were attempted. For tests (and the loop). */
  drainOnce(): Promise<number> {
    const pass = this.#drain().finally(() => this.#inflight.delete(pass));
    this.#inflight.add(pass);
    return pass;
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      this.#notified = false;
      let attempted = 0;
      try {
        attempted = await this.drainOnce();
      } catch (error) {
        this.#deps.log.error({ err: error }, `outbox: ${errorMessage(error)}; trying again`);
      }
      if (this.#stopping) break;
      // More may be due (the next row of an issue waits for the one before it): go again.
      if (attempted > 0 || this.#notified) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        continue;
      }
      await this.#idle.sleep(this.#pollMs);
    }
  }

  async #drain(): Promise<number> {
    const claimed = await this.#claim();
    if (claimed.length === 0) return 0;
    const byProject = new Map<string, OutboxEntry[]>();
    for (const row of claimed) {
      const list = byProject.get(row.project) ?? [];
      list.push(row);
      byProject.set(row.project, list);
    }
    const counts = await Promise.all(
      [...byProject.values()].map(async (rows) => {
        let attempted = 0;
        for (const row of rows) {
          if (await this.#process(row)) attempted++;
        }
        return attempted;
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Due rows at the head of their issue's queue, leased to this instance; `attempts` counts the try. */
  async #claim(): Promise<OutboxEntry[]> {
    const now = this.#now();
    return this.#deps.database.db.transaction(async (tx) => {
      const due = await tx
        .select({ id: outbox.id })
        .from(outbox)
        .where(
          and(
            eq(outbox.state, "pending"),
            // Due by our clock or the database's: rows are queued with the database's now(), in
            // microseconds, and this host's clock may be a little behind it.
            lte(outbox.nextAttemptAt, sql`greatest(${now.toISOString()}::timestamptz, now())`),
            notExists(
              tx
                .select({ one: sql`1` })
                .from(earlier)
                .where(
                  and(
                    eq(earlier.state, "pending"),
                    eq(earlier.project, outbox.project),
                    eq(earlier.issue, outbox.issue),
                    lt(earlier.id, outbox.id),
                  ),
                ),
            ),
          ),
        )
        .orderBy(asc(outbox.id))
        .limit(CLAIM_BATCH)
        .for("update", { of: outbox, skipLocked: true });
      if (due.length === 0) return [];
      const rows = await tx
        .update(outbox)
        .set({ nextAttemptAt: new Date(now.getTime() + this.#leaseMs), attempts: sql`${outbox.attempts} + 1` })
        .where(
          inArray(
            outbox.id,
            due.map((d) => d.id),
          ),
        )
        .returning();
      return rows.sort((a, b) => a.id - b.id);
    });
  }

  /**
   * Sends one claimed row and records the outcome; false when the row is no longer ours
   * (its lease ran out while earlier rows were sent, and another instance may have it).
   */
  async #process(claimed: OutboxEntry): Promise<boolean> {
    // Renew the lease, checking it is still ours: the claim's lease time is the fence.
    const lease = new Date(this.#now().getTime() + this.#leaseMs);
    const [row] = await this.#deps.database.db
      .update(outbox)
      .set({ nextAttemptAt: lease })
      .where(
        and(eq(outbox.id, claimed.id), eq(outbox.state, "pending"), eq(outbox.nextAttemptAt, claimed.nextAttemptAt)),
      )
      .returning();
    if (!row) return false;
    let outcome: Outcome;
    try {
      outcome = await this.#send(row);
    } catch (error) {
      outcome = this.#classify(row, error);
    }
    await this.#record(row, lease, outcome);
    return true;
  }

  async #send(row: OutboxEntry): Promise<Outcome> {
    const project = this.#deps.projects.find((p) => p.name === row.project);
    if (!project) return { kind: "failed", error: `project "${row.project}" is not configured` };
    if (!project.token) {
      const where = project.tokenEnv
        ? `environment variable ${project.tokenEnv} is not set`
        : "token_env is not configured";
      return { kind: "failed", error: `project "${row.project}" has no forge token (${where})` };
    }
    const payload = parsePayload(row.kind, row.payload);
    if (!payload) return { kind: "failed", error: `malformed ${row.kind} payload` };
    const client = this.#deps.clientFor(project);
    const scrub = (text: string) => this.#deps.secrets.scrub(text);

    switch (payload.kind) {
      case "status":
        return this.#sendStatus(row, client);
      case "comment": {
        const marker = outboxMarker(row.id);
        // An earlier try may have posted it and failed to hear back (a timeout, a 502).
        if (row.attempts > 1) {
          const found = await client.findComment(row.issue, marker, new Date(row.createdAt.getTime() - CLOCK_SKEW_MS));
          if (found) return { kind: "sent", result: { id: found.id, url: undefined, recovered: true } };
        }
        const posted = await client.createComment(row.issue, `${defangMarkers(scrub(payload.body))}\n\n${marker}`);
        return { kind: "sent", result: { id: posted.id, url: posted.url } };
      }
      case "comment_edit":
        await client.updateComment(payload.commentId, defangMarkers(scrub(payload.body)));
        return { kind: "sent" };
      case "label":
        await client.addLabels(row.issue, payload.labels);
        await client.removeLabels(row.issue, payload.remove ?? []);
        return { kind: "sent" };
      case "pull_request": {
        const request = { title: scrub(payload.title), body: defangMarkers(scrub(payload.body)), draft: payload.draft };
        // Found by its branch: a try that opened it and never heard back updates it instead.
        const open = await client.findOpenPullRequest(payload.head);
        if (open) {
          await client.updatePullRequest(open.number, request);
          return { kind: "sent", result: { number: open.number, url: open.url, updated: true } };
        }
        const created = await client.createPullRequest({ ...request, head: payload.head, base: payload.base });
        return { kind: "sent", result: { number: created.number, url: created.url } };
      }
      case "issue": {
        const found = await client.findIssue(payload.marker, new Date(row.createdAt.getTime() - CLOCK_SKEW_MS));
        if (found) return { kind: "sent", result: { number: found.number, url: found.url, recovered: true } };
        const body = `${defangMarkers(scrub(payload.body))}\n\n${payload.marker}`;
        const created = await client.createIssue(scrub(payload.title), body);
        return { kind: "sent", result: { number: created.number, url: created.url } };
      }
    }
  }

  /** Creates the run's status comment the first time, edits it after; the body is rendered now. */
  async #sendStatus(row: OutboxEntry, client: ForgeClient): Promise<Outcome> {
    if (row.runId === null) return { kind: "failed", error: "the run of this status write no longer exists" };
    const [run] = await this.#deps.database.db
      .select({ statusCommentId: runs.statusCommentId, queuedAt: runs.queuedAt, statusNonce: runs.statusNonce })
      .from(runs)
      .where(eq(runs.id, row.runId));
    if (!run) return { kind: "failed", error: `run ${row.runId} no longer exists` };
    const rendered = await this.#deps.renderStatus(row.runId);
    if (rendered === undefined) return { kind: "sent", result: { skipped: true } };
    const marker = statusMarker(row.runId, run.statusNonce);
    // The marker is what finds the comment again: it goes in exactly once (never a comment
    // without it), and marker-like text elsewhere in the body (agent output, phase details)
    // is defanged, so this comment can never match another run's search.
    const rest = rendered.startsWith(marker) ? rendered.slice(marker.length) : rendered;
    const defanged = defangMarkers(this.#deps.secrets.scrub(rest));
    const body = rendered.startsWith(marker) ? `${marker}${defanged}` : `${defanged}\n\n${marker}`;

    let commentId = run.statusCommentId;
    if (commentId !== null) {
      try {
        await client.updateComment(commentId, body);
        return { kind: "sent", result: { id: commentId } };
      } catch (error) {
        // Deleted on the forge: post a new one rather than failing the run's reporting for good.
        if (!(error instanceof ForgeError && error.status === 404)) throw error;
        this.#deps.log.warn(
          { outboxId: row.id, runId: row.runId, commentId },
          "status comment is gone from the forge; posting a new one",
        );
        commentId = null;
      }
    }
    // Not recorded: a crash may have come between posting it and recording its id.
    const found = await client.findComment(row.issue, marker, new Date(run.queuedAt.getTime() - CLOCK_SKEW_MS));
    let url: string | undefined;
    if (found && found.id !== run.statusCommentId) {
      await client.updateComment(found.id, body);
      commentId = found.id;
    } else {
      ({ id: commentId, url } = await client.createComment(row.issue, body));
    }
    await this.#deps.database.db.update(runs).set({ statusCommentId: commentId }).where(eq(runs.id, row.runId));
    return { kind: "sent", result: { id: commentId, url } };
  }

  /** Whether (and when) a failed try is tried again. */
  #classify(row: OutboxEntry, error: unknown): Outcome {
    const now = this.#now();
    const message = this.#deps.secrets.scrub(errorMessage(error));
    const status = error instanceof ForgeError ? error.status : undefined;
    const headers = error instanceof ForgeError ? (error.headers ?? {}) : {};
    const rateLimited =
      status === 429 ||
      (status === 403 &&
        (headers["x-ratelimit-remaining"] === "0" ||
          headers["retry-after"] !== undefined ||
          /rate limit/i.test(message)));
    const retryable = status === undefined || status >= 500 || status === 408 || rateLimited;
    if (!retryable) return { kind: "failed", error: message, status };
    if (now.getTime() - row.createdAt.getTime() >= GIVE_UP_AFTER_MS) {
      return { kind: "failed", error: `gave up after 3 days: ${message}`, status };
    }
    const at = forgeRetryTime(headers, now) ?? new Date(now.getTime() + backoffMs(row.attempts, this.#random()));
    return { kind: "retry", error: message, at, status };
  }

  async #record(row: OutboxEntry, lease: Date, outcome: Outcome): Promise<void> {
    const { database, log } = this.#deps;
    const db = database.db;
    const now = this.#now();
    const fields = { outboxId: row.id, kind: row.kind, project: row.project, issue: row.issue, attempt: row.attempts };

    if (outcome.kind === "sent") {
      const claimedRev = row.kind === "status" ? (row.payload as { rev?: unknown }).rev : undefined;
      const sent = await db.transaction(async (tx) => {
        const [updated] = await tx
          .update(outbox)
          .set({ state: "sent", sentAt: now, lastError: null, result: outcome.result ?? null })
          .where(
            and(
              eq(outbox.id, row.id),
              eq(outbox.state, "pending"),
              // A status row whose rev moved while it was sent has a newer state to show.
              row.kind === "status" ? sql`(${outbox.payload} ->> 'rev') = ${String(claimedRev)}` : undefined,
            ),
          )
          .returning({ id: outbox.id });
        if (!updated) return false;
        const escalationId =
          row.kind === "comment" ? (row.payload as { escalationId?: unknown }).escalationId : undefined;
        const commentId = (outcome.result as { id?: unknown } | undefined)?.id;
        if (typeof escalationId === "number" && typeof commentId === "number") {
          await tx.update(escalations).set({ commentId }).where(eq(escalations.id, escalationId));
        }
        // An agent's output this row carries is sent too.
        await tx.update(outputs).set({ status: "sent" }).where(eq(outputs.outboxId, row.id));
        return true;
      });
      if (!sent && row.kind === "status") {
        await db
          .update(outbox)
          .set({ nextAttemptAt: now, lastError: null })
          .where(and(eq(outbox.id, row.id), eq(outbox.state, "pending")));
        log.debug(fields, "outbox: status changed while it was sent; sending the newer state");
      }
      return;
    }

    // Only while the lease is still ours: otherwise another instance has the row now.
    const ours = and(eq(outbox.id, row.id), eq(outbox.state, "pending"), eq(outbox.nextAttemptAt, lease));
    if (outcome.kind === "failed") {
      await db.transaction(async (tx) => {
        const [failed] = await tx
          .update(outbox)
          .set({ state: "failed", lastError: outcome.error })
          .where(ours)
          .returning({ id: outbox.id });
        if (failed) {
          await tx
            .update(outputs)
            .set({ status: "failed", reason: outcome.error.slice(0, 1_000) })
            .where(eq(outputs.outboxId, row.id));
        }
      });
      log.error(
        { ...fields, status: outcome.status },
        `outbox: ${row.kind} write to ${row.project}#${row.issue} failed for good: ${outcome.error}`,
      );
      return;
    }
    await db.update(outbox).set({ nextAttemptAt: outcome.at, lastError: outcome.error }).where(ours);
    log.warn(
      { ...fields, status: outcome.status, nextAttemptAt: outcome.at.toISOString() },
      `outbox: ${row.kind} write to ${row.project}#${row.issue} failed (attempt ${row.attempts}); retrying at ${outcome.at.toISOString()}: ${outcome.error}`,
    );
  }
}

/** Exponential backoff with jitter: 2 s doubling per attempt, capped at 10 min, times 0.5 to 1.5. */
export function backoffMs(attempts: number, random: number): number {
  const exponent = Math.max(0, attempts - 1);
  const base = Math.min(BACKOFF_BASE_MS * 2 ** Math.min(exponent, 30), BACKOFF_CAP_MS);
  return Math.round(base * (0.5 + random));
}

/**
 * When the forge said to come back: `Retry-After` (seconds or an HTTP date), else an
 * exhausted rate limit's `x-ratelimit-reset` (epoch seconds). Undefined when it said neither.
 */
export function forgeRetryTime(headers: Record<string, string>, now: Date): Date | undefined {
  const retryAfter = headers["retry-after"]?.trim();
  if (retryAfter) {
    if (/^\d+(\.\d+)?$/.test(retryAfter)) return new Date(now.getTime() + Math.ceil(Number(retryAfter) * 1000));
    const at = Date.parse(retryAfter);
    if (!Number.isNaN(at)) return new Date(Math.max(at, now.getTime()));
  }
  const reset = Number(headers["x-ratelimit-reset"]);
  if (headers["x-ratelimit-remaining"]?.trim() === "0" && Number.isFinite(reset) && reset > 0) {
    return new Date(Math.max(reset * 1000, now.getTime()));
  }
  return undefined;
}

/** The row's payload checked against its kind; undefined when it does not fit. */
function parsePayload(kind: OutboxKind, payload: unknown): OutboxPayload | undefined {
  if (typeof payload !== "object" || payload === null) return undefined;
  const p = payload as Record<string, unknown>;
  if (p.kind !== kind) return undefined;
  switch (kind) {
    case "status":
      return { kind, rev: typeof p.rev === "number" ? p.rev : 0 };
    case "comment":
      if (typeof p.body !== "string") return undefined;
      return { kind, body: p.body, ...(typeof p.escalationId === "number" ? { escalationId: p.escalationId } : {}) };
    case "comment_edit":
      return typeof p.commentId === "number" && typeof p.body === "string"
        ? { kind, commentId: p.commentId, body: p.body }
        : undefined;
    case "label": {
      const remove = p.remove ?? [];
      return isStrings(p.labels) && isStrings(remove)
        ? { kind, labels: p.labels, ...(remove.length > 0 ? { remove } : {}) }
        : undefined;
    }
    case "pull_request":
      return typeof p.head === "string" &&
        typeof p.base === "string" &&
        typeof p.title === "string" &&
        typeof p.body === "string" &&
        typeof p.draft === "boolean"
        ? { kind, head: p.head, base: p.base, title: p.title, body: p.body, draft: p.draft }
        : undefined;
    case "issue":
      return typeof p.title === "string" && typeof p.body === "string" && typeof p.marker === "string"
        ? { kind, title: p.title, body: p.body, marker: p.marker }
        : undefined;
    default:
      return undefined;
  }
}

function isStrings(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}
