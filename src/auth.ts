import { createHash, timingSafeEqual } from "node:crypto";
import type { MiddlewareHandler } from "hono";
import { AppError } from "./errors.js";
import { hashRunToken, runIdOfToken } from "./runs/run-token.js";
import type { Secret } from "./secrets.js";

const digest = (text: string) => createHash("sha256").update(text).digest();

/** Looks up the stored hash of a run's token; undefined when the run has none (or does not exist). */
export type RunTokenLookup = (runId: number) => Promise<string | undefined>;

/**
 * The only API calls a run token may make, all about its own run: read it, read its log,
 * hand in outputs. Anything else is 403.
 */
const RUN_TOKEN_ROUTES: readonly { method: string; path: RegExp }[] = [
  { method: "GET", path: /^\/api\/runs\/(\d+)$/ },
  { method: "GET", path: /^\/api\/runs\/(\d+)\/log$/ },
  { method: "POST", path: /^\/api\/runs\/(\d+)\/outputs$/ },
];

/**
 * `Authorization: Bearer <token>` on every route it guards: the API token, or a live run
 * token on its own run's few routes. Hashes are compared in constant time.
 */
export function requireApiAuth(token: Secret, runTokenHash: RunTokenLookup): MiddlewareHandler {
  const expected = digest(token.reveal());
  return async (c, next) => {
    const header = c.req.header("authorization");
    if (!header) {
      c.header("WWW-Authenticate", 'Bearer realm="formula-runner"');
      throw new AppError({ code: "unauthorized", message: "missing Authorization: Bearer <API_TOKEN> header" });
    }
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const presented = match?.[1];
    if (presented !== undefined && timingSafeEqual(digest(presented), expected)) {
      await next();
      return;
    }
    const runId = presented === undefined ? undefined : runIdOfToken(presented);
    const stored = runId === undefined ? undefined : await runTokenHash(runId);
    if (
      presented === undefined ||
      runId === undefined ||
      stored === undefined ||
      !timingSafeEqual(Buffer.from(hashRunToken(presented), "hex"), Buffer.from(stored, "hex"))
    ) {
      c.header("WWW-Authenticate", 'Bearer realm="formula-runner", error="invalid_token"');
      throw new AppError({ code: "unauthorized", message: "invalid API token" });
    }
    const allowed = RUN_TOKEN_ROUTES.some((r) => {
      const m = r.method === c.req.method ? r.path.exec(c.req.path) : null;
      return m !== null && Number(m[1]) === runId;
    });
    if (!allowed) {
      throw new AppError({
        code: "forbidden",
        message: `a run token may only read its own run (${runId}), its log, and hand in outputs`,
      });
    }
    await next();
  };
}
