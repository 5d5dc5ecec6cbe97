/**
 * The JSON Schema of formula files, generated from the zod schema so the two never
 * disagree. Editors use it through the `#:schema ./formula.schema.json` directive at the
 * top of each formula (Taplo / Even Better TOML). It describes the file as written:
 * defaults are optional and shown as `default`, durations and placeholders carry
 * patterns. Checks that need code (cron syntax, time zones, `needs` order) are left to
 * `formula-runner validate`.
 */
import { z } from "zod";
import { formulaFileSchema } from "./schema.js";

/** Where the generated schema is committed, relative to the repository root. */
export const FORMULA_JSON_SCHEMA_PATH = "formulas/formula.schema.json";

/**
 * The formula JSON Schema (draft-07: the newest draft every TOML editor integration
 * reads). Every table has `additionalProperties: false`, as the loader refuses unknown keys.
 */
export function formulaJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(formulaFileSchema, { io: "input", target: "draft-07" }) as Record<string, unknown>;
}

/** The schema file's exact text: stable key order, two-space indent, final newline. */
export function formulaJsonSchemaText(): string {
  return `${JSON.stringify(formulaJsonSchema(), null, 2)}\n`;
}
