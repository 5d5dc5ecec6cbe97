/**
 * CLI verbs that act on one run or list what the server holds: logs, cancel, reply,
 * deliveries, formulas. Each talks to the running server through the REST API only.
 */

import type { RunJson } from "../runs/run-service.js";
import type { ApiClient } from "./api-client.js";
import { followHint, type Output, outcomeLine, replyHint } from "./commands.js";
import { paintStatus, relative, table } from "./format.js";

const println = (out: Output, text = "") => out.write(`${text}\n`);

/** One server-sent event. */
export interface ServerEvent {
  event: string;
  id: string | undefined;
  data: string;
}

/**
 * Reads a text/event-stream body event by event (`event:`, `id:`, `data:` lines, a blank
 * line ends an event; several `data:` lines join with newlines).
 */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerEvent> {
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let id: string | undefined;
  let data: string[] = [];
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline = buffer.indexOf("\n");
    while (newline !== -1) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      newline = buffer.indexOf("\n");
      if (line === "") {
        if (data.length > 0) yield { event, id, data: data.join("\n") };
        event = "message";
        id = undefined;
        data = [];
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
  }
}

/** `logs ID [--follow]`: the run's log; with --follow, streamed until the run ends (exit 0 only if done). */
export async function logsCommand(
  client: ApiClient,
  args: { id: string; follow: boolean },
  out: Output,
  err: Output,
): Promise<number> {
  const id = encodeURIComponent(args.id);
  if (!args.follow) {
    out.write(await (await client.open(`/api/runs/${id}/log`)).text());
    return 0;
  }
  const res = await client.open(`/api/runs/${id}/log?follow=1`);
  if (!res.body) return 1;
  for await (const event of readEvents(res.body)) {
    if (event.event === "log") println(out, event.data);
    if (event.event === "end") {
      const { status } = JSON.parse(event.data) as { status: string };
      // A run that did not end done: say why (the detail is on the run, not in its log).
      const why =
        status === "done" || status === "escalated"
          ? status
          : outcomeLine(await client.request<RunJson>("GET", `/api/runs/${id}`));
      println(err, `run ${args.id} ${paintStatus(err, status, why)}`);
      if (status === "escalated") println(err, replyHint(args.id));
      return status === "done" ? 0 : 1;
    }
  }
  println(err, "the server closed the log stream before the run ended");
  return 1;
}

/** `cancel ID`: stops the run's agent; the run ends cancelled. */
export async function cancelCommand(client: ApiClient, id: string, out: Output): Promise<number> {
  const run = await client.request<{ id: number; status: string; instance_id: string | null; request_id?: number }>(
    "POST",
    `/api/runs/${encodeURIComponent(id)}/cancel`,
  );
  println(
    out,
    run.status === "cancelled"
      ? `run ${run.id} cancelled`
      : run.request_id !== undefined
        ? `run ${run.id}: asked instance ${run.instance_id}, which runs it, to stop it (request ${run.request_id}); \`runs show ${run.id}\` follows it`
        : `run ${run.id}: stopping (${run.status})`,
  );
  return 0;
}

/** `reply ID [--body TEXT]`: answers the run's open question (the text from stdin when --body is left out). */
export async function replyCommand(
  client: ApiClient,
  args: { id: string; body: string; author: string },
  out: Output,
): Promise<number> {
  const answer = await client.request<{ run_id: number; resuming: boolean }>(
    "POST",
    `/api/runs/${encodeURIComponent(args.id)}/reply`,
    { body: args.body, author: args.author },
  );
  println(out, `run ${answer.run_id}: answer delivered, the agent resumes`);
  println(out, followHint(answer.run_id));
  return 0;
}

interface DeliveryJson {
  id: string;
  forge: string;
  event: string;
  action: string | null;
  project: string | null;
  sender: string | null;
  outcome: string;
  reason: string | null;
  received_at: string;
  runs: number[];
}

