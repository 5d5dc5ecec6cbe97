import { isUtf8 } from "node:buffer";
import { isDatabaseUnavailable } from "../../db/unavailable.js";
import type { ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import type { CommentReply } from "../escalations/escalation-service.js";
import { firesOn } from "../formulas/projects.js";
import type { FormulaStore } from "../formulas/store.js";
import { matchFormulas, runEventOf } from "../formulas/triggers.js";
import { jsonDepth, MAX_JSON_DEPTH } from "../input-limits.js";
import type { Logger } from "../logger.js";
import type { DeliveryIngest } from "./delivery-ingest.js";
import type { ForgeEvent } from "./event-types.js";
import { hasAtLeast, type PermissionCache } from "./forge-client.js";

/** What POST /webhooks answers for an accepted delivery. */
export interface WebhookOutcome {
  duplicate: boolean;
  runIds: number[];
  /** Why nothing fired, when nothing did (and the delivery answered no question). */
  ignored: string | undefined;
  /** The run whose open question this delivery's comment answered. */
  answered: number | undefined;
  /** Why the delivery is recorded `pending` (its sender's permission could not be checked yet). */
  pending: string | undefined;
}

/**
 * Replaces NUL characters and lone surrogates in every string of a parsed payload: JSON
 * allows them, PostgreSQL's jsonb does not, and a valid signed delivery must never turn
 * into a 500. See `parsePayload` for the cheap path that skips this walk.
 */
export function storable(value: unknown): unknown {
  if (typeof value === "string")
    return value.includes("\u0000") || !value.isWellFormed()
      ? value.toWellFormed().replaceAll("\u0000", "\uFFFD")
      : value;
  if (Array.isArray(value)) return value.map(storable);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [key, inner] of Object.entries(value)) out[storable(key) as string] = storable(inner);
    return out;
  }
  return value;
}

/** `\u0000` or a `\uD800`-`\uDFFF` escape: the only ways JSON text can carry what jsonb refuses. */
const SUSPECT_ESCAPE = /\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})/;

/**
 * Parses a delivery body: UTF-8 (invalid bytes are refused), JSON, made storable. The
 * deep walk of `storable` only runs when the text has an escape that needs it.
 */
export function parsePayload(body: Uint8Array): unknown {
  const buffer = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (!isUtf8(buffer)) throw new SyntaxError("the body is not UTF-8");
  const text = buffer.toString("utf8");
  // Before parsing: JSON nested thousands deep overflows the stack of every walk after it.
  if (jsonDepth(text) > MAX_JSON_DEPTH) throw new SyntaxError(`the body nests deeper than ${MAX_JSON_DEPTH} levels`);
  const value: unknown = JSON.parse(text);
  return SUSPECT_ESCAPE.test(text) ? storable(value) : value;
}

/** Whether a Content-Type is HTML-form encoding (GitHub's default webhook content type). */
export function isFormEncoded(contentType: string | undefined): boolean {
  return /^\s*application\/x-www-form-urlencoded\s*(;|$)/i.test(contentType ?? "");
}

/**
 * The JSON inside a form-encoded delivery: GitHub (and Gitea, when asked) send
 * `payload=<url-encoded JSON>`. Call it only after the signature was checked on the body
 * as sent. Throws a SyntaxError saying what is missing.
 */
export function formPayload(body: Uint8Array): Uint8Array {
  const buffer = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (!isUtf8(buffer)) throw new SyntaxError("the body is not UTF-8");
  const payload = new URLSearchParams(buffer.toString("utf8")).get("payload");
  if (payload === null) throw new SyntaxError("the form-encoded body has no payload field");
  return Buffer.from(payload, "utf8");
}

/** A formula a delivery matched, with the issue its run is about. */
type Match = ReturnType<typeof matchFormulas>[number];

/**
 * What a delivery fires: the formulas to queue, why nothing fired when nothing did, or
 * (`unchecked`) that the sender's permission could not be checked: nothing is decided yet.
 */
export type Decision =
  | { kind: "decided"; fired: Match[]; ignored: string | undefined; triggered: boolean }
  | { kind: "unchecked"; matched: Match[]; error: unknown };

