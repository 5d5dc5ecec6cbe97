import { Hono } from "hono";
import { z } from "zod";
import { type InstanceRequest, WORKTREE_STATES, type Worktree } from "../db/schema/index.js";
import type { AppEnv } from "../src/app.js";
import { AppError } from "../src/errors.js";
import { durationProblem, parseDuration } from "../src/formulas/duration.js";
import type { Services } from "../src/services.js";
import { worktreeJson } from "../src/worktrees/worktree-manager.js";
import { idParam, jsonBody, queryParams } from "./input.js";

export const listQuery = z
  .object({
    state: z.enum(WORKTREE_STATES).optional(),
    project: z.string().optional(),
    formula: z.string().optional(),
    run_id: z.coerce.number().int().positive().optional(),
    limit: z.coerce.number().int().min(1).max(10_000).default(1000),
    cursor: z.coerce.number().int().positive().optional(),
  })
  .strict();

export const purgeBody = z
  .object({
    /** Hours, any non-negative number (0.5, 24). */
    older_than_hours: z
      .number()
      .min(0)
      .max(24 * 365)
      .optional(),
    /** The same age as a duration string, as formulas and the CLI write it: `90m`, `1.5h`, `2d`. */
    older_than: z
      .string()
      .refine((text) => parseDuration(text) !== undefined, { error: (issue) => durationProblem(String(issue.input)) })
      .optional(),
    dry_run: z.boolean().default(false),
  })
  .strict()
  .refine((body) => body.older_than === undefined || body.older_than_hours === undefined, {
    error: "give older_than or older_than_hours, not both",
    path: ["older_than"],
  });

export function worktreeRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.get("/api/worktrees", async (c) => {
    const q = queryParams(c, listQuery);
    const page = await services.worktrees.listJson({
      state: q.state,
      project: q.project,
      formula: q.formula,
      runId: q.run_id,
      limit: q.limit,
      beforeId: q.cursor,
    });
    // A full page may have more behind it; the next page of a list that ended exactly here is empty.
    const next = page.count === q.limit && page.lastId !== null ? JSON.stringify(String(page.lastId)) : "null";
    c.header("content-type", "application/json; charset=utf-8");
    return c.body(`{"worktrees":${page.json},"next_cursor":${next}}`);
  });

  app.get("/api/worktrees/:id", async (c) => {
    const id = idParam(c);
    const worktree = await services.worktrees.get(id);
    if (!worktree) throw new AppError({ code: "not_found", message: `no worktree ${id}` });
    return c.json({ worktree: worktreeJson(worktree) });
  });

  app.delete("/api/worktrees/:id", async (c) => {
    const id = idParam(c);
    const { worktree, alreadyRemoved, request } = await deleteWorktree(services, id);
    if (request) {
      return c.json({ request_id: request.id, worktree: worktreeJson(worktree), follow: `/api/worktrees/${id}` }, 202);
    }
    if (alreadyRemoved) {
      // Nothing was purged now: say so, as a purge by id lists it (docs/worktrees.md).
      const when = worktree.removedAt ? ` at ${worktree.removedAt.toISOString()}` : "";
      throw new AppError({
        code: "conflict",
        message: `worktree ${id} was not removed: already removed${when}${worktree.removedBy ? ` (by ${worktree.removedBy})` : ""}`,
        details: { worktree: worktreeJson(worktree) },
      });
    }
    const after = await services.worktrees.get(id);
    return c.json({ worktree: after ? worktreeJson(after) : null });
  });

  app.post("/api/worktrees/purge", async (c) => {
    const body = await jsonBody(c, purgeBody);
    const result = await services.worktrees.purge({
      olderThanMs:
        body.older_than !== undefined
          ? (parseDuration(body.older_than) as number)
          : (body.older_than_hours ?? 24) * 3_600_000,
      dryRun: body.dry_run,
      by: "api",
      projects: services.config.projects,
    });
    return c.json({ dry_run: body.dry_run, ...result });
  });

  return app;
}

/**
 * Deletes one preserved worktree for a person (the API or the dashboard): 404 when unknown,
 * 409 while a run uses it or when the purge kept it (with the reason). A worktree removed
 * before is returned as such: whether that is an error is the caller's to say. One on
 * another instance's disk is asked of that instance (`request`), which removes it within seconds.
 */
export async function deleteWorktree(
  services: Services,
  id: number,
): Promise<{ worktree: Worktree; alreadyRemoved: boolean; request?: InstanceRequest }> {
  const worktree = await services.worktrees.get(id);
  if (!worktree) throw new AppError({ code: "not_found", message: `no worktree ${id}` });
  if (worktree.state === "active") {
    throw new AppError({
      code: "conflict",
      message: `worktree ${id} is in use by run ${worktree.runId}; cancel the run first`,
    });
  }
  if (worktree.state === "removed") return { worktree, alreadyRemoved: true };
  if (worktree.instanceId !== services.instanceId) {
    const request = await services.requests.ask({
      kind: "delete_worktree",
      owner: worktree.instanceId,
      worktreeId: id,
      ...(worktree.runId === null ? {} : { runId: worktree.runId }),
    });
    return { worktree, alreadyRemoved: false, request };
  }
  const result = await services.worktrees.purge({ ids: [id], by: "api", projects: services.config.projects });
  const kept = result.kept.find((k) => k.id === id);
  if (kept) throw new AppError({ code: "conflict", message: `worktree ${id} was not removed: ${kept.reason}` });
  return { worktree, alreadyRemoved: false };
}
