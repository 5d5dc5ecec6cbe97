import type { Forge } from "../config.js";

/** The event kinds formula-runner understands; anything else is recorded and ignored. */
export const EVENT_KINDS = ["issues", "issue_comment", "pull_request", "push", "ping"] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

/** Who caused an event. */
export interface EventSender {
  login: string;
  /** GitHub's `type`: "User", "Bot", "Organization"; Gitea/Forgejo report users only. */
  type: string;
  /** A bot account (`type` Bot, or a login ending in `[bot]`). */
  bot: boolean;
}

/**
 * One webhook delivery, the same shape whichever forge sent it. Text fields (titles,
 * bodies, comments) are untrusted: they came from people.
 */
export interface ForgeEvent {
  forge: Forge;
  /** The forge's delivery id (X-GitHub-Delivery, X-Gitea-Delivery, X-Forgejo-Delivery). */
  deliveryId: string;
  /** The forge's own event name (`issues`, `issue_comment`, `pull_request`, `push`, `ping`, or another). */
  event: string;
  /** `kind` is set when the event is one formula-runner understands. */
  kind: EventKind | undefined;
  /**
   * Normalised action: GitHub's as is; Gitea/Forgejo's `label_updated` becomes `labeled`
   * (with `labels` holding the full list), `synchronized` becomes `synchronize`.
   */
  action: string | undefined;
  /** `owner/name` as the forge wrote it. */
  repository: string | undefined;
  sender: EventSender | undefined;
  issue?: {
    number: number;
    title: string;
    body: string;
    labels: string[];
    author: string | undefined;
    url: string | undefined;
    /** The issue is a pull request (comments on pull requests arrive as issue comments). */
    isPullRequest: boolean;
  };
  comment?: { id: number; body: string; author: string; url: string | undefined };
  pullRequest?: {
    number: number;
    title: string;
    body: string;
    head: string;
    base: string;
    labels: string[];
    author: string | undefined;
    url: string | undefined;
  };
  push?: { ref: string; before: string; after: string; commits: number };
  /** For `labeled`/`unlabeled` on GitHub: the label added or removed. */
  label?: string;
  /**
   * For Gitea/Forgejo `label_updated`: the labels after the change (the forge does not
   * say which one was added), so a formula's labels match when present.
   */
  labels?: string[];
}
