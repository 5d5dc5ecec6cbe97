import { errorEnvelope } from "../../routes/api-schemas.js";
import { findOperation } from "../../routes/openapi.js";

/**
 * Checks one API answer against /openapi.json's source: a success must be a documented
 * status of a documented operation and pass its response schema; an error must be the
 * error envelope. Every test that talks to the API through `startTestServer().api` goes
 * through this, so the document cannot drift from what the server says.
 */
export function checkApiAnswer(method: string, route: string, status: number, contentType: string, body: unknown) {
  const pathname = new URL(route, "http://x").pathname;
  const op = findOperation(method, pathname);
  const where = `${method} ${route} -> ${status}`;
  const fail = (why: string) => {
    throw new Error(`API answer does not match the OpenAPI document: ${where}: ${why}\n${preview(body)}`);
  };
  const documented = op?.responses[status];
  if (status >= 400) {
    if (!contentType.startsWith("application/json")) fail(`an error must be JSON, got ${contentType}`);
    const parsed = errorEnvelope.safeParse(body);
    if (!parsed.success) fail(parsed.error.message);
    return;
  }
  if (!op) return fail("the route is not documented");
  if (!documented) return fail(`status ${status} is not documented for ${op.method} ${op.path}`);
  if (!documented.schema) {
    if (!contentType.startsWith("text/")) fail(`expected text, got ${contentType}`);
    return;
  }
  const parsed = documented.schema.safeParse(body);
  if (!parsed.success) fail(parsed.error.message);
}

const preview = (body: unknown) => (typeof body === "string" ? body : (JSON.stringify(body) ?? "")).slice(0, 800);
