/**
 * `{name}` placeholders in formula strings (the concurrency key, context commands).
 * Checked when a formula is loaded so that a typo fails validation instead of reaching
 * a shell-less argument array or a lock key verbatim at run time.
 */

/** Placeholders allowed in `[guards] concurrency`. */
export const CONCURRENCY_PLACEHOLDERS = ["formula", "project", "issue"] as const;

/** Placeholders allowed in the arguments of `[context] commands`. */
export const COMMAND_PLACEHOLDERS = [
  "worktree",
  "project",
  "formula",
  "run_id",
  "repo_root",
  "primary_branch",
] as const;

/**
 * A regular expression source (anchored) for strings whose only braces are the given
 * placeholders. Used as a JSON Schema `pattern` so editors flag a bad placeholder too.
 */
export function placeholderPattern(allowed: readonly string[]): string {
  return `^(?:[^{}]|\\{(?:${allowed.join("|")})\\})*$`;
}

/**
 * Explains what is wrong with the placeholders of `template`, or returns `undefined`
 * when every `{...}` names an allowed placeholder and no brace is left unmatched.
 */
export function checkPlaceholders(template: string, allowed: readonly string[]): string | undefined {
  const unknown: string[] = [];
  // Strip the well-formed `{name}` tokens; whatever braces remain are unbalanced.
  const rest = template.replace(/\{([^{}]*)\}/g, (_token, name: string) => {
    if (!allowed.includes(name)) unknown.push(name);
    return "";
  });
  const known = allowed.map((name) => `{${name}}`).join(", ");
  if (unknown.length > 0) {
    const names = unknown.map((name) => `{${name}}`).join(", ");
    const noun = unknown.length === 1 ? "placeholder" : "placeholders";
    return `unknown ${noun} ${names}; allowed: ${known}`;
  }
  if (/[{}]/.test(rest)) return `unbalanced \`{\` or \`}\`; placeholders look like ${known}`;
  return undefined;
}

/**
 * Replaces every `{name}` in `template` with `values[name]`. A placeholder without a
 * value becomes the empty string (for example `{issue}` on a run without an issue).
 * Templates are checked at load time, so no unknown name reaches this point.
 */
export function fillPlaceholders(
  template: string,
  values: Readonly<Record<string, string | number | undefined>>,
): string {
  return template.replace(/\{([^{}]*)\}/g, (_token, name: string) => {
    const value = Object.hasOwn(values, name) ? values[name] : undefined;
    return value === undefined ? "" : String(value);
  });
}
