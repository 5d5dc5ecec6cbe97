import type { Context } from "hono";
import type { z } from "zod";
import { AppError } from "../src/errors.js";
import { fieldIssues, formatPath, schemaKeysAt } from "../src/validation.js";

/** Validation problems as the API reports them: `{field, message}` each. */
function problemsOf(schema: z.ZodType, error: z.ZodError, input: unknown) {
  return fieldIssues(error.issues, input, (path) => schemaKeysAt(schema, path)).map((i) => ({
    field: formatPath(i.path) || "(body)",
    message: i.message,
  }));
}

function fail(schema: z.ZodType, error: z.ZodError, input: unknown, what: string): never {
  const problems = problemsOf(schema, error, input);
  throw new AppError({
    code: "validation_failed",
    message: `invalid ${what}: ${problems.map((p) => `${p.field}: ${p.message}`).join("; ")}`,
    details: { problems },
  });
}

/** The JSON body, validated; a missing body counts as `{}` so all-optional bodies may be left out. */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  const text = await c.req.text();
  let input: unknown = {};
  if (text.trim() !== "") {
    const type = c.req.header("content-type") ?? "";
    if (type !== "" && !/^application\/([\w.+-]*\+)?json\b/i.test(type)) {
      throw new AppError({
        code: "unsupported_media_type",
        message: `expected a JSON body (Content-Type: application/json), got ${type}`,
      });
    }
    try {
      input = JSON.parse(text);
    } catch (error) {
      throw new AppError({ code: "invalid_json", message: `the body is not valid JSON: ${(error as Error).message}` });
    }
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) fail(schema, parsed.error, input, "request body");
  return parsed.data;
}

/** The query string, validated. */
export function queryParams<T extends z.ZodType>(c: Context, schema: T): z.output<T> {
  const input = c.req.query();
  const parsed = schema.safeParse(input);
  if (!parsed.success) fail(schema, parsed.error, input, "query");
  return parsed.data;
}

/**
 * A positive integer path parameter. Anything else is the caller's mistake, not a missing
 * record: 400 saying what an id looks like (`runs show abc` must not read "not found").
 */
export function idParam(c: Context, name = "id"): number {
  const raw = c.req.param(name) ?? "";
  const id = /^\d{1,15}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(id) || id <= 0) {
    throw new AppError({ code: "bad_request", message: `"${raw}" is not an id: ids are positive whole numbers` });
  }
  return id;
}
