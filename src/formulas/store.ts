import { existsSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../logger.js";
import type { FormulaProblem } from "./load.js";
import { formatProblem, loadFormulas } from "./load.js";
import type { Formula } from "./schema.js";

/**
 * The formulas currently in force. A reload that finds a broken file keeps the other
 * files' formulas and reports the problem; it never empties the set because of one file.
 */
export class FormulaStore {
  #formulas = new Map<string, Formula>();
  #problems: FormulaProblem[] = [];
  readonly #dir: string;
  readonly #log: Logger;

  constructor(dir: string, log: Logger) {
    this.#dir = dir;
    this.#log = log;
  }

  get dir(): string {
    return this.#dir;
  }

  /**
   * Reads the directory again. A formula whose file broke since the last load keeps its
   * last valid version (a typo must not silently stop its schedule); a deleted file's
   * formula goes.
   */
  async reload(): Promise<{ formulas: readonly Formula[]; problems: readonly FormulaProblem[] }> {
    const loaded = await loadFormulas(this.#dir);
    const formulas = [...loaded.formulas];
    const problems = [...loaded.problems];
    const broken = new Set(problems.filter((p) => p.severity === "error").map((p) => path.resolve(this.#dir, p.file)));
    for (const previous of this.#formulas.values()) {
      if (formulas.some((f) => f.name === previous.name) || !broken.has(previous.file) || !existsSync(previous.file))
        continue;
      formulas.push(previous);
      problems.push({
        file: previous.file,
        field: "(file)",
        message: "has errors: the last valid version stays in force until they are fixed",
        severity: "warning",
      });
    }
    this.#formulas = new Map(formulas.map((f) => [f.name, f]));
    this.#problems = problems;
    for (const problem of problems) {
      this.#log[problem.severity === "error" ? "error" : "warn"]({ problem }, `formula: ${formatProblem(problem)}`);
    }
    this.#log.info({ dir: this.#dir, formulas: [...this.#formulas.keys()] }, `loaded ${formulas.length} formula(s)`);
    return { formulas, problems };
  }

  get(name: string): Formula | undefined {
    return this.#formulas.get(name);
  }

  list(): Formula[] {
    return [...this.#formulas.values()];
  }

  problems(): readonly FormulaProblem[] {
    return this.#problems;
  }
}
