import { open, stat } from "node:fs/promises";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import { RUN_STATUSES, type RunStatus } from "../db/schema/index.js";
import type { AppEnv } from "../src/app.js";
import { AppError } from "../src/errors.js";
import { requestJson } from "../src/fleet/owner-requests.js";
import { MAX_INT32 } from "../src/input-limits.js";
import { MAX_OUTPUTS_PER_REQUEST } from "../src/outputs/outputs-service.js";
import { runJson } from "../src/runs/run-service.js";
import type { Services } from "../src/services.js";
import { idParam, jsonBody, queryParams } from "./input.js";

export const dispatchBody = z
  .object({
    formula: z.string().min(1),
    project: z.string().min(1).optional(),
    issue: z.number().int().positive().max(MAX_INT32).optional(),
    actor: z.string().min(1).max(200).optional(),
  })
  .strict();

export const replyBody = z
  .object({
    body: z.string().trim().min(1, "must not be empty").max(65_536),
    author: z.string().min(1).max(100).optional(),
  })
  .strict();

/** One output object (`{"type": ...}`) or `{outputs: [...]}`; each object is judged like a line of the outputs file. */
export const outputsBody = z.union([
  z.object({ outputs: z.array(z.record(z.string(), z.unknown())).min(1).max(MAX_OUTPUTS_PER_REQUEST) }).strict(),
  z.looseObject({ type: z.string() }),
]);

export const listQuery = z
  .object({
    status: z
      .string()
      .optional()
      .transform((text, ctx) => {
        if (text === undefined || text === "") return undefined;
        const values = text.split(",").map((s) => s.trim());
        const bad = values.filter((v) => !(RUN_STATUSES as readonly string[]).includes(v));
        if (bad.length > 0) {
          ctx.addIssue({
            code: "custom",
            message: `unknown status ${bad.join(", ")}; one of ${RUN_STATUSES.join(", ")}`,
          });
          return z.NEVER;
        }
        return values as RunStatus[];
      }),
    formula: z.string().optional(),
    project: z.string().optional(),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: z.string().optional(),
  })
  .strict();

/** Final statuses (and `escalated`: the session is over) end a followed log. */
const LOG_END_STATUSES = new Set(["done", "failed", "crashed", "timed_out", "cancelled", "skipped", "escalated"]);
/** Followers poll this often when no write wakes them (PGlite, a missed notification, a status change). */
const FOLLOW_POLL_MS = 1_000;
const FOLLOW_CHUNKS_AT_ONCE = 64;
/** SSE keep-alive comment interval. */
export const KEEP_ALIVE_MS = 15_000;
/** The disk fallback serves at most the last 8 MiB. */
const MAX_DISK_LOG_BYTES = 8 * 1024 * 1024;

