import type { FC } from "hono/jsx";
import { RUN_STATUSES, type Run } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { formatCost, formatDuration, formatTime, issueUrl } from "./format.js";
import { Layout, type PageContext, Status } from "./layout.js";

export interface RunsFilter {
  status: string | undefined;
  formula: string | undefined;
  project: string | undefined;
}

export interface RunsPageProps {
  page: PageContext;
  runs: readonly Run[];
  totals: Map<number, { numTurns: number | null; costUsd: number | null }>;
  nextCursor: string | null;
  /** The first page (no cursor): new runs appear on it. */
  newest: boolean;
  filter: RunsFilter;
  formulas: readonly string[];
  projects: readonly ProjectConfig[];
  now: Date;
}

/** What fired the run, in words: the delivery, the schedule slot or who dispatched it. */
export function triggerText(run: Pick<Run, "triggerKind" | "triggerRef">): string {
  switch (run.triggerKind) {
    case "webhook":
      return `webhook ${run.triggerRef}`;
    case "schedule":
      return `schedule ${formatTime(run.triggerRef)}`;
    default:
      return `dispatch by ${run.triggerRef}`;
  }
}

/** Wall time of a run: until it finished, or until now while it goes on. */
export function runDuration(run: Pick<Run, "startedAt" | "finishedAt">, now: Date): number | null {
  if (!run.startedAt) return null;
  return (run.finishedAt ?? now).getTime() - run.startedAt.getTime();
}

const query = (filter: RunsFilter, cursor?: string) => {
  const params = new URLSearchParams();
  if (filter.status) params.set("status", filter.status);
  if (filter.formula) params.set("formula", filter.formula);
  if (filter.project) params.set("project", filter.project);
  if (cursor) params.set("cursor", cursor);
  const text = params.toString();
  return text === "" ? "/" : `/?${text}`;
};

const Select: FC<{ name: string; label: string; value: string | undefined; options: readonly string[] }> = (p) => (
  <label>
    {p.label}{" "}
    <select name={p.name}>
      <option value="">any</option>
      {p.options.map((o) => (
        <option value={o} selected={o === p.value}>
          {o}
        </option>
      ))}
    </select>
  </label>
);

export const RunsPage: FC<RunsPageProps> = (props) => {
  const byName = new Map(props.projects.map((p) => [p.name, p]));
  return (
    <Layout page={props.page} title="Runs">
      <form method="get" action="/" class="filters" aria-label="Filter runs">
        <Select name="status" label="Status" value={props.filter.status} options={RUN_STATUSES} />
        <Select name="formula" label="Formula" value={props.filter.formula} options={props.formulas} />
        <Select
          name="project"
          label="Project"
          value={props.filter.project}
          options={props.projects.map((p) => p.name)}
        />
        <button type="submit">Filter</button>
      </form>
      {/* dashboard.js redraws this part when a run on it, or a newer run, changes (GET /events). */}
      <div id="runs-list" data-newest={props.newest ? "1" : "0"} data-top={String(props.runs[0]?.id ?? 0)}>
        {props.runs.length === 0 ? (
          <p>No runs match.</p>
        ) : (
          <div class="scroll">
            <table class="runs">
              <thead>
                <tr>
                  <th scope="col">Run</th>
                  <th scope="col">Status</th>
                  <th scope="col">Phase</th>
                  <th scope="col">Formula</th>
                  <th scope="col">Project</th>
                  <th scope="col">Trigger</th>
                  <th scope="col">Issue</th>
                  <th scope="col">Started</th>
                  <th scope="col">Duration</th>
                  <th scope="col">Cost</th>
                  <th scope="col">Turns</th>
                </tr>
              </thead>
              <tbody>
                {props.runs.map((run) => {
                  const totals = props.totals.get(run.id);
                  const link = issueUrl(byName.get(run.project), run.issue);
                  return (
                    <tr data-run={String(run.id)}>
                      <td>
                        <a href={`/runs/${run.id}`}>#{run.id}</a>
                      </td>
                      <td>
                        <Status status={run.status} />
                      </td>
                      <td>{run.phase ?? ""}</td>
                      <td>{run.formula}</td>
                      <td>{run.project}</td>
                      <td>{triggerText(run)}</td>
                      <td>{run.issue === null ? "" : link ? <a href={link}>#{run.issue}</a> : `#${run.issue}`}</td>
                      <td>{formatTime(run.startedAt)}</td>
                      <td>{formatDuration(runDuration(run, props.now))}</td>
                      <td>{formatCost(totals?.costUsd)}</td>
                      <td>{totals?.numTurns ?? ""}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </div>
      <p id="runs-live" class="muted" aria-live="polite" />
      <nav class="pager" aria-label="Pages">
        {props.filter.status || props.filter.formula || props.filter.project ? <a href="/">All runs</a> : null}
        <a href={query(props.filter)}>Newest</a>
        {props.nextCursor ? (
          <a href={query(props.filter, props.nextCursor)} rel="next">
            Older
          </a>
        ) : null}
      </nav>
    </Layout>
  );
};
