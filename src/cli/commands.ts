import type { RunJson } from "../runs/run-service.js";
import { type ApiClient, ApiError } from "./api-client.js";
import { bytes, duration, type Output, paintStatus, relative, table } from "./format.js";

export type { Output };

const println = (out: Output, text = "") => out.write(`${text}\n`);

const FINAL = new Set(["done", "failed", "crashed", "timed_out", "cancelled", "skipped"]);
const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

interface RunDetail extends RunJson {
  phases: { phase: string; detail: string | null; at: string }[];
  sessions: {
    seq: number;
    kind: string;
    pid: number | null;
    started_at: string;
    ended_at: string | null;
    exit_code: number | null;
    signal: string | null;
    outcome: string | null;
    detail: string | null;
    output_tail: string | null;
  }[];
  worktree: { id: number; path: string; state: string; reason: string | null; expires_at: string | null } | null;
  escalations: { state: string; question: string; deadline_at: string }[];
}

interface WorktreeJson {
  id: number;
  run_id: number | null;
  project: string;
  formula: string;
  path: string;
  state: string;
  reason: string | null;
  instance_id: string | null;
  size_bytes: number | null;
  created_at: string;
  preserved_at: string | null;
  expires_at: string | null;
}

interface PurgeEntry {
  id: number;
  run_id: number | null;
  project: string;
  formula: string;
  path: string;
  reason: string;
}

function elapsed(run: RunJson, now = Date.now()): string {
  if (!run.started_at) return "-";
  return duration((run.finished_at ? Date.parse(run.finished_at) : now) - Date.parse(run.started_at));
}

/** What to type to answer a run's question. */
export function replyHint(id: string | number): string {
  return `answer with: formula-runner reply ${id} --body "..."  (or reply on the issue)`;
}

/** What to type to follow a run. */
export function followHint(id: string | number): string {
  return `follow it with: formula-runner logs ${id} --follow  (or formula-runner runs show ${id})`;
}

/** How a run ended, in words: `done after 12s`, `skipped (busy): ...` (a run that never started took no time). */
export function outcomeLine(run: RunJson): string {
  const how = run.started_at
    ? `${run.status} after ${elapsed(run)}`
    : `${run.status}${run.skip_reason ? ` (${run.skip_reason.replaceAll("_", " ")})` : ""}`;
  return `${how}${run.detail ? `: ${run.detail}` : ""}`;
}

