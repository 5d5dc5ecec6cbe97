/**
 * Run statuses and worktree states as the CLI's help and choices name them. Copies of the
 * lists in db/schema (which would load drizzle into every CLI start); a unit test keeps
 * them equal.
 */
export const RUN_STATUS_NAMES = [
  "queued",
  "running",
  "escalated",
  "done",
  "failed",
  "crashed",
  "timed_out",
  "cancelled",
  "skipped",
] as const;

export const WORKTREE_STATE_NAMES = ["active", "preserved", "removed"] as const;

export const DELIVERY_OUTCOME_NAMES = ["queued", "ignored", "answered", "pending", "failed"] as const;
