import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseToml } from "smol-toml";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { FORMULA_JSON_SCHEMA_PATH, formulaJsonSchema, formulaJsonSchemaText } from "../../src/formulas/json-schema.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const formulasDir = path.join(root, "formulas");

/**
 * The committed schema as a zod validator. zod's JSON Schema reader does not take `not`,
 * which only forbids the reserved [env] names; everything else is kept.
 */
async function committedSchemaValidator(): Promise<z.ZodType> {
  const schema = JSON.parse(await readFile(path.join(root, FORMULA_JSON_SCHEMA_PATH), "utf8"));
  delete schema.properties.env.propertyNames.not;
  return z.fromJSONSchema(schema);
}

describe("formulas/formula.schema.json", () => {
  it("is up to date (run `npm run schema:formula` after changing the schema)", async () => {
    const committed = await readFile(path.join(root, FORMULA_JSON_SCHEMA_PATH), "utf8");
    expect(committed).toBe(formulaJsonSchemaText());
  });

  it("refuses unknown keys in every table and documents every field", () => {
    const schema = formulaJsonSchema();
    const tables: Record<string, unknown>[] = [];
    const undocumented: string[] = [];
    const walk = (node: unknown, where: string): void => {
      if (typeof node !== "object" || node === null) return;
      const record = node as Record<string, unknown>;
      if (record.type === "object" && record.properties !== undefined) {
        tables.push(record);
        for (const [key, value] of Object.entries(record.properties as Record<string, Record<string, unknown>>)) {
          const described =
            value.description !== undefined ||
            (Array.isArray(value.anyOf) && value.anyOf.every((v: Record<string, unknown>) => v.description));
          if (!described) undocumented.push(`${where}.${key}`);
        }
      }
      for (const [key, value] of Object.entries(record)) walk(value, key === "properties" ? where : `${where}/${key}`);
    };
    walk(schema, "");
    expect(tables.length).toBeGreaterThanOrEqual(8);
    for (const table of tables) expect(table.additionalProperties).toBe(false);
    expect(undocumented).toEqual([]);
  });

  it("accepts every shipped formula", async () => {
    const validator = await committedSchemaValidator();
    for (const name of (await readdir(formulasDir)).filter((n) => n.endsWith(".toml"))) {
      const data = parseToml(await readFile(path.join(formulasDir, name), "utf8"));
      const result = validator.safeParse(data);
      expect(result.success, `${name}: ${JSON.stringify(result.error?.issues)}`).toBe(true);
    }
  });

  it("flags unknown keys, bad durations, bad placeholders and bad env names for editors", async () => {
    const validator = await committedSchemaValidator();
    const result = validator.safeParse({
      name: "x",
      description: "d",
      timeout: "30m1h",
      guards: { on_bussy: "skip" },
      context: { commands: [["tool", "{oops}"]] },
      env: { "1X": "y" },
      steps: [{ id: "a", title: "t", description: "d" }],
    });
    expect(result.success).toBe(false);
    expect(result.error?.issues.map((issue) => issue.path.join("."))).toEqual([
      "timeout",
      "guards",
      "context.commands.0.1",
      "env.1X",
    ]);
  });
});
