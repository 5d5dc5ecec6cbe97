/**
 * Turning zod issues about a TOML document (the config file, a formula) into problems in
 * the document's own terms: `projects[0].forge`, "expected an integer, found string
 * \"one\"", "unknown key `primary_brnch`; did you mean `primary_branch`?".
 */
import { distance } from "fastest-levenshtein";
import { z } from "zod";

/** One segment of a field path: a key, or an index into an array. */
export type PathSegment = string | number;

export const BARE_KEY = /^[A-Za-z0-9_-]+$/;

/** `["steps", 1, "needs"]` -> `steps[1].needs`; odd keys are quoted like TOML does. */
export function formatPath(path: readonly PathSegment[]): string {
  let text = "";
  for (const segment of path) {
    if (typeof segment === "number") {
      text += `[${segment}]`;
    } else {
      const key = BARE_KEY.test(segment) ? segment : JSON.stringify(segment);
      text += text === "" ? key : `.${key}`;
    }
  }
  return text;
}

/**
 * The candidate closest to `word` when it is close enough to be a plausible typo:
 * at most 2 edits away (and fewer edits than it has letters), or one is a prefix of the other (`desc` for `description`,
 * `timeout_ms` for `timeout`). `undefined` when nothing is that close.
 */
export function closestMatch(word: string, candidates: readonly string[]): string | undefined {
  const lower = word.toLowerCase();
  let best: { candidate: string; score: number } | undefined;
  for (const candidate of candidates) {
    const other = candidate.toLowerCase();
    const edits = distance(lower, other);
    // Very short words are a prefix of too much to be a useful hint.
    const prefix = Math.min(lower.length, other.length) >= 3 && (other.startsWith(lower) || lower.startsWith(other));
    // Two edits at most, and fewer than the word's length: `c` is not a typo of `a`.
    const typo = edits <= 2 && edits < lower.length;
    if (!typo && !prefix) continue;
    const score = Math.min(edits, 3);
    if (best === undefined || score < best.score) best = { candidate, score };
  }
  return best?.candidate;
}

/**
 * The names of the keys the table at `path` of `root` may hold (array indices in `path`
 * are numbers), or `undefined` when `path` does not lead to a table of the schema.
 * Used for "did you mean" hints on unknown keys.
 */
export function schemaKeysAt(root: z.ZodType, path: readonly PathSegment[]): readonly string[] | undefined {
  let schema: z.ZodType = root;
  for (const segment of [...path, undefined]) {
    // Look through wrappers until something structural appears.
    for (;;) {
      if (schema instanceof z.ZodDefault || schema instanceof z.ZodPrefault || schema instanceof z.ZodOptional) {
        schema = schema.unwrap() as z.ZodType;
      } else if (schema instanceof z.ZodUnion) {
        const table = (schema.options as readonly z.ZodType[]).find((option) => option instanceof z.ZodObject);
        if (table === undefined) return undefined;
        schema = table;
      } else {
        break;
      }
    }
    if (segment === undefined) break;
    if (typeof segment === "number" && schema instanceof z.ZodArray) {
      schema = schema.element as z.ZodType;
    } else if (typeof segment === "string" && schema instanceof z.ZodRecord) {
      schema = schema.valueType as z.ZodType;
    } else if (typeof segment === "string" && schema instanceof z.ZodObject) {
      const next = (schema.shape as Record<string, z.ZodType>)[segment];
      if (next === undefined || !Object.hasOwn(schema.shape, segment)) return undefined;
      schema = next;
    } else {
      return undefined;
    }
  }
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : undefined;
}

/** A problem before the file name and line are attached. */
export interface FieldIssue {
  readonly path: readonly PathSegment[];
  readonly message: string;
}

type Issue = z.core.$ZodIssue;

/** Where the keys known at a path come from, for "did you mean" hints. */
export type KnownKeys = (path: readonly PathSegment[]) => readonly string[] | undefined;

/**
 * Translates zod issues for the raw TOML value `input` into field issues: one per fault,
 * unknown keys one each with a "did you mean" hint from `knownKeysAt`, wrong types saying
 * what was expected and what was found.
 */
