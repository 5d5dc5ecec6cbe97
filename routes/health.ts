import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { Hono } from "hono";
import type { AppEnv } from "../src/app.js";
import { AppError, errorMessage } from "../src/errors.js";
import type { Services } from "../src/services.js";

const READINESS_TIMEOUT_MS = 2_000;

/**
 * Why `dir` cannot take a new file now (missing, read-only, full), or undefined when it
 * can: a small file is written and removed, which also catches a full disk (ENOSPC),
 * unlike a permission check. A missing WORKTREE_ROOT is made on first use, so a missing
 * directory whose parent is writable counts as writable.
 */
async function notWritable(dir: string, instanceId: string): Promise<string | undefined> {
  const probe = path.join(dir, `.ready-${instanceId}-${process.pid}`);
  try {
    await writeFile(probe, "ready\n", { mode: 0o600 });
    await rm(probe, { force: true });
    return undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" && path.dirname(dir) !== dir) {
      return notWritable(path.dirname(dir), instanceId);
    }
    return errorMessage(error);
  }
}

/** Liveness (the process answers) and readiness (it can do work: database up, not stopping). */
export function healthRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.get("/healthz", (c) => c.json({ status: "ok", version: services.version, instance_id: services.instanceId }));

  app.get("/readyz", async (c) => {
    if (!services.intake.accepting) {
      throw new AppError({ code: "unavailable", message: "shutting down", details: { database: "unknown" } });
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        services.database.ping(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${READINESS_TIMEOUT_MS} ms`)),
            READINESS_TIMEOUT_MS,
          );
        }),
      ]);
    } catch (error) {
      c.get("log")().warn({ err: error }, "readiness check: database unavailable");
      throw new AppError({
        code: "unavailable",
        message: `database unavailable: ${errorMessage(error)}`,
        details: { database: "unavailable" },
      });
    } finally {
      clearTimeout(timer);
    }
    const { dataDir, worktreeRoot } = services.config.settings;
    for (const [name, dir] of [
      ["data_dir", dataDir],
      ["worktree_root", worktreeRoot],
    ] as const) {
      const problem = await notWritable(dir, services.instanceId);
      if (problem) {
        c.get("log")().warn({ dir, problem }, `readiness check: ${name} not writable`);
        throw new AppError({
          code: "unavailable",
          message: `${name === "data_dir" ? "DATA_DIR" : "WORKTREE_ROOT"} not writable: ${problem}`,
          details: { database: "ok", [name]: "not writable" },
        });
      }
    }
    return c.json({ status: "ready", database: "ok", database_kind: services.database.kind });
  });

  return app;
}
