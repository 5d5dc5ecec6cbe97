import { Hono } from "hono";
import type { AppEnv } from "../src/app.js";
import { AppError, errorMessage } from "../src/errors.js";
import type { Services } from "../src/services.js";

const READINESS_TIMEOUT_MS = 2_000;

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
    return c.json({ status: "ready", database: "ok", database_kind: services.database.kind });
  });

  return app;
}
