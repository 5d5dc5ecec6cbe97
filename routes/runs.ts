import { open, stat } from "node:fs/promises";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import { RUN_STATUSES, type RunStatus } from "../db/schema/index.js";
import type { AppEnv } from "../src/app.js";
import { MAX_OUTPUTS_PER_REQUEST } from "../src/outputs/outputs-service.js";
import { runJson } from "../src/runs/run-service.js";
import type { Services } from "../src/services.js";
import { idParam, jsonBody, queryParams } from "./input.js";

export const dispatchBody = z
  .object({
    formula: z.string().min(1),
    project: z.string().min(1).optional(),
    issue: z.number().int().positive().optional(),
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
const FOLLOW_POLL_MS = 250;
const MAX_LOG_BYTES_AT_ONCE = 1024 * 1024;

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
    const run = await services.runs.cancel(idParam(c));
    return c.json(runJson(run, services.secrets), run.status === "cancelled" ? 200 : 202);
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

  app.get("/api/runs/:id/log", async (c) => {
    const id = idParam(c);
    const file = await services.runs.logFile(id);
    const scrub = (text: string) => services.secrets.scrub(text);
    if (c.req.query("follow") !== "1" && c.req.query("follow") !== "true") {
      const size = await stat(file).then(
        (s) => s.size,
        () => 0,
      );
      const start = Math.max(0, size - 8 * MAX_LOG_BYTES_AT_ONCE);
      const text = size === 0 ? "" : await readRange(file, start, size);
      return c.text(scrub(start > 0 ? `[earlier output left out: ${start} bytes]\n${text}` : text));
    }

    const lastEventId = Number(c.req.header("last-event-id") ?? c.req.query("offset") ?? 0);
    let offset = Number.isSafeInteger(lastEventId) && lastEventId > 0 ? lastEventId : 0;
    return streamSSE(c, async (stream) => {
      let aborted = false;
      stream.onAbort(() => {
        aborted = true;
      });
      let partial: Buffer = Buffer.alloc(0);
      let lastStatusCheck = 0;
      let status = (await services.runs.get(id)).status;
      while (!aborted && services.intake.accepting) {
        const size = await stat(file).then(
          (s) => s.size,
          () => 0,
        );
        if (size > offset) {
          const end = Math.min(size, offset + MAX_LOG_BYTES_AT_ONCE);
          const chunk = Buffer.concat([partial, await readBytes(file, offset, end)]);
          offset = end;
          // Whole lines only: a secret split across two reads is still scrubbed, and a
          // character split across two reads is still decoded right.
          const cut = chunk.lastIndexOf(0x0a);
          partial = cut === -1 ? chunk : chunk.subarray(cut + 1);
          if (cut !== -1) {
            const data = scrub(chunk.subarray(0, cut).toString("utf8"));
            await stream.writeSSE({ event: "log", id: String(offset - partial.length), data });
          }
          continue;
        }
        if (LOG_END_STATUSES.has(status)) {
          if (partial.length > 0)
            await stream.writeSSE({ event: "log", id: String(offset), data: scrub(partial.toString("utf8")) });
          await stream.writeSSE({ event: "end", data: JSON.stringify({ status }) });
          return;
        }
        if (Date.now() - lastStatusCheck > 1000) {
          status = (await services.runs.get(id)).status;
          lastStatusCheck = Date.now();
          continue;
        }
        await stream.sleep(FOLLOW_POLL_MS);
      }
    });
  });

  return app;
}

async function readBytes(file: string, start: number, end: number): Promise<Buffer> {
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(end - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function readRange(file: string, start: number, end: number): Promise<string> {
  return (await readBytes(file, start, end)).toString("utf8");
}
