import { Hono } from "hono";
import type { AppEnv } from "../src/app.js";
import { formatProblem } from "../src/formulas/load.js";
import { projectsOf } from "../src/formulas/projects.js";
import type { Formula } from "../src/formulas/schema.js";
import type { Services } from "../src/services.js";

/** A formula as the API shows it: what fires it (with the next schedule times) and its guards. */
export function formulaJson(formula: Formula, services: Services) {
  const { on } = formula;
  const projects = projectsOf(formula, services.config.projects);
  return {
    name: formula.name,
    description: formula.description,
    version: formula.version,
    file: formula.file,
    agent: formula.agent,
    model: formula.model ?? null,
    timeout_ms: formula.timeoutMs,
    max_duration_ms: formula.maxDurationMs,
    report: formula.report,
    /** The projects its schedules and webhooks fire on (opt-in: a project's `formulas` or the formula's `projects`). */
    projects,
    fires_on_no_project: projects.length === 0,
    triggers: {
      dispatch: on.dispatch,
      schedule: services.scheduler.nextRuns(formula.name, 3),
      issues: on.issues ? { types: on.issues.types, labels: on.issues.labels } : null,
      issue_comment: on.issueComment
        ? { types: on.issueComment.types, command: on.issueComment.command ?? null }
        : null,
      pull_request: on.pullRequest ? { types: on.pullRequest.types, branches: on.pullRequest.branches ?? null } : null,
    },
    guards: {
      min_memory_mb: formula.guards.minMemoryMb,
      min_permission: formula.guards.minPermission,
      concurrency: formula.guards.concurrency,
      on_busy: formula.guards.onBusy,
    },
    steps: formula.steps.map((s) => ({ id: s.id, title: s.title, needs: s.needs })),
  };
}

export function formulaRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const listing = () => ({
    formulas: services.formulas
      .list()
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((f) => formulaJson(f, services)),
    problems: services.formulas.problems().map((p) => ({ ...p, text: formatProblem(p) })),
  });

  app.get("/api/formulas", (c) => c.json(listing()));

  /** Reloads the formulas directory and the schedules (what SIGHUP does). */
  app.post("/api/formulas/reload", async (c) => {
    await services.reloadFormulas();
    return c.json(listing());
  });

  return app;
}
