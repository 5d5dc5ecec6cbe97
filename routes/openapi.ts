import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { OpenAPIHono, z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { secureHeaders } from "hono/secure-headers";
import type { AppEnv } from "../src/app.js";
import type { Services } from "../src/services.js";
import {
  deliveryListSchema,
  errorEnvelope,
  formulaListSchema,
  healthSchema,
  instanceRequestSchema,
  outputsAcceptedSchema,
  purgeResultSchema,
  readySchema,
  replyAcceptedSchema,
  runCancelRequestedSchema,
  runListSchema,
  runSchema,
  runWithOutputsSchema,
  webhookAcceptedSchema,
  webhookDuplicateSchema,
  worktreeDeleteRequestedSchema,
  worktreeListSchema,
  worktreeSchema,
} from "./api-schemas.js";
import { listQuery as deliveryListQuery } from "./deliveries.js";
import { dispatchBody, outputsBody, replyBody, listQuery as runListQuery } from "./runs.js";
import { purgeBody, listQuery as worktreeListQuery } from "./worktrees.js";

type Method = "get" | "post" | "delete";

/** One answer of an operation: JSON checked by `schema`, or text of a content type. */
export interface ApiResponse {
  description: string;
  schema?: z.ZodType;
  /** For answers that are not JSON (logs, metrics, event streams). */
  text?: string;
}

/** One documented operation; the tests check every answer against it. */
export interface ApiOperation {
  method: Method;
  /** OpenAPI path, `{id}` for parameters. */
  path: string;
  summary: string;
  tag: string;
  /** Needs `Authorization: Bearer <API_TOKEN>`. */
  bearer: boolean;
  query?: z.ZodObject;
  body?: z.ZodType;
  responses: Record<number, ApiResponse>;
}

const idParam = z.object({
  id: z
    .string()
    .regex(/^\d+$/)
    .openapi({ param: { name: "id", in: "path" } }),
});
const error = (description: string): ApiResponse => ({ description, schema: errorEnvelope });
const json = (description: string, schema: z.ZodType): ApiResponse => ({ description, schema });
const unauthorized = { 401: error("missing or wrong bearer token") };
const invalid = { 400: error("invalid query or body: `problems` lists each field") };
const missing = { 404: error("no such resource") };

/**
 * Every route of the API. The document at /openapi.json is generated from this table and
 * the zod schemas that validate the requests (the routes' own) and describe the answers.
 */
export const API_OPERATIONS: readonly ApiOperation[] = [
  {
    method: "post",
    path: "/webhooks",
    summary: "Receive a forge webhook (GitHub, Gitea, Forgejo)",
    tag: "webhooks",
    bearer: false,
    body: z.unknown().describe("the forge's payload, signed with the project's webhook secret"),
    responses: {
      200: json("a delivery id seen before: nothing fired again", webhookDuplicateSchema),
      202: json("recorded, with the runs it queued", webhookAcceptedSchema),
      400: error("no repository, bad headers or not JSON"),
      401: error("the signature matches no project's webhook secret"),
      404: error("no project is configured for the repository"),
      413: error("body over 1 MiB"),
      503: error("shutting down: deliver again later"),
    },
  },
  {
    method: "get",
    path: "/api/formulas",
    summary: "Formulas with their triggers, next schedule times and load problems",
    tag: "formulas",
    bearer: true,
    responses: { 200: json("the formulas in force", formulaListSchema), ...unauthorized },
  },
  {
    method: "post",
    path: "/api/formulas/reload",
    summary: "Read the formulas directory again (what SIGHUP does)",
    tag: "formulas",
    bearer: true,
    responses: { 200: json("the formulas now in force", formulaListSchema), ...unauthorized },
  },
  {
    method: "post",
    path: "/api/runs",
    summary: "Dispatch a run of a formula that allows it",
    tag: "runs",
    bearer: true,
    body: dispatchBody,
    responses: {
      201: json("queued", runSchema),
      ...invalid,
      ...unauthorized,
      403: error("the formula does not allow dispatch"),
      404: error("no such formula or project"),
    },
  },
  {
    method: "get",
    path: "/api/runs",
    summary: "Runs, newest first",
    tag: "runs",
    bearer: true,
    query: runListQuery,
    responses: { 200: json("a page of runs", runListSchema), ...invalid, ...unauthorized },
  },
  {
    method: "get",
    path: "/api/runs/{id}",
    summary: "A run with its phases, sessions, worktree and escalations",
    tag: "runs",
    bearer: true,
    responses: { 200: json("the run", runWithOutputsSchema), ...unauthorized, ...missing },
  },
  {
    method: "post",
    path: "/api/runs/{id}/outputs",
    summary: "An agent's forge writes (safe outputs), decided at once; with the run's own token",
    tag: "runs",
    bearer: true,
    body: outputsBody,
    responses: {
      202: json("each output queued or refused, with the reason", outputsAcceptedSchema),
      ...invalid,
      ...unauthorized,
      ...missing,
      409: error("the run is not running"),
    },
  },
  {
    method: "post",
    path: "/api/runs/{id}/cancel",
    summary: "Cancel a run (stops its agent)",
    tag: "runs",
    bearer: true,
    responses: {
      200: json("cancelled", runSchema),
      202: json(
        "the run is running on another instance: asked it to stop the agent (request_id); the run turns cancelled within seconds",
        runCancelRequestedSchema,
      ),
      ...unauthorized,
      ...missing,
      409: error("the run already ended"),
    },
  },
  {
    method: "post",
    path: "/api/runs/{id}/reply",
    summary: "Answer a run's open escalation (as a reply on the issue would)",
    tag: "runs",
    bearer: true,
    body: replyBody,
    responses: {
      202: json("answer taken; the run resumes", replyAcceptedSchema),
      ...invalid,
      ...unauthorized,
      ...missing,
      409: error("no open question, or it was answered meanwhile"),
    },
  },
  {
    method: "post",
    path: "/api/runs/{id}/outputs",
    summary: "Hand in forge writes for the run (safe outputs); a run token may call this for its own run",
    tag: "runs",
    bearer: true,
    body: outputsBody,
    responses: {
      202: json(
        "each output decided: refused with a reason, or queued for the outbox",
        z.object({
          run_id: z.number().int(),
          outputs: z.array(
            z
              .object({ seq: z.number().int(), type: z.string(), status: z.string(), reason: z.string().nullable() })
              .loose(),
          ),
        }),
      ),
      ...invalid,
      ...unauthorized,
      403: error("a run token for another run, or a route a run token may not call"),
      ...missing,
      409: error("the run has ended"),
    },
  },
  {
    method: "get",
    path: "/api/runs/{id}/log",
    summary: "The run's log; `?follow=1` streams it as server-sent events (`log`, then `end`)",
    tag: "runs",
    bearer: true,
    query: z.object({
      follow: z.enum(["1", "true"]).optional(),
      offset: z.string().regex(/^\d+$/).optional().describe("byte offset to resume a followed log from"),
    }),
    responses: {
      200: { description: "the log text, or its event stream with follow", text: "text/plain" },
      ...unauthorized,
      ...missing,
    },
  },
  {
    method: "get",
    path: "/api/worktrees",
    summary: "Worktrees, newest first",
    tag: "worktrees",
    bearer: true,
    query: worktreeListQuery,
    responses: { 200: json("a page of worktrees", worktreeListSchema), ...invalid, ...unauthorized },
  },
  {
    method: "get",
    path: "/api/worktrees/{id}",
    summary: "One worktree",
    tag: "worktrees",
    bearer: true,
    responses: { 200: json("the worktree", z.object({ worktree: worktreeSchema })), ...unauthorized, ...missing },
  },
  {
    method: "delete",
    path: "/api/worktrees/{id}",
    summary: "Remove a preserved worktree",
    tag: "worktrees",
    bearer: true,
    responses: {
      200: json("removed (or already was)", z.object({ worktree: worktreeSchema.nullable() })),
      202: json(
        "the worktree is on another instance's disk: asked that instance to remove it (request_id); follow the worktree",
        worktreeDeleteRequestedSchema,
      ),
      ...unauthorized,
      ...missing,
      409: error("in use by an active run, or could not be removed"),
    },
  },
  {
    method: "get",
    path: "/api/requests/{id}",
    summary: "A request made to another instance (cancel a run, delete a worktree): pending, done or failed",
    tag: "runs",
    bearer: true,
    responses: { 200: json("the request", z.object({ request: instanceRequestSchema })), ...unauthorized, ...missing },
  },
  {
    method: "post",
    path: "/api/worktrees/purge",
    summary: "Remove preserved worktrees older than N hours (or say which, with dry_run)",
    tag: "worktrees",
    bearer: true,
    body: purgeBody,
    responses: { 200: json("what was (or would be) removed and kept", purgeResultSchema), ...invalid, ...unauthorized },
  },
  {
    method: "get",
    path: "/api/deliveries",
    summary: "Webhook deliveries, newest first, with what each fired or why it fired nothing",
    tag: "webhooks",
    bearer: true,
    query: deliveryListQuery,
    responses: { 200: json("a page of deliveries", deliveryListSchema), ...invalid, ...unauthorized },
  },
  {
    method: "get",
    path: "/healthz",
    summary: "Liveness",
    tag: "operations",
    bearer: false,
    responses: { 200: json("the process answers", healthSchema) },
  },
  {
    method: "get",
    path: "/readyz",
    summary: "Readiness: the database answers and the server is not stopping",
    tag: "operations",
    bearer: false,
    responses: { 200: json("ready", readySchema), 503: error("database unavailable or shutting down") },
  },
  {
    method: "get",
    path: "/metrics",
    summary: "Prometheus metrics",
    tag: "operations",
    bearer: false,
    responses: { 200: { description: "Prometheus text format", text: "text/plain" } },
  },
];

/** The documented operation a request goes to: `GET /api/runs/12/log` -> `/api/runs/{id}/log`. */
export function findOperation(method: string, pathname: string): ApiOperation | undefined {
  const verb = method.toLowerCase();
  const candidates = API_OPERATIONS.filter(
    (op) => op.method === verb && new RegExp(`^${op.path.replace(/\{[^}]+\}/g, "[^/]+")}$`).test(pathname),
  );
  // A literal path (`/api/worktrees/purge`) wins over a template (`/api/worktrees/{id}`).
  return candidates.find((op) => op.path === pathname) ?? candidates[0];
}

/** The OpenAPI 3.1 document of the API (built once; the schemas do not change at run time). */
export function openApiDocument(version: string) {
  const api = new OpenAPIHono();
  api.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
    type: "http",
    scheme: "bearer",
    description: "The server's API_TOKEN",
  });
  for (const op of API_OPERATIONS) {
    const params = op.path.includes("{id}") ? idParam : undefined;
    api.openAPIRegistry.registerPath({
      method: op.method,
      path: op.path,
      summary: op.summary,
      tags: [op.tag],
      ...(op.bearer ? { security: [{ bearer: [] }] } : {}),
      request: {
        ...(params ? { params } : {}),
        ...(op.query ? { query: op.query } : {}),
        ...(op.body ? { body: { required: false, content: { "application/json": { schema: op.body } } } } : {}),
      },
      responses: Object.fromEntries(
        Object.entries(op.responses).map(([status, r]) => [
          status,
          {
            description: r.description,
            content: r.schema
              ? { "application/json": { schema: r.schema } }
              : {
                  [r.text ?? "text/plain"]: { schema: z.string() },
                  ...(op.path.endsWith("/log") ? { "text/event-stream": { schema: z.string() } } : {}),
                },
          },
        ]),
      ),
    });
  }
  return api.getOpenAPI31Document({
    openapi: "3.1.0",
    info: {
      title: "formula-runner",
      version,
      description:
        'Automation server for AI coding agents. Errors are `{"error": {"code", "message"}}` with a fitting status.',
    },
    tags: [
      { name: "runs", description: "runs of formulas" },
      { name: "worktrees", description: "the git worktrees runs work in" },
      { name: "formulas", description: "what can run, and when" },
      { name: "webhooks", description: "what the forges send" },
      { name: "operations", description: "probes and metrics" },
    ],
  });
}

