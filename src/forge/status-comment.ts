import { asc, desc, eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  type Escalation,
  escalations,
  type Phase,
  phases,
  type Run,
  runs,
  type Session,
  sessions,
  type Worktree,
  worktrees,
} from "../../db/schema/index.js";
import { statusMarker } from "./outbox.js";

const ICON: Record<string, string> = {
  queued: "⏳",
  running: "🔄",
  escalated: "❓",
  done: "✅",
  failed: "❌",
  crashed: "💥",
  timed_out: "⌛",
  cancelled: "🚫",
  skipped: "⏭️",
};

const TIMELINE_LIMIT = 12;
const LOG_LINES = 20;

function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const time = (d: Date) => d.toISOString().slice(11, 19);

/** Text from the agent inside a code block: backtick fences in it cannot close ours. */
function codeBlock(text: string): string {
  const longest = Math.max(2, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(longest + 1);
  return `${fence}\n${text}\n${fence}`;
}

export interface StatusInput {
  run: Run;
  phases: readonly Phase[];
  sessions: readonly Session[];
  worktree: Worktree | undefined;
  escalations: readonly Escalation[];
  now: Date;
}

/**
 * The status comment of a run: formula, trigger, current phase with a short timeline,
 * duration, and at the end the outcome, why, the preserved worktree and its expiry, and
 * the last lines of output for failures. The hidden marker finds it again. Secrets are
 * scrubbed by the outbox, which every forge write goes through.
 */
export function renderStatus(input: StatusInput): string {
  const { run, now } = input;
  const lines: string[] = [statusMarker(run.id, run.statusNonce)];
  const icon = ICON[run.status] ?? "";
  lines.push(`### ${icon} formula-runner: \`${run.formula}\` run ${run.id} — ${run.status.replace("_", " ")}`);
  const trigger =
    run.triggerKind === "webhook"
      ? `webhook delivery \`${run.triggerRef}\``
      : run.triggerKind === "schedule"
        ? `schedule slot ${run.triggerRef}`
        : `dispatched by ${run.triggerRef}`;
  const facts = [`**Project:** ${run.project}`, `**Trigger:** ${trigger}`];
  if (run.phase) facts.push(`**Phase:** \`${run.phase}\``);
  if (run.startedAt) {
    const end = run.finishedAt ?? now;
    facts.push(`**${run.finishedAt ? "Took" : "Running for"}:** ${duration(end.getTime() - run.startedAt.getTime())}`);
  } else if (run.status === "queued") {
    facts.push(`**Queued:** ${run.queuedAt.toISOString()}`);
  }
  const turns = input.sessions.reduce((n, s) => n + (s.numTurns ?? 0), 0);
  const cost = input.sessions.reduce((n, s) => n + (s.costUsd ?? 0), 0);
  if (turns > 0) facts.push(`**Turns:** ${turns}`);
  if (cost > 0) facts.push(`**Cost:** $${cost.toFixed(2)}`);
  if (input.sessions.length > 1)
    facts.push(
      `**Sessions:** ${input.sessions.map((s) => `${s.seq} ${s.kind}${s.outcome ? ` (${s.outcome})` : ""}`).join(", ")}`,
    );
  if (run.sandboxed === true) facts.push("**Sandbox:** on");
  if (run.sandboxed === false) facts.push("**Sandbox:** ⚠️ off");
  if (run.forgeToken) facts.push("**Forge token:** ⚠️ given to the agent");
  lines.push(facts.join(" · "));

  if (input.phases.length > 0) {
    const shown = input.phases.slice(-TIMELINE_LIMIT);
    const skipped = input.phases.length - shown.length;
    lines.push("", "| time (UTC) | phase | detail |", "| --- | --- | --- |");
    if (skipped > 0) lines.push(`| … | ${skipped} earlier | |`);
    for (const p of shown) {
      const detail = (p.detail ?? "").split("\n")[0]?.replaceAll("|", "\\|").slice(0, 120) ?? "";
      lines.push(`| ${time(p.at)} | \`${p.phase}\` | ${detail} |`);
    }
  }

  const open = input.escalations.find((e) => e.state === "open");
  if (open) {
    lines.push("", `❓ **Waiting for an answer** (see the question below) until ${open.deadlineAt.toISOString()}.`);
  }

  if (["done", "failed", "crashed", "timed_out", "cancelled", "skipped"].includes(run.status)) {
    lines.push("", `**Outcome:** ${run.status.replace("_", " ")}${run.skipReason ? ` (${run.skipReason})` : ""}`);
    if (run.detail) lines.push(`**Why:** ${run.detail.split("\n")[0]}`);
    const w = input.worktree;
    if (w?.state === "preserved") {
      lines.push(
        `**Worktree kept for debugging:** \`${w.path}\` (on ${w.instanceId}) until ${w.expiresAt?.toISOString() ?? "?"}`,
      );
    }
    if (run.status !== "done" && run.status !== "cancelled" && run.status !== "skipped") {
      const tail = [...input.sessions].reverse().find((s) => s.outputTail)?.outputTail;
      if (tail) {
        const last = tail.trimEnd().split("\n").slice(-LOG_LINES).join("\n");
        lines.push("", "<details><summary>Last lines of output</summary>", "", codeBlock(last), "", "</details>");
      }
    }
  }
  return `${lines.join("\n")}\n`;
}

/** Loads what the status comment of a run shows and renders it (the outbox scrubs it when sending). */
export async function renderStatusFor(
  database: Database,
  runId: number,
  now = new Date(),
): Promise<string | undefined> {
  const [run] = await database.db.select().from(runs).where(eq(runs.id, runId));
  if (!run) return undefined;
  const [phaseRows, sessionRows, worktreeRows, escalationRows] = await Promise.all([
    database.db.select().from(phases).where(eq(phases.runId, runId)).orderBy(asc(phases.id)),
    database.db.select().from(sessions).where(eq(sessions.runId, runId)).orderBy(asc(sessions.seq)),
    database.db.select().from(worktrees).where(eq(worktrees.runId, runId)).orderBy(desc(worktrees.id)).limit(1),
    database.db.select().from(escalations).where(eq(escalations.runId, runId)).orderBy(asc(escalations.id)),
  ]);
  return renderStatus({
    run,
    phases: phaseRows,
    sessions: sessionRows,
    worktree: worktreeRows[0],
    escalations: escalationRows,
    now,
  });
}