/** `deliveries list`: what the forges sent, what it fired, and why not. */
export async function deliveriesList(
  client: ApiClient,
  filter: { outcome?: string; project?: string; limit?: number; json: boolean },
  out: Output,
): Promise<number> {
  const query = new URLSearchParams();
  if (filter.outcome) query.set("outcome", filter.outcome);
  if (filter.project) query.set("project", filter.project);
  query.set("limit", String(filter.limit ?? 50));
  const page = await client.request<{ deliveries: DeliveryJson[]; next_cursor: string | null }>(
    "GET",
    `/api/deliveries?${query}`,
  );
  if (filter.json) {
    println(out, JSON.stringify(page, null, 2));
    return 0;
  }
  if (page.deliveries.length === 0) {
    println(out, "No deliveries.");
    return 0;
  }
  println(
    out,
    table(
      ["RECEIVED", "EVENT", "PROJECT", "SENDER", "OUTCOME", "RUNS / WHY", "ID"],
      page.deliveries.map((d) => [
        relative(d.received_at),
        d.action ? `${d.event}/${d.action}` : d.event,
        d.project ?? "-",
        d.sender ?? "-",
        paintStatus(out, d.outcome),
        d.runs.length > 0 ? d.runs.join(",") : (d.reason ?? "-"),
        d.id,
      ]),
    ),
  );
  return 0;
}

interface FormulaListing {
  formulas: {
    name: string;
    description: string;
    projects: string[];
    triggers: {
      dispatch: boolean;
      schedule: { cron: string; next: string[] }[];
      issues: unknown;
      issue_comment: { command: string | null } | null;
      pull_request: unknown;
    };
  }[];
  problems: { text: string; severity: string }[];
}

function triggersOf(f: FormulaListing["formulas"][number]): string {
  const t = f.triggers;
  const parts = [
    ...t.schedule.map((s) => `cron ${s.cron}`),
    ...(t.issues ? ["issues"] : []),
    ...(t.issue_comment ? [t.issue_comment.command ? `comment ${t.issue_comment.command}` : "comments"] : []),
    ...(t.pull_request ? ["pull requests"] : []),
    ...(t.dispatch ? ["dispatch"] : []),
  ];
  return parts.join(", ") || "-";
}

function printFormulas(listing: FormulaListing, json: boolean, out: Output, err: Output): number {
  if (json) {
    println(out, JSON.stringify(listing, null, 2));
    return 0;
  }
  if (listing.formulas.length === 0) println(out, "No formulas.");
  else
    println(
      out,
      table(
        ["NAME", "FIRES ON", "TRIGGERS", "DESCRIPTION"],
        listing.formulas.map((f) => [
          f.name,
          f.projects.length > 0 ? f.projects.join(",") : "(no project)",
          triggersOf(f),
          f.description,
        ]),
      ),
    );
  if (listing.formulas.some((f) => f.projects.length === 0)) {
    println(
      out,
      "\n(no project): list the formula in a project's formulas = [...] for its schedules and webhooks to fire",
    );
  }
  for (const problem of listing.problems) println(err, `${problem.severity}: ${problem.text}`);
  return listing.problems.some((p) => p.severity === "error") ? 1 : 0;
}

/** `formulas list`: the formulas in force, where they fire, and any load problems (exit 1 on errors). */
export async function formulasList(client: ApiClient, json: boolean, out: Output, err: Output): Promise<number> {
  return printFormulas(await client.request<FormulaListing>("GET", "/api/formulas"), json, out, err);
}

/** `formulas reload`: the server reads the formulas directory again (what SIGHUP does). */
export async function formulasReload(client: ApiClient, json: boolean, out: Output, err: Output): Promise<number> {
  const listing = await client.request<FormulaListing>("POST", "/api/formulas/reload");
  if (!json) println(out, `reloaded: ${listing.formulas.length} formula(s)`);
  return printFormulas(listing, json, out, err);
}
