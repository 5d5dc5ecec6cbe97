/**
 * Problems found in formula files: one per fault, in the file's terms (TOML types,
 * snake_case keys, `steps[1].needs`), with the line where it could be found.
 */
import { formatPath, type PathSegment } from "../validation.js";

/** One thing wrong (or worth a warning) in a formula file. */
export interface FormulaProblem {
  /** The file as it was given to the loader. */
  readonly file: string;
  /** 1-based line, when the field could be found in the source. */
  readonly line?: number;
  /** `steps[1].needs[0]`, `on.schedule[0]`; `(file)` when the file cannot be read, `(toml)` when it is not TOML. */
  readonly field: string;
  readonly message: string;
  /** Only errors make a file invalid; warnings are reported and the formula still loads. */
  readonly severity: "error" | "warning";
}

/** `file:LINE: field: message`, or `file: field: message` when no line is known. */
export function formatProblem(problem: FormulaProblem): string {
  const where = problem.line === undefined ? problem.file : `${problem.file}:${problem.line}`;
  return `${where}: ${problem.field}: ${problem.message}`;
}

/** Field text for a path; the whole document is `(file)`. */
export function fieldName(path: readonly PathSegment[]): string {
  return path.length === 0 ? "(file)" : formatPath(path);
}