export function runRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.post("/api/runs", async (c) => {
    const body = await jsonBody(c, dispatchBody);
    const run = await services.runs.dispatch({
      formula: body.formula,
      project: body.project,
      issue: body.issue,
      actor: body.actor ?? "api",
    });
    return c.json(runJson(run, services.secrets), 201);
  });

  app.get("/api/runs", async (c) => {
    const query = queryParams(c, listQuery);
    const page = await services.runs.list(query);
    return c.json({ runs: page.runs.map((r) => runJson(r, services.secrets)), next_cursor: page.nextCursor });
  });

  app.get("/api/runs/:id", async (c) => {
    const id = idParam(c);
    const [detail, outputs] = await Promise.all([services.runs.detail(id), services.outputs.list(id)]);
    return c.json({ ...detail, outputs });
  });

  app.post("/api/runs/:id/cancel", async (c) => {
    const id = idParam(c);
    const { run, request } = await services.runs.cancel(id);
    if (request) {
      // Running on another instance: that one stops the agent; the run shows it.
      return c.json({ ...runJson(run, services.secrets), request_id: request.id, follow: `/api/runs/${id}` }, 202);
    }
    return c.json(runJson(run, services.secrets), run.status === "cancelled" ? 200 : 202);
  });

  /** A request made to another instance, to follow until it is done or failed. */
  app.get("/api/requests/:id", async (c) => {
    const id = idParam(c);
    const request = await services.requests.get(id);
    if (!request) throw new AppError({ code: "not_found", message: `no request ${id}` });
    return c.json({ request: requestJson(request) });
  });

  /** Answers the run's open question, the same way a permitted reply on the issue does. */
  app.post("/api/runs/:id/reply", async (c) => {
    const id = idParam(c);
    const body = await jsonBody(c, replyBody);
    const escalation = await services.escalations.replyViaApi(id, body.body, body.author ?? "api");
    return c.json({ run_id: id, escalation_id: escalation.id, state: escalation.state, resuming: true }, 202);
  });

  /** The agent's forge-write requests (safe outputs), decided at once: 202 with the decisions. */
  app.post("/api/runs/:id/outputs", async (c) => {
    const id = idParam(c);
    const body = await jsonBody(c, outputsBody);
    const items = "outputs" in body && Array.isArray(body.outputs) ? body.outputs : [body];
    const decisions = await services.outputs.append(id, items);
    return c.json({ run_id: id, outputs: decisions }, 202);
  });

  /**
   * The run's log from the database, so any instance serves it (a run from before logs were
   * stored there falls back to this instance's disk file). `?follow=1` streams it as
   * server-sent events (`log` events whose id is the byte offset to resume from, then
   * `end`), waking on each write and sending a keep-alive comment every 15 s.
   */
  app.get("/api/runs/:id/log", async (c) => {
    const id = idParam(c);
    await services.runs.get(id);
    const scrub = (text: string) => services.secrets.scrub(text);
    if (c.req.query("follow") !== "1" && c.req.query("follow") !== "true") {
      const stored = await services.runLog.read(id);
      if (stored.text === "" && stored.droppedBytes === 0)
        return c.text(scrub(await diskLog(await services.runs.logFile(id))));
      const note = stored.droppedBytes > 0 ? `[earlier output left out: ${stored.droppedBytes} bytes]\n` : "";
      return c.text(scrub(note + stored.text));
    }

    const lastEventId = Number(c.req.header("last-event-id") ?? c.req.query("offset") ?? 0);
    let offset = Number.isSafeInteger(lastEventId) && lastEventId > 0 ? lastEventId : 0;
    return streamSSE(c, async (stream) => {
      const aborted = new AbortController();
      stream.onAbort(() => aborted.abort());
      let lastSent = Date.now();
      while (!aborted.signal.aborted && services.intake.accepting) {
        // Status first: the log is complete in the database before a run's status changes,
        // so "final, and no chunk after it" means the end.
        const { status } = await services.runs.get(id);
        const chunks = await services.runLog.chunksAfter(id, offset, FOLLOW_CHUNKS_AT_ONCE);
        for (const chunk of chunks) {
          let data = chunk.data;
          if (chunk.offset < offset)
            data = Buffer.from(data)
              .subarray(offset - chunk.offset)
              .toString("utf8");
          else if (chunk.offset > offset) data = `[earlier output left out: ${chunk.offset - offset} bytes]\n${data}`;
          offset = chunk.offset + chunk.bytes;
          // Each event holds whole lines; the last newline is the event's own end.
          await stream.writeSSE({ event: "log", id: String(offset), data: scrub(data.replace(/\n$/, "")) });
          lastSent = Date.now();
        }
        if (chunks.length > 0) continue;
        if (LOG_END_STATUSES.has(status)) {
          await stream.writeSSE({ event: "end", data: JSON.stringify({ status }) });
          return;
        }
        if (Date.now() - lastSent >= KEEP_ALIVE_MS) {
          // A comment line: proxies and load balancers keep an idle stream open.
          await stream.write(": keep-alive\n\n");
          lastSent = Date.now();
        }
        const wait = Math.min(FOLLOW_POLL_MS, KEEP_ALIVE_MS - (Date.now() - lastSent));
        await services.runLog.waitForChange(id, Math.max(1, wait), aborted.signal);
      }
    });
  });

  return app;
}

/** The tail of a log file on this instance's disk ("" when there is none). */
async function diskLog(file: string): Promise<string> {
  const size = await stat(file).then(
    (st) => st.size,
    () => 0,
  );
  if (size === 0) return "";
  const start = Math.max(0, size - MAX_DISK_LOG_BYTES);
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    const text = buffer.subarray(0, bytesRead).toString("utf8");
    return start > 0 ? `[earlier output left out: ${start} bytes]\n${text}` : text;
  } finally {
    await handle.close();
  }
}