/** The reason recorded on a delivery whose permission check could not be made (yet). */
export function uncheckedReason(login: string, error: unknown): string {
  return `the forge did not answer the permission check of ${login}: ${errorMessage(error)}`;
}

/**
 * Decides what an accepted delivery fires (formula triggers, then sender rules: bots and
 * the runner's own login fire nothing, nor senders below a formula's `min_permission`)
 * and records the delivery with its runs in one transaction. The only forge call is the
 * cached permission check, and only when a formula matched. When the forge cannot answer
 * it, the delivery is recorded `pending` (the forge will not deliver it again) and
 * `PendingDeliveries` decides it once the forge answers.
 */
export class WebhookService {
  constructor(
    private readonly deps: {
      formulas: FormulaStore;
      ingest: DeliveryIngest;
      permissions: PermissionCache;
      log: Logger;
      onQueued: () => void;
      /** Answers to agents' questions arrive as issue comments. */
      escalations?: { handleComment(project: ProjectConfig, event: ForgeEvent): Promise<CommentReply> };
      /** A pending delivery was recorded: wake whoever retries them. */
      onPending?: () => void;
      /** When a pending delivery's first retry is due. */
      firstRetryAt?: () => Date;
    },
  ) {}

  /**
   * What `event` fires on `project` with today's formulas. `redelivery` (the id is stored
   * already) skips the permission call: the insert decides it is a duplicate anyway.
   */
  async decide(event: ForgeEvent, project: ProjectConfig, redelivery: () => Promise<boolean>): Promise<Decision> {
    const triggered = matchFormulas(this.deps.formulas.list(), event);
    const matches = triggered.filter((m) => firesOn(m.formula, project));
    const nothing = (ignored: string): Decision => ({
      kind: "decided",
      fired: [],
      ignored,
      triggered: triggered.length > 0,
    });
    const sender = event.sender;
    const what = `${event.event}${event.action ? `/${event.action}` : ""}`;
    if (triggered.length === 0) {
      return nothing(
        event.kind === undefined ? `event "${event.event}" is not one formulas react to` : `no formula matches ${what}`,
      );
    }
    if (matches.length === 0) {
      const names = triggered.map((m) => m.formula.name).join(", ");
      return nothing(
        `${names} would fire on ${what} but project ${project.name} does not run it (list it in the project's formulas = [...])`,
      );
    }
    if (!sender) return nothing("the delivery names no sender");
    if (project.botLogin && sender.login.toLowerCase() === project.botLogin.toLowerCase())
      return nothing(`sender ${sender.login} is this runner's bot_login`);
    if (sender.bot) return nothing(`sender ${sender.login} is a bot`);
    if (await redelivery()) return { kind: "decided", fired: [], ignored: undefined, triggered: true };
    let level: Awaited<ReturnType<PermissionCache["level"]>>;
    try {
      level = await this.deps.permissions.level(project, sender.login);
    } catch (error) {
      // Fail closed for now: nothing fires until the forge answers.
      return { kind: "unchecked", matched: matches, error };
    }
    const allowed = matches.filter((m) => hasAtLeast(level, m.formula.guards.minPermission));
    if (allowed.length === matches.length)
      return { kind: "decided", fired: allowed, ignored: undefined, triggered: true };
    const refused = matches.filter((m) => !allowed.includes(m));
    const reason = `sender ${sender.login} has ${level} access; ${refused.map((m) => `${m.formula.name} needs ${m.formula.guards.minPermission}`).join(", ")}`;
    if (allowed.length === 0) return nothing(reason);
    this.deps.log.info(
      { delivery: event.deliveryId, project: project.name, refused: refused.map((m) => m.formula.name) },
      reason,
    );
    return { kind: "decided", fired: allowed, ignored: undefined, triggered: true };
  }

