/**
 * Limits on input checked before anything walks it: how deeply JSON nests (a body nested
 * thousands deep overflows the stack of JSON.stringify and of any recursive walk), and
 * which strings the database can store (PostgreSQL text refuses NUL; a lone UTF-16
 * surrogate has no UTF-8 form).
 */

/** Deeper than any payload a forge or a client sends; far below what overflows the stack. */
export const MAX_JSON_DEPTH = 128;

/** The largest value of a PostgreSQL `integer` column (issue numbers). */
export const MAX_INT32 = 2_147_483_647;

/**
 * The deepest nesting of arrays and objects in JSON text, counted without parsing (brackets
 * inside strings do not count). Stops counting once past `limit`.
 */
export function jsonDepth(text: string, limit = MAX_JSON_DEPTH): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (ch === 0x5c)
        i++; // backslash: skip the escaped character
      else if (ch === 0x22) inString = false;
      continue;
    }
    if (ch === 0x22) inString = true;
    else if (ch === 0x7b || ch === 0x5b) {
      depth++;
      if (depth > deepest) {
        deepest = depth;
        if (deepest > limit) return deepest;
      }
    } else if (ch === 0x7d || ch === 0x5d) depth--;
  }
  return deepest;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why the database cannot store `value` as text, or undefined when it can. */
export function unstorableText(value: string): string | undefined {
  if (value.includes("\0")) return "contains a NUL character";
  if (LONE_SURROGATE.test(value)) return "contains a lone UTF-16 surrogate";
  return undefined;
}

/**
 * The first string (key or value) in a parsed JSON value the database cannot store, with
 * its path; undefined when every one is fine. The value must already be depth-checked.
 */
export function findUnstorableText(value: unknown, path = ""): { path: string; problem: string } | undefined {
  if (typeof value === "string") {
    const problem = unstorableText(value);
    return problem ? { path: path || "(body)", problem } : undefined;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorableText(value[i], `${path}[${i}]`);
      if (found) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) {
      const keyProblem = unstorableText(key);
      if (keyProblem) return { path: path ? `${path}.${key}` : key, problem: `key ${keyProblem}` };
      const found = findUnstorableText(item, path ? `${path}.${key}` : key);
      if (found) return found;
    }
  }
  return undefined;
}