/** `run FORMULA`: dispatch, and with `--wait` follow it to the end (exit 0 only if done). */
export async function runCommand(
  client: ApiClient,
  args: { formula: string; project?: string; issue?: number; wait: boolean; actor: string; pollMs?: number },
  out: Output,
  err: Output,
): Promise<number> {
  const run = await client.request<RunJson>("POST", "/api/runs", {
    formula: args.formula,
    ...(args.project !== undefined && { project: args.project }),
    ...(args.issue !== undefined && { issue: args.issue }),
    actor: args.actor,
  });
  println(out, `run ${run.id} queued: ${run.formula} on ${run.project}${run.issue ? ` (issue #${run.issue})` : ""}`);
  if (!args.wait) {
    println(out, followHint(run.id));
    return 0;
  }

  const tty = out.isTTY === true;
  let lastLine = "";
  let lastPhaseCount = 0;
  let frame = 0;
  let current: RunDetail = run as RunDetail;
  for (;;) {
    current = await client.request<RunDetail>("GET", `/api/runs/${run.id}`);
    const phaseList = current.phases ?? [];
    for (const phase of phaseList.slice(lastPhaseCount)) {
      if (tty) out.write("\r\x1b[K");
      println(
        out,
        `  ${new Date(phase.at).toISOString().slice(11, 19)}  PHASE:${phase.phase}${phase.detail ? `  ${phase.detail.split("\n")[0]}` : ""}`,
      );
    }
    lastPhaseCount = phaseList.length;
    if (FINAL.has(current.status) || current.status === "escalated") break;
    if (tty) {
      const line = `${SPINNER[frame++ % SPINNER.length]} run ${run.id} ${current.status} · phase ${current.phase ?? "-"} · ${elapsed(current)}`;
      out.write(`\r\x1b[K${line}`);
      lastLine = line;
    } else if (current.status !== lastLine) {
      println(out, `  ${current.status}`);
      lastLine = current.status;
    }
    await new Promise((resolve) => setTimeout(resolve, args.pollMs ?? 500));
  }
  if (tty) out.write("\r\x1b[K");
  println(out, `run ${run.id} ${paintStatus(out, current.status, outcomeLine(current))}`);
  if (current.worktree?.state === "preserved") {
    println(
      out,
      `worktree kept for debugging: ${current.worktree.path} (expires ${relative(current.worktree.expires_at)})`,
    );
  }
  if (current.status === "escalated") {
    const question = current.escalations?.find((e) => e.state === "open")?.question;
    if (question) println(err, `the agent asked:\n${question}`);
    println(err, replyHint(run.id));
  }
  return current.status === "done" ? 0 : 1;
}

export async function runsList(
  client: ApiClient,
  filter: { status?: string; formula?: string; project?: string; limit?: number; json: boolean },
  out: Output,
): Promise<number> {
  const query = new URLSearchParams();
  for (const key of ["status", "formula", "project"] as const) if (filter[key]) query.set(key, filter[key] as string);
  query.set("limit", String(filter.limit ?? 50));
  const page = await client.request<{ runs: RunJson[]; next_cursor: string | null }>("GET", `/api/runs?${query}`);
  if (filter.json) {
    println(out, JSON.stringify(page, null, 2));
    return 0;
  }
  if (page.runs.length === 0) {
    println(out, "No runs.");
    return 0;
  }
  println(
    out,
    table(
      ["ID", "STATUS", "FORMULA", "PROJECT", "ISSUE", "PHASE", "TRIGGER", "QUEUED", "TOOK"],
      page.runs.map((r) => [
        String(r.id),
        paintStatus(out, r.status, r.skip_reason ? `${r.status} (${r.skip_reason})` : r.status),
        r.formula,
        r.project,
        r.issue ? `#${r.issue}` : "-",
        r.phase ?? "-",
        r.trigger.kind,
        relative(r.queued_at),
        elapsed(r),
      ]),
    ),
  );
  if (page.next_cursor) println(out, `(more: --limit ${Math.min(500, (filter.limit ?? 50) * 2)})`);
  return 0;
}

export async function runsShow(client: ApiClient, id: string, json: boolean, out: Output): Promise<number> {
  const run = await client.request<RunDetail>("GET", `/api/runs/${encodeURIComponent(id)}`);
  if (json) {
    println(out, JSON.stringify(run, null, 2));
    return 0;
  }
  const lines = [
    `run ${run.id}: ${run.formula} on ${run.project}${run.issue ? `, issue #${run.issue}` : ""}`,
    `status:   ${paintStatus(out, run.status)}${run.skip_reason ? ` (${run.skip_reason})` : ""}${run.detail ? ` - ${run.detail}` : ""}`,
    `trigger:  ${run.trigger.kind} (${run.trigger.ref})`,
    `queued:   ${run.queued_at}`,
    `started:  ${run.started_at ?? "-"}`,
    `finished: ${run.finished_at ?? "-"}  (took ${elapsed(run)})`,
    `instance: ${run.instance_id ?? "-"}`,
  ];
  if (run.worktree) {
    lines.push(
      `worktree: ${run.worktree.path} [${run.worktree.state}${run.worktree.reason ? `: ${run.worktree.reason}` : ""}]${run.worktree.expires_at ? ` expires ${run.worktree.expires_at}` : ""}`,
    );
  }
  println(out, lines.join("\n"));
  if (run.phases.length > 0) {
    println(out, "\nphases:");
    for (const p of run.phases) println(out, `  ${p.at}  ${p.phase}${p.detail ? `  ${p.detail.split("\n")[0]}` : ""}`);
  }
  if (run.sessions.length > 0) {
    println(out, "\nsessions:");
    println(
      out,
      table(
        ["#", "KIND", "PID", "OUTCOME", "EXIT", "STARTED", "ENDED"],
        run.sessions.map((s) => [
          String(s.seq),
          s.kind,
          s.pid === null ? "-" : String(s.pid),
          s.outcome ?? "running",
          s.exit_code !== null ? String(s.exit_code) : (s.signal ?? "-"),
          s.started_at,
          s.ended_at ?? "-",
        ]),
      )
        .split("\n")
        .map((l) => `  ${l}`)
        .join("\n"),
    );
  }
  for (const e of run.escalations)
    println(out, `\nescalation (${e.state}, deadline ${e.deadline_at}):\n  ${e.question.replaceAll("\n", "\n  ")}`);
  return 0;
}

export async function worktreesList(
  client: ApiClient,
  filter: { state?: string; project?: string; json: boolean },
  out: Output,
): Promise<number> {
  const query = new URLSearchParams();
  if (filter.state) query.set("state", filter.state);
  if (filter.project) query.set("project", filter.project);
  const { worktrees } = await client.request<{ worktrees: WorktreeJson[] }>("GET", `/api/worktrees?${query}`);
  if (filter.json) {
    println(out, JSON.stringify({ worktrees }, null, 2));
    return 0;
  }
  if (worktrees.length === 0) {
    println(out, `No ${filter.state ?? ""} worktrees.`.replace("  ", " "));
    return 0;
  }
  println(
    out,
    table(
      ["ID", "STATE", "PROJECT", "FORMULA", "RUN", "REASON", "AGE", "EXPIRES", "SIZE", "PATH"],
      worktrees.map((w) => [
        String(w.id),
        paintStatus(out, w.state),
        w.project,
        w.formula,
        w.run_id === null ? "-" : String(w.run_id),
        w.reason ?? "-",
        relative(w.created_at),
        w.expires_at ? relative(w.expires_at) : "-",
        bytes(w.size_bytes),
        w.path,
      ]),
    ),
  );
  return 0;
}

export async function worktreesPurge(
  client: ApiClient,
  args: { id?: string; olderThan?: string; dryRun: boolean; json: boolean },
  out: Output,
): Promise<number> {
  let purged: PurgeEntry[];
  let kept: PurgeEntry[];
  if (args.id !== undefined) {
    if (args.dryRun) {
      const { worktree } = await client.request<{ worktree: WorktreeJson }>(
        "GET",
        `/api/worktrees/${encodeURIComponent(args.id)}`,
      );
      const entry = {
        ...worktree,
        reason: worktree.state === "preserved" ? "would be removed" : `state is ${worktree.state}`,
      };
      purged = worktree.state === "preserved" ? [entry] : [];
      kept = worktree.state === "preserved" ? [] : [entry];
    } else {
      try {
        const { worktree: removed, request_id } = await client.request<{ worktree: WorktreeJson; request_id?: number }>(
          "DELETE",
          `/api/worktrees/${encodeURIComponent(args.id)}`,
        );
        // On another instance's disk: that instance removes it (request_id), within seconds.
        purged = [
          {
            ...removed,
            reason:
              request_id === undefined
                ? "removed on request"
                : `asked instance ${removed.instance_id}, whose disk holds it, to remove it (request ${request_id})`,
          },
        ];
        kept = [];
      } catch (error) {
        // Removed before: nothing purged now, listed as kept with the reason (as a purge by id does).
        const worktree = error instanceof ApiError ? (error.details.worktree as WorktreeJson | undefined) : undefined;
        if (error instanceof ApiError && error.status === 409 && worktree?.state === "removed") {
          purged = [];
          kept = [{ ...worktree, reason: error.message.replace(/^worktree \d+ was not removed: /, "") }];
        } else {
          throw error;
        }
      }
    }
  } else {
    ({ purged, kept } = await client.request<{ purged: PurgeEntry[]; kept: PurgeEntry[] }>(
      "POST",
      "/api/worktrees/purge",
      {
        older_than: args.olderThan ?? "24h",
        dry_run: args.dryRun,
      },
    ));
  }
  if (args.json) {
    println(out, JSON.stringify({ dry_run: args.dryRun, purged, kept }, null, 2));
    return 0;
  }
  const verb = args.dryRun ? "would purge" : "purged";
  if (purged.length === 0 && kept.length === 0) {
    println(out, "Nothing to purge.");
    return 0;
  }
  const rows = (entries: PurgeEntry[]) =>
    entries.map((e) => [
      String(e.id),
      e.project,
      e.formula,
      e.run_id === null ? "-" : String(e.run_id),
      e.reason,
      e.path,
    ]);
  println(out, `${verb} ${purged.length} worktree(s)${kept.length > 0 ? `, kept ${kept.length}` : ""}`);
  if (purged.length > 0) println(out, table(["ID", "PROJECT", "FORMULA", "RUN", "WHY", "PATH"], rows(purged)));
  if (kept.length > 0) {
    println(out, "\nkept:");
    println(out, table(["ID", "PROJECT", "FORMULA", "RUN", "WHY", "PATH"], rows(kept)));
  }
  return 0;
}
