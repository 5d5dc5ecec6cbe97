/**
 * Reads formula files into {@link Formula} values. Nothing here throws for a bad file:
 * every fault becomes a {@link FormulaProblem} naming the file, the field and (when it
 * can be found) the line, and one broken file never keeps the others from loading.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { fieldIssues } from "../validation.js";
import { formatDuration } from "./duration.js";
import { createLocator } from "./locate.js";
import { type FormulaProblem, fieldName, formatProblem } from "./problems.js";
import { FORMULA_DEFAULTS, type Formula, formulaFileSchema, hasTrigger, knownKeysAt, toFormula } from "./schema.js";

export type { FormulaProblem };
export { formatProblem };

/** Options shared by the loaders. */
export interface LoadOptions {
  /**
   * The agent names the server configuration defines (the keys of `[agents]`). When
   * given, a formula naming another agent is an error; when absent, any name passes.
   */
  readonly agents?: readonly string[];
}

/** The outcome of parsing one file: a formula only when there is no error. */
export interface ParsedFormula {
  formula?: Formula;
  /** Errors and warnings, ordered by line (problems without a line last). */
  problems: FormulaProblem[];
}

/**
 * Parses and validates one formula file. `file` is used as given in problems and must
 * end in `NAME.toml` where NAME is the formula's `name`; the formula's `file` is its
 * absolute form. Never throws, whatever `source` holds.
 */
export function parseFormula(file: string, source: string, options: LoadOptions = {}): ParsedFormula {
  try {
    return parseChecked(file, source, options);
  } catch (error) {
    // The checks below are written not to throw; should one still do so (a parser bug on
    // strange input), the file is reported as broken rather than taking the caller down.
    const reason = error instanceof Error ? error.message : String(error);
    return { problems: [{ file, field: "(file)", message: `could not be checked: ${reason}`, severity: "error" }] };
  }
}

function parseChecked(file: string, source: string, options: LoadOptions): ParsedFormula {
  let data: unknown;
  try {
    data = parseToml(source);
  } catch (error) {
    return { problems: [tomlProblem(file, error)] };
  }

  const locate = createLocator(source);
  const problems: FormulaProblem[] = [];
  const report = (field: readonly (string | number)[], message: string, severity: FormulaProblem["severity"]) => {
    const line = locate(field);
    problems.push({ file, ...(line !== undefined && { line }), field: fieldName(field), message, severity });
  };

  const result = formulaFileSchema.safeParse(data);
  if (!result.success) {
    for (const issue of fieldIssues(result.error.issues, data, knownKeysAt)) report(issue.path, issue.message, "error");
  }

  // Checks that need more than the document itself: its file name, the server's agents.
  const raw = typeof data === "object" && data !== null ? (data as Record<string, unknown>) : {};
  const expectedName = path.basename(file).replace(/\.toml$/, "");
  if (typeof raw.name === "string" && raw.name !== expectedName) {
    report(["name"], `\`${raw.name}\` must equal the file name without .toml (\`${expectedName}\`)`, "error");
  }
  if (!file.endsWith(".toml")) {
    report([], "the file name does not end in .toml; the server only loads *.toml files", "warning");
  }
  if (options.agents !== undefined) {
    const agent =
      typeof raw.agent === "string" ? raw.agent : raw.agent === undefined ? FORMULA_DEFAULTS.agent : undefined;
    if (agent !== undefined && !options.agents.includes(agent)) {
      const known = options.agents.length > 0 ? options.agents.map((name) => `\`${name}\``).join(", ") : "none";
      const which = raw.agent === undefined ? `the default agent \`${agent}\`` : `agent \`${agent}\``;
      report(["agent"], `${which} is not configured in [agents]; known agents: ${known}`, "error");
    }
  }

  let formula: Formula | undefined;
  if (result.success && !problems.some((problem) => problem.severity === "error")) {
    formula = toFormula(result.data, path.resolve(file));
    for (const warning of formulaWarnings(formula)) report(warning.field, warning.message, "warning");
  }
  return { ...(formula !== undefined && { formula }), problems: byLine(problems) };
}

