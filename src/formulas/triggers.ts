import type { ForgeEvent } from "../forge/event-types.js";
import type { RunEvent } from "../runs/run-event.js";
import type { Formula } from "./schema.js";

/** A formula an event fires, and the issue (or pull request) the run is about. */
export interface TriggerMatch {
  formula: Formula;
  issue: number | undefined;
}

/**
 * Whether a comment starts with a formula's command: case-sensitive, at the start of the
 * body with surrounding whitespace ignored, and followed by whitespace or nothing (so
 * `/run dev` does not fire on `/run developer`).
 */
export function startsWithCommand(body: string, command: string): boolean {
  const text = body.trim();
  if (!text.startsWith(command)) return false;
  const rest = text.slice(command.length);
  return rest === "" || /^\s/.test(rest);
}

function labelsMatch(wanted: readonly string[], event: ForgeEvent): boolean {
  if (wanted.length === 0) return true;
  // GitHub names the label added or removed; Gitea/Forgejo send the whole list after the change.
  if (event.label !== undefined) return wanted.includes(event.label);
  const present = event.labels ?? event.issue?.labels ?? event.pullRequest?.labels ?? [];
  return present.some((label) => wanted.includes(label));
}

/** Does `formula`'s `[on]` table fire on `event`? */
export function formulaMatches(formula: Formula, event: ForgeEvent): boolean {
  const { on } = formula;
  const action = event.action ?? "";
  switch (event.kind) {
    case "issues":
      return (
        on.issues !== undefined &&
        (on.issues.types as readonly string[]).includes(action) &&
        labelsMatch(on.issues.labels, event)
      );
    case "issue_comment": {
      const trigger = on.issueComment;
      if (!trigger || !(trigger.types as readonly string[]).includes(action)) return false;
      return trigger.command === undefined || startsWithCommand(event.comment?.body ?? "", trigger.command);
    }
    case "pull_request": {
      const trigger = on.pullRequest;
      if (!trigger || !(trigger.types as readonly string[]).includes(action)) return false;
      return trigger.branches === undefined || trigger.branches.includes(event.pullRequest?.base ?? "");
    }
    default:
      return false;
  }
}

/** The formulas an event fires, in name order. */
export function matchFormulas(formulas: readonly Formula[], event: ForgeEvent): TriggerMatch[] {
  const issue = event.issue?.number ?? event.pullRequest?.number;
  return formulas
    .filter((formula) => formulaMatches(formula, event))
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((formula) => ({ formula, issue }));
}

/** What a run keeps of the event that fired it (for its prompt). */
export function runEventOf(event: ForgeEvent): RunEvent {
  const kind = event.kind === "ping" || event.kind === undefined ? "push" : event.kind;
  return {
    kind,
    ...(event.action !== undefined && { action: event.action }),
    ...(event.sender && { sender: event.sender.login }),
    ...(event.label !== undefined && { label: event.label }),
    ...(event.issue && {
      issue: {
        number: event.issue.number,
        title: event.issue.title,
        body: event.issue.body,
        labels: event.labels ?? event.issue.labels,
        ...(event.issue.url !== undefined && { url: event.issue.url }),
        ...(event.issue.author !== undefined && { author: event.issue.author }),
      },
    }),
    ...(event.comment && {
      comment: {
        id: event.comment.id,
        body: event.comment.body,
        author: event.comment.author,
        ...(event.comment.url !== undefined && { url: event.comment.url }),
      },
    }),
    ...(event.pullRequest && {
      pullRequest: {
        number: event.pullRequest.number,
        title: event.pullRequest.title,
        body: event.pullRequest.body,
        head: event.pullRequest.head,
        base: event.pullRequest.base,
        ...(event.pullRequest.url !== undefined && { url: event.pullRequest.url }),
        ...(event.pullRequest.author !== undefined && { author: event.pullRequest.author }),
      },
    }),
    ...(event.push && { push: event.push }),
  };
}
