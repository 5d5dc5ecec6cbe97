import type { Forge } from "../config.js";
import { EVENT_KINDS, type EventKind, type EventSender, type ForgeEvent } from "./event-types.js";

type Json = Record<string, unknown>;

/**
 * Turns one parsed webhook payload into a `ForgeEvent`, whichever forge sent it. It
 * trusts nothing in the payload: any JSON value is accepted, a missing or mistyped piece
 * becomes undefined, and `kind` is undefined for events formula-runner does not act on.
 *
 * Gitea and Forgejo differ from GitHub in a few places, all absorbed here:
 * - label changes arrive as `label_updated` / `label_cleared` with the full label list
 *   and no single label; they become `labeled` / `unlabeled` with `labels`;
 * - a pull request push is `synchronized`, not `synchronize`;
 * - a comment on a pull request says so with top-level `is_pull: true`;
 * - users carry `login` and its copy `username`; `type` only in recent versions;
 * - the "Test Delivery" button sends a push with `before` equal to `after`, which is
 *   treated as a ping so it never fires push formulas.
 */
export function normalizeEvent(forge: Forge, event: string, deliveryId: string, payload: unknown): ForgeEvent {
  const p = record(payload) ?? {};
  const base: ForgeEvent = {
    forge,
    deliveryId,
    event,
    kind: eventKind(event),
    action: undefined,
    repository: string(record(p.repository)?.full_name),
    sender: sender(p.sender),
  };
  const rawAction = string(p.action);

  switch (base.kind) {
    case "issues": {
      const issue = issueOf(p.issue, p.is_pull === true);
      return { ...base, ...labelChange(rawAction, p, record(p.issue)?.labels), ...(issue && { issue }) };
    }
    case "issue_comment": {
      const issue = issueOf(p.issue, p.is_pull === true);
      const comment = commentOf(p.comment);
      return { ...base, action: rawAction, ...(issue && { issue }), ...(comment && { comment }) };
    }
    case "pull_request": {
      const pullRequest = pullRequestOf(p.pull_request, p.number);
      const action = rawAction === "synchronized" ? "synchronize" : rawAction;
      return {
        ...base,
        ...labelChange(action, p, record(p.pull_request)?.labels),
        ...(pullRequest && { pullRequest }),
      };
    }
    case "push": {
      const push = pushOf(p);
      const isTestDelivery =
        forge !== "github" && push !== undefined && push.before !== "" && push.before === push.after;
      return { ...base, kind: isTestDelivery ? "ping" : "push", ...(push && { push }) };
    }
    case "ping":
      return base;
    case undefined:
      return { ...base, action: rawAction };
  }
}

function eventKind(event: string): EventKind | undefined {
  return (EVENT_KINDS as readonly string[]).includes(event) ? (event as EventKind) : undefined;
}

/**
 * The action, with Gitea/Forgejo label changes in GitHub's words. GitHub names the one
 * label (`label.name`); Gitea/Forgejo only give the labels after the change, so a
 * `label_updated` also arrives when a label was removed.
 */
function labelChange(
  action: string | undefined,
  p: Json,
  currentLabels: unknown,
): Pick<ForgeEvent, "action" | "label" | "labels"> {
  switch (action) {
    case "labeled":
    case "unlabeled": {
      const label = string(record(p.label)?.name);
      return { action, ...(label !== undefined && { label }) };
    }
    case "label_updated":
      return { action: "labeled", labels: labelNames(Array.isArray(currentLabels) ? currentLabels : p.labels) };
    case "label_cleared":
      return { action: "unlabeled", labels: [] };
    default:
      return { action };
  }
}

function sender(value: unknown): EventSender | undefined {
  const user = record(value);
  const login = userLogin(user);
  if (login === undefined) return undefined;
  const type = string(user?.type) ?? "User";
  return { login, type, bot: type === "Bot" || login.endsWith("[bot]") };
}

function issueOf(value: unknown, isPull: boolean): ForgeEvent["issue"] {
  const issue = record(value);
  const number = positiveInt(issue?.number);
  if (issue === undefined || number === undefined) return undefined;
  return {
    number,
    title: text(issue.title),
    body: text(issue.body),
    labels: labelNames(issue.labels),
    author: userLogin(record(issue.user)),
    url: string(issue.html_url),
    // GitHub and Gitea both set `issue.pull_request` on pull requests (null otherwise);
    // Gitea/Forgejo comments also carry `is_pull`.
    isPullRequest: isPull || record(issue.pull_request) !== undefined,
  };
}

function commentOf(value: unknown): ForgeEvent["comment"] {
  const comment = record(value);
  const id = positiveInt(comment?.id);
  const author = userLogin(record(comment?.user));
  if (comment === undefined || id === undefined || author === undefined) return undefined;
  return { id, body: text(comment.body), author, url: string(comment.html_url) };
}

function pullRequestOf(value: unknown, payloadNumber: unknown): ForgeEvent["pullRequest"] {
  const pr = record(value);
  const number = positiveInt(pr?.number) ?? positiveInt(payloadNumber);
  if (pr === undefined || number === undefined) return undefined;
  return {
    number,
    title: text(pr.title),
    body: text(pr.body),
    head: text(record(pr.head)?.ref),
    base: text(record(pr.base)?.ref),
    labels: labelNames(pr.labels),
    author: userLogin(record(pr.user)),
    url: string(pr.html_url),
  };
}

function pushOf(p: Json): ForgeEvent["push"] {
  const ref = string(p.ref);
  if (ref === undefined) return undefined;
  // Gitea/Forgejo cap `commits` (webhook.PAYLOAD_COMMIT_LIMIT) but report the true count.
  const total = nonNegativeInt(p.total_commits);
  return {
    ref,
    before: text(p.before),
    after: text(p.after),
    commits: total ?? (Array.isArray(p.commits) ? p.commits.length : 0),
  };
}

/** `login`, or Gitea's compatibility copy `username`. */
function userLogin(user: Json | undefined): string | undefined {
  const login = string(user?.login) ?? string(user?.username);
  return login === "" ? undefined : login;
}

/** Label names from `[{name}]` (every forge) or plain strings; anything else is skipped. */
function labelNames(value: unknown): string[] {
  if (!Array.isArray(value)) return [];
  const names: string[] = [];
  for (const label of value) {
    const name = typeof label === "string" ? label : string(record(label)?.name);
    if (name !== undefined && name !== "") names.push(name);
  }
  return names;
}

function record(value: unknown): Json | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Json) : undefined;
}

function string(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/** Text people wrote: null or missing becomes "". */
function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

function positiveInt(value: unknown): number | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : undefined;
}

function nonNegativeInt(value: unknown): number | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}
