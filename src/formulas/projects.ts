import type { ProjectConfig } from "../config.js";
import type { Logger } from "../logger.js";
import type { Formula } from "./schema.js";

/** The wildcard of a project's `formulas` or a formula's `projects` list: all of them. */
export const ALL = "*";

/**
 * Whether schedules and webhooks fire `formula` on `project`: opt-in on either side. The
 * project lists the formula (`formulas = ["dev"]`) or the formula lists the project
 * (`projects = ["demo"]`), `"*"` standing for all. With neither, the formula fires on no
 * project, so a formula shipped in `formulas/` never starts on a repository by itself.
 */
export function firesOn(formula: Formula, project: ProjectConfig): boolean {
  const listed = project.formulas ?? [];
  return (
    listed.includes(ALL) ||
    listed.includes(formula.name) ||
    formula.projects.includes(ALL) ||
    formula.projects.includes(project.name)
  );
}

/** The names of the projects `formula` fires on, in configuration order. */
export function projectsOf(formula: Formula, projects: readonly ProjectConfig[]): string[] {
  return projects.filter((project) => firesOn(formula, project)).map((project) => project.name);
}

/**
 * Says at start and on every reload which formulas fire on which projects, and warns of a
 * name listed on either side that matches nothing (a typo there silently fires nothing).
 */
export function logFiring(log: Logger, formulas: readonly Formula[], projects: readonly ProjectConfig[]): void {
  const names = new Set(formulas.map((f) => f.name));
  for (const project of projects) {
    for (const name of project.formulas ?? []) {
      if (name !== ALL && !names.has(name)) {
        log.warn(
          { project: project.name, formula: name },
          `project ${project.name} lists formula "${name}", which is not loaded (known: ${[...names].sort().join(", ") || "none"})`,
        );
      }
    }
  }
  const projectNames = new Set(projects.map((p) => p.name));
  for (const formula of [...formulas].sort((a, b) => a.name.localeCompare(b.name))) {
    for (const name of formula.projects) {
      if (name !== ALL && !projectNames.has(name)) {
        log.warn(
          { formula: formula.name, project: name },
          `formula ${formula.name} lists project "${name}", which is not configured`,
        );
      }
    }
    const on = projectsOf(formula, projects);
    log.info(
      { formula: formula.name, projects: on },
      on.length > 0
        ? `formula ${formula.name} fires on ${on.join(", ")}`
        : `formula ${formula.name} fires on no project (list it in a project's formulas = [...] to enable it)`,
    );
  }
}
