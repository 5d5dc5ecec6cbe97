/**
 * Writes formulas/formula.schema.json (`npm run schema:formula`). A test fails when the
 * committed file differs from a fresh generation, so run this after changing the schema.
 */
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { FORMULA_JSON_SCHEMA_PATH, formulaJsonSchemaText } from "./json-schema.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const target = path.join(root, FORMULA_JSON_SCHEMA_PATH);
await writeFile(target, formulaJsonSchemaText());
console.log(`wrote ${path.relative(process.cwd(), target) || target}`);