  /** `payload` must already be `storable` (the event was normalised from it). */
  async accept(event: ForgeEvent, project: ProjectConfig, payload: unknown): Promise<WebhookOutcome> {
    // A child logger per delivery costs more than the rest of the decision: made on first use.
    let child: Logger | undefined;
    const log = () =>
      (child ??= this.deps.log.child({
        delivery: event.deliveryId,
        event: event.event,
        action: event.action,
        project: project.name,
      }));
    let reply: CommentReply = { outcome: "none" };
    if (event.kind === "issue_comment" && event.action === "created" && this.deps.escalations) {
      // Before the delivery is recorded: if we die in between, the forge's redelivery is
      // not a duplicate yet and the answer is not lost. The claim itself is exactly-once.
      reply = await this.deps.escalations.handleComment(project, event).catch((error: unknown) => {
        // Database out of reach: answer 503 and record nothing, so the forge's redelivery is
        // not a duplicate. Recorded now as an ordinary comment, a reply to an open question
        // would never be claimed once the database is back.
        if (isDatabaseUnavailable(error)) throw error;
        log().error({ err: error }, `escalation reply: ${errorMessage(error)}`);
        return { outcome: "none" } as const;
      });
    }
    const decision = await this.decide(event, project, () => this.deps.ingest.seen(event.deliveryId));
    const fired = decision.kind === "decided" ? decision.fired : [];
    let ignored = decision.kind === "decided" ? decision.ignored : undefined;
    const pending =
      decision.kind === "unchecked" ? uncheckedReason(event.sender?.login ?? "?", decision.error) : undefined;

    // A comment that answered a question is recorded as that, not as an ignored event; one
    // refused as an answer says why, so the record explains why the run did not resume.
    // A pending delivery stays pending whatever its comment did: its formulas are undecided.
    let outcome: "queued" | "ignored" | "answered" | "pending" =
      pending !== undefined ? "pending" : fired.length > 0 ? "queued" : "ignored";
    if (outcome === "ignored" && reply.outcome === "delivered") {
      outcome = "answered";
      ignored = `answered the question of run ${reply.runId}`;
    } else if (outcome === "ignored" && reply.outcome === "ignored") {
      const refused = `not accepted as the answer to run ${reply.runId}'s question: ${reply.reason}`;
      ignored =
        decision.kind === "decided" && decision.triggered && ignored !== undefined ? `${refused}; ${ignored}` : refused;
    }
    const result = await this.deps.ingest.submit({
      delivery: {
        id: event.deliveryId,
        forge: event.forge,
        event: event.event,
        action: event.action ?? null,
        project: project.name,
        repository: event.repository ?? null,
        sender: event.sender?.login ?? null,
        payload,
        outcome,
        reason: pending ?? (fired.length > 0 ? null : (ignored ?? null)),
        nextAttemptAt: pending !== undefined ? (this.deps.firstRetryAt?.() ?? new Date()) : null,
      },
      runs: fired.map((m) => ({
        formula: m.formula,
        project: project.name,
        issue: m.issue,
        trigger: { kind: "webhook", ref: event.deliveryId },
        event: runEventOf(event),
      })),
    });
    if (result.duplicate) {
      log().info("duplicate delivery: nothing created");
    } else if (pending !== undefined) {
      log().warn(
        { err: decision.kind === "unchecked" ? decision.error : undefined },
        `delivery pending: ${pending}; it is decided when the forge answers`,
      );
      this.deps.onPending?.();
    } else if (result.runIds.length > 0) {
      log().info(
        { runs: result.runIds, formulas: fired.map((m) => m.formula.name) },
        `delivery queued ${result.runIds.length} run(s)`,
      );
      this.deps.onQueued();
    } else if (this.deps.log.isLevelEnabled("debug")) {
      log().debug({ reason: ignored }, "delivery fired nothing");
    }
    const answered = reply.outcome === "delivered" && !result.duplicate ? reply.runId : undefined;
    const settled = result.duplicate || result.runIds.length > 0 || outcome === "answered";
    return {
      duplicate: result.duplicate,
      runIds: result.runIds,
      ignored: settled || pending !== undefined ? undefined : ignored,
      pending: result.duplicate ? undefined : pending,
      answered,
    };
  }
}