const DOCS_PAGE = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>formula-runner API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/swagger-ui.css">
<script src="/docs/swagger-ui-bundle.js" defer></script>
<script src="/docs/init.js" defer></script>
</head>
<body>
<main id="swagger-ui"></main>
</body>
</html>
`;

/** Swagger UI sets style attributes as it draws; scripts still come only from this server. */
const docsHeaders = secureHeaders({
  contentSecurityPolicy: {
    defaultSrc: ["'self'"],
    scriptSrc: ["'self'"],
    styleSrc: ["'self'", "'unsafe-inline'"],
    imgSrc: ["'self'", "data:"],
    connectSrc: ["'self'"],
    objectSrc: ["'none'"],
    baseUri: ["'none'"],
    frameAncestors: ["'none'"],
  },
  xFrameOptions: "DENY",
  referrerPolicy: "no-referrer",
});

/** Files of swagger-ui-dist, read once on first use. */
function swaggerAsset(name: "swagger-ui.css" | "swagger-ui-bundle.js"): () => Buffer<ArrayBuffer> {
  let content: Buffer<ArrayBuffer> | undefined;
  return () => {
    content ??= readFileSync(
      path.join(path.dirname(createRequire(import.meta.url).resolve("swagger-ui-dist/package.json")), name),
    );
    return content;
  };
}

/** GET /openapi.json, and /docs: Swagger UI from node_modules (no network), under a strict CSP. */
export function openApiRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  let document: string | undefined;
  app.get("/openapi.json", (c) => {
    document ??= JSON.stringify(openApiDocument(services.version));
    c.header("content-type", "application/json; charset=utf-8");
    return c.body(document);
  });

  const css = swaggerAsset("swagger-ui.css");
  const bundle = swaggerAsset("swagger-ui-bundle.js");
  const init = readFileSync(new URL("./dashboard/static/docs-init.js", import.meta.url));
  const cached = { "cache-control": "public, max-age=3600" };
  app.use("/docs", docsHeaders);
  app.use("/docs/*", docsHeaders);
  app.get("/docs", (c) => c.html(DOCS_PAGE));
  app.get("/docs/swagger-ui.css", (c) => c.body(css(), 200, { "content-type": "text/css; charset=utf-8", ...cached }));
  app.get("/docs/swagger-ui-bundle.js", (c) =>
    c.body(bundle(), 200, { "content-type": "text/javascript; charset=utf-8", ...cached }),
  );
  app.get("/docs/init.js", (c) => c.body(init, 200, { "content-type": "text/javascript; charset=utf-8", ...cached }));
  return app;
}
