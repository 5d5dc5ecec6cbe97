import { createHash, timingSafeEqual } from "node:crypto";
import type { MiddlewareHandler } from "hono";
import { AppError } from "./errors.js";
import type { Secret } from "./secrets.js";

const digest = (text: string) => createHash("sha256").update(text).digest();

/**
 * `Authorization: Bearer <API_TOKEN>` on every route it guards. Both sides are hashed
 * first so the comparison takes the same time whatever the length of the guess.
 */
export function requireBearerToken(token: Secret): MiddlewareHandler {
  const expected = digest(token.reveal());
  return async (c, next) => {
    const header = c.req.header("authorization");
    if (!header) {
      c.header("WWW-Authenticate", 'Bearer realm="formula-runner"');
      throw new AppError({ code: "unauthorized", message: "missing Authorization: Bearer <API_TOKEN> header" });
    }
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match || !timingSafeEqual(digest(match[1] as string), expected)) {
      c.header("WWW-Authenticate", 'Bearer realm="formula-runner", error="invalid_token"');
      throw new AppError({ code: "unauthorized", message: "invalid API token" });
    }
    await next();
  };
}
