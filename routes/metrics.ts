import { Hono } from "hono";
import type { AppEnv } from "../src/app.js";
import type { Services } from "../src/services.js";

/**
 * Prometheus metrics. Outside /api and without a token, like /healthz: scrapers rarely
 * send a bearer token, and the answer holds counts and slugs only, never secrets.
 */
export function metricsRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.get("/metrics", async (c) =>
    c.body(await services.metrics.text(), 200, { "content-type": services.metrics.contentType }),
  );

  return app;
}
