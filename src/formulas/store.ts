import type { Logger } from "../logger.js";
import { formatProblem, loadFormulas } from "./load.js";
import type { FormulaProblem } from "./load.js";
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

  async reload(): Promise<{ formulas: readonly Formula[]; problems: readonly FormulaProblem[] }> {
    const { formulas, problems } = await loadFormulas(this.#dir);
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