/** Things that are allowed but almost certainly not meant. */
function formulaWarnings(formula: Formula): { field: string[]; message: string }[] {
  const warnings: { field: string[]; message: string }[] = [];
  if (!hasTrigger(formula)) {
    warnings.push({
      field: ["on"],
      message:
        "no trigger: no schedule, dispatch is false and there is no [on.issues], [on.issue_comment] " +
        "or [on.pull_request] table, so nothing can start this formula",
    });
  }
  if (formula.timeoutMs >= formula.maxDurationMs) {
    warnings.push({
      field: ["timeout"],
      message:
        `the idle timeout (${formatDuration(formula.timeoutMs)}) is not shorter than max_duration ` +
        `(${formatDuration(formula.maxDurationMs)}), so it can never end a session`,
    });
  }
  return warnings;
}

function tomlProblem(file: string, error: unknown): FormulaProblem {
  if (error instanceof TomlError) {
    // smol-toml's message is "Invalid TOML document: <reason>" followed by a code excerpt.
    const reason = (error.message.split("\n")[0] ?? "").replace(/^Invalid TOML document:\s*/, "");
    return {
      file,
      line: error.line,
      field: "(toml)",
      message: `${reason} (column ${error.column})`,
      severity: "error",
    };
  }
  const reason = error instanceof Error ? error.message : String(error);
  return { file, field: "(toml)", message: reason, severity: "error" };
}

function byLine(problems: FormulaProblem[]): FormulaProblem[] {
  // Stable sort: problems on one line keep the order they were found in.
  return problems
    .map((problem, index) => ({ problem, index }))
    .sort((a, b) => (a.problem.line ?? Infinity) - (b.problem.line ?? Infinity) || a.index - b.index)
    .map(({ problem }) => problem);
}

async function readSource(file: string): Promise<{ source: string } | { problem: FormulaProblem }> {
  try {
    return { source: await readFile(file, "utf8") };
  } catch (error) {
    return { problem: { file, field: "(file)", message: `cannot read: ${ioReason(error)}`, severity: "error" } };
  }
}

function ioReason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOENT") return "no such file or directory";
  if (code === "EISDIR") return "is a directory";
  if (code === "ENOTDIR") return "not a directory";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  return error instanceof Error ? error.message : String(error);
}

/**
 * Loads every `*.toml` file of `dir`, in name order. Files with errors are left out and
 * their problems returned; a missing or unreadable directory is a problem too.
 */
export async function loadFormulas(
  dir: string,
  options: LoadOptions = {},
): Promise<{ formulas: Formula[]; problems: FormulaProblem[] }> {
  let names: string[];
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    names = entries
      .filter((entry) => entry.name.endsWith(".toml") && !entry.isDirectory())
      .map((entry) => entry.name)
      .sort();
  } catch (error) {
    const problem: FormulaProblem = {
      file: dir,
      field: "(dir)",
      message: `cannot read the formulas directory: ${ioReason(error)}`,
      severity: "error",
    };
    return { formulas: [], problems: [problem] };
  }
  if (names.length === 0) {
    const problem: FormulaProblem = {
      file: dir,
      field: "(dir)",
      message: "no *.toml formula files",
      severity: "warning",
    };
    return { formulas: [], problems: [problem] };
  }

  const results = await Promise.all(names.map((name) => loadFile(path.join(dir, name), options)));
  return {
    formulas: results.flatMap((result) => (result.formula !== undefined ? [result.formula] : [])),
    problems: results.flatMap((result) => result.problems),
  };
}

/**
 * Checks formula files (for `formula-runner validate`); returns every problem of every
 * file, warnings included. The files are validated whatever directory they are in.
 */
export async function validateFiles(files: readonly string[], options: LoadOptions = {}): Promise<FormulaProblem[]> {
  const results = await Promise.all(files.map((file) => loadFile(file, options)));
  return results.flatMap((result) => result.problems);
}

async function loadFile(file: string, options: LoadOptions): Promise<ParsedFormula> {
  const read = await readSource(file);
  if ("problem" in read) return { problems: [read.problem] };
  return parseFormula(file, read.source, options);
}
