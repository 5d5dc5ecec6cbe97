/**
 * What fired a run, normalised across forges and kept with the run (`runs.event`) so the
 * prompt can show it. Text in it that came from people (titles, bodies, comments) is
 * untrusted: the prompt fences it.
 */
export interface RunEvent {
  kind: "issues" | "issue_comment" | "pull_request" | "push" | "dispatch" | "schedule";
  action?: string;
  /** Login of whoever caused the event. */
  sender?: string;
  issue?: { number: number; title: string; body: string; labels: string[]; url?: string; author?: string };
  comment?: { id: number; body: string; author: string; url?: string };
  pullRequest?: {
    number: number;
    title: string;
    body: string;
    head: string;
    base: string;
    url?: string;
    author?: string;
  };
  push?: { ref: string; before: string; after: string; commits: number };
  /** The label that was added or removed, for `labeled`/`unlabeled`. */
  label?: string;
  /** Schedule slot time (ISO 8601), for scheduled runs. */
  slot?: string;
}
