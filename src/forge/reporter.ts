import { eq } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Escalation, type Run, runs } from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import type { FormulaStore } from "../formulas/store.js";
import type { Logger } from "../logger.js";
import type { RunEvent } from "../runs/run-event.js";
import type { RunObserver } from "../runs/run-executor.js";
import { enqueueOutbox } from "./outbox.js";

/**
 * Where a run reports, per its formula's `report`: `issue` -> the run's issue (runs
 * without one post nothing); `always` -> the run's issue, else the project's
 * `escalation_issue`; `never` -> nowhere.
 */
export function reportIssueOf(
  run: Run,
  report: "issue" | "always" | "never" | undefined,
  project: ProjectConfig | undefined,
): number | undefined {
  if (report === "never") return undefined;
  if (run.issue !== null) return run.issue;
  if (report === "always") return project?.escalationIssue;
  return undefined;
}

/**
 * Turns run events into forge writes through the outbox: one status comment per run
 * (started, each phase, the end; edited in place), and the escalation question as a
 * comment of its own so people are notified. Carries the bash design's "session
 * started / finished" notices. Never blocks a run: it only writes rows.
 */
export class ForgeReporter implements RunObserver {
  constructor(
    private readonly deps: {
      database: Database;
      projects: readonly ProjectConfig[];
      formulas: FormulaStore;
      log: Logger;
      /** Rows were queued: wake the outbox worker. */
      onOutbox: () => void;
    },
  ) {}

  #project(run: Run) {
    return this.deps.projects.find((p) => p.name === run.project);
  }

  async #status(run: Run): Promise<void> {
    let issue = run.reportIssue ?? undefined;
    if (issue === undefined) {
      issue = reportIssueOf(run, this.deps.formulas.get(run.formula)?.report, this.#project(run));
      if (issue === undefined) return;
      await this.deps.database.db.update(runs).set({ reportIssue: issue }).where(eq(runs.id, run.id));
    }
    await enqueueOutbox(this.deps.database.db, {
      project: run.project,
      runId: run.id,
      issue,
      payload: { kind: "status" },
    });
    this.deps.onOutbox();
  }

  async runStarted(run: Run): Promise<void> {
    await this.#status(run);
  }

  async phaseRecorded(run: Run): Promise<void> {
    await this.#status(await this.#fresh(run));
  }

  async runFinished(run: Run): Promise<void> {
    // A run that never started (skipped, cancelled while queued) has no comment to finish:
    // nothing to say on the issue (GET /api/runs has it).
    if (run.status === "skipped" || run.startedAt === null) return;
    await this.#status(await this.#fresh(run));
  }

  async escalated(run: Run, escalation: Escalation): Promise<void> {
    if (escalation.issue !== null) {
      const sender = (run.event as RunEvent | null)?.sender;
      const mention = sender && !sender.startsWith("cli:") && sender !== "api" ? `@${sender} ` : "";
      const quoted = escalation.question
        .split("\n")
        .map((line) => `> ${line}`)
        .join("\n");
      const body = [
        `❓ ${mention}run ${run.id} (\`${run.formula}\`) needs an answer to go on:`,
        "",
        quoted,
        "",
        `Reply to this issue: the first reply from someone with write access resumes the run. Without one by ${escalation.deadlineAt.toISOString()}, the issue is labelled \`blocked\` and the run stops.`,
      ].join("\n");
      await enqueueOutbox(this.deps.database.db, {
        project: run.project,
        runId: run.id,
        issue: escalation.issue,
        payload: { kind: "comment", body, escalationId: escalation.id },
      });
    }
    await this.#status(run);
  }

  async #fresh(run: Run): Promise<Run> {
    if (run.reportIssue !== null) return run;
    const [row] = await this.deps.database.db.select().from(runs).where(eq(runs.id, run.id));
    return row ?? run;
  }
}