export function fieldIssues(issues: readonly Issue[], input: unknown, knownKeysAt: KnownKeys): FieldIssue[] {
  return issues.flatMap((issue) => translate(issue, [], input, knownKeysAt));
}

function translate(issue: Issue, prefix: readonly PathSegment[], input: unknown, knownKeysAt: KnownKeys): FieldIssue[] {
  const path = [...prefix, ...(issue.path as PathSegment[])];
  const found = valueAt(input, path);
  switch (issue.code) {
    case "unrecognized_keys": {
      const known = knownKeysAt(path) ?? [];
      return issue.keys.map((key) => {
        const hint = closestMatch(key, known);
        const message =
          hint !== undefined
            ? `unknown key \`${key}\`; did you mean \`${hint}\`?`
            : `unknown key \`${key}\`${known.length > 0 ? `; known keys: ${known.join(", ")}` : ""}`;
        return { path: [...path, key], message };
      });
    }
    case "invalid_type":
      return [
        {
          path,
          message:
            found === undefined
              ? `required key is missing (expected ${expectedName(issue.expected)})`
              : `expected ${expectedName(issue.expected)}, found ${describeValue(found)}`,
        },
      ];
    case "invalid_value": {
      const options = issue.values.map((value) => String(value));
      const hint = typeof found === "string" ? closestMatch(found, options) : undefined;
      return [
        {
          path,
          message:
            `expected one of ${options.join(", ")}; found ${describeValue(found)}` +
            (hint !== undefined ? `; did you mean \`${hint}\`?` : ""),
        },
      ];
    }
    case "invalid_union":
      return unionIssues(issue, path, input, found, knownKeysAt);
    case "invalid_key":
      // A record key (an [env] name): the nested issues describe the key itself.
      return issue.issues.map((nested) => ({ path, message: nested.message }));
    case "invalid_element":
      return issue.issues.flatMap((nested) => translate(nested, path, input, knownKeysAt));
    default:
      return [{ path, message: issue.message }];
  }
}

/**
 * A union (a schedule entry: a cron string or a table) failed every option. When the
 * value has the type of one option, that option's own issues are the useful ones;
 * otherwise say which types would have done.
 */
function unionIssues(
  issue: Extract<Issue, { code: "invalid_union" }>,
  path: readonly PathSegment[],
  input: unknown,
  found: unknown,
  knownKeysAt: KnownKeys,
): FieldIssue[] {
  const rightType = issue.errors.filter(
    (option) => !option.some((nested) => nested.code === "invalid_type" && nested.path.length === 0),
  );
  const [only] = rightType;
  if (rightType.length === 1 && only !== undefined) {
    return only.flatMap((nested) => translate(nested, path, input, knownKeysAt));
  }
  const expected = issue.errors
    .flatMap((option) => option.filter((nested) => nested.code === "invalid_type" && nested.path.length === 0))
    .map((nested) => (nested.code === "invalid_type" ? expectedName(nested.expected) : ""));
  const unique = [...new Set(expected)];
  return [{ path, message: `expected ${unique.join(" or ")}, found ${describeValue(found)}` }];
}

function expectedName(expected: string): string {
  switch (expected) {
    case "string":
      return "a string";
    case "number":
    case "int":
      return "an integer";
    case "boolean":
      return "a boolean (true or false)";
    case "array":
      return "an array";
    case "object":
    case "record":
      return "a table";
    default:
      return expected;
  }
}

/** The TOML type of a value, with the value itself when it is short. */
export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "string") {
    const shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
    return `string ${JSON.stringify(shown)}`;
  }
  if (typeof value === "bigint") return `integer ${value}`;
  if (typeof value === "number") {
    return Number.isInteger(value) ? `integer ${value}` : `float ${value}`;
  }
  if (typeof value === "boolean") return `boolean ${value}`;
  if (value instanceof Date) return "a date";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object" && value !== null) return "a table";
  return typeof value;
}

/** The raw value at `path` in `input`, or `undefined` when there is none. */
export function valueAt(input: unknown, path: readonly PathSegment[]): unknown {
  let current = input;
  for (const segment of path) {
    if (typeof current !== "object" || current === null) return undefined;
    if (!Object.hasOwn(current, segment)) return undefined;
    current = (current as Record<string | number, unknown>)[segment];
  }
  return current;
}
