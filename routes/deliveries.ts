import { Hono } from "hono";
import { z } from "zod";
import { DELIVERY_OUTCOMES } from "../db/schema/index.js";
import type { AppEnv } from "../src/app.js";
import { listDeliveries } from "../src/forge/deliveries.js";
import type { Services } from "../src/services.js";
import { queryParams } from "./input.js";

export const listQuery = z
  .object({
    outcome: z.enum(DELIVERY_OUTCOMES).optional(),
    project: z.string().optional(),
    event: z.string().optional(),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: z.string().optional(),
  })
  .strict();

/** GET /api/deliveries: what the forges sent, what it fired, and why not when it fired nothing. */
export function deliveryRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/api/deliveries", async (c) => c.json(await listDeliveries(services.database, queryParams(c, listQuery))));
  return app;
}
