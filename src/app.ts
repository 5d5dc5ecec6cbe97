import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { requestId } from "hono/request-id";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { isDatabaseUnavailable } from "../db/unavailable.js";
import { dashboardRoutes } from "../routes/dashboard/index.js";
import { deliveryRoutes } from "../routes/deliveries.js";
import { formulaRoutes } from "../routes/formulas.js";
import { healthRoutes } from "../routes/health.js";
import { metricsRoutes } from "../routes/metrics.js";
import { openApiRoutes } from "../routes/openapi.js";
import { runRoutes } from "../routes/runs.js";
import { webhookRoutes } from "../routes/webhooks.js";
import { worktreeRoutes } from "../routes/worktrees.js";
import { requireApiAuth } from "./auth.js";
import { AppError, ERROR_STATUS, type ErrorCode } from "./errors.js";
import type { Logger } from "./logger.js";
import type { Services } from "./services.js";

const API_BODY_LIMIT = 1024 * 1024;
/** What a 503 tells clients to wait before retrying. */
const RETRY_AFTER_SECONDS = 5;

/** Typed per-request variables every route can read. */
export interface AppEnv {
  Variables: {
    requestId: string;
    /** The request's logger (bound to its request id), made on first use. */
    log: () => Logger;
  };
}

const codeForStatus = (status: number): ErrorCode => {
  const entry = Object.entries(ERROR_STATUS).find(([, s]) => s === status);
  return (entry?.[0] as ErrorCode | undefined) ?? (status >= 500 ? "internal" : "bad_request");
};

/**
 * The HTTP application: request ids, scoped loggers, the error envelope and the routes.
 * This file and `server.ts` are the composition root: the only files in src/ that
 * import from routes/.
 */
export function createApp(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.use(requestId());
  app.use(async (c, next) => {
    let child: Logger | undefined;
    const log = () => (child ??= services.log.child({ requestId: c.get("requestId") }));
    c.set("log", log);
    const started = performance.now();
    await next();
    // Probes and accepted deliveries would flood the log; the webhook service logs what matters.
    const quiet =
      c.req.path === "/healthz" || c.req.path === "/readyz" || c.req.path === "/metrics" || c.req.path === "/webhooks";
    const level = quiet && c.res.status < 400 ? "debug" : "info";
    if (services.log.isLevelEnabled(level))
      log()[level](
        { method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - started) },
        "request",
      );
  });

  app.onError((error, c) => {
    const request_id = c.get("requestId");
    if (error instanceof AppError && error.code === "unavailable") c.header("Retry-After", String(RETRY_AFTER_SECONDS));
    if (error instanceof AppError) {
      return c.json(
        { error: { code: error.code, message: error.message, ...error.details, request_id } },
        error.status as ContentfulStatusCode,
      );
    }
    if (error instanceof HTTPException) {
      const status = error.status as ContentfulStatusCode;
      return c.json(
        { error: { code: codeForStatus(status), message: error.message || "request failed", request_id } },
        status,
      );
    }
    if (isDatabaseUnavailable(error)) {
      // Not a bug of this request: the database is out of reach. Say when to try again.
      (c.get("log")?.() ?? services.log).warn({ err: error }, "database unavailable");
      c.header("Retry-After", String(RETRY_AFTER_SECONDS));
      return c.json(
        { error: { code: "unavailable", message: "database unavailable; try again later", request_id } },
        503,
      );
    }
    (c.get("log")?.() ?? services.log).error({ err: error }, "unhandled error");
    return c.json({ error: { code: "internal", message: "internal server error", request_id } }, 500);
  });

  app.notFound((c) =>
    c.json(
      {
        error: {
          code: "not_found",
          message: `no route for ${c.req.method} ${c.req.path}`,
          request_id: c.get("requestId"),
        },
      },
      404,
    ),
  );

  app.route("/", healthRoutes(services));
  app.route("/", metricsRoutes(services));
  app.route("/", webhookRoutes(services));
  app.route("/", openApiRoutes(services));
  app.use(
    "/api/*",
    requireApiAuth(services.apiToken, (runId) => services.runs.liveTokenHash(runId)),
  );
  app.use(
    "/api/*",
    bodyLimit({
      maxSize: API_BODY_LIMIT,
      onError: () => {
        throw new AppError({ code: "payload_too_large", message: `request body over ${API_BODY_LIMIT} bytes` });
      },
    }),
  );
  app.route("/", runRoutes(services));
  app.route("/", worktreeRoutes(services));
  app.route("/", formulaRoutes(services));
  app.route("/", deliveryRoutes(services));
  app.route("/", dashboardRoutes(services));

  return app;
}
