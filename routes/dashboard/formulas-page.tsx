import type { FC } from "hono/jsx";
import type { Run } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import type { FormulaProblem } from "../../src/formulas/load.js";
import type { formulaJson } from "../formulas.js";
import { formatTime } from "./format.js";
import { CsrfField, Layout, Notice, type PageContext, Status } from "./layout.js";

export interface FormulasPageProps {
  page: PageContext;
  formulas: readonly (ReturnType<typeof formulaJson> & { lastRun: Run | undefined })[];
  problems: readonly FormulaProblem[];
  projects: readonly ProjectConfig[];
  notice: string | undefined;
  error: string | undefined;
}

type Triggers = ReturnType<typeof formulaJson>["triggers"];

const TriggerList: FC<{ triggers: Triggers }> = ({ triggers }) => (
  <ul class="triggers">
    {triggers.dispatch ? <li>dispatch (REST, CLI, this page)</li> : null}
    {triggers.schedule.map((s) => (
      <li>
        schedule <code>{s.cron}</code> ({s.timezone}); next: {s.next.map((t) => formatTime(t)).join(", ")}
      </li>
    ))}
    {triggers.issues ? (
      <li>
        issues {triggers.issues.types.join(", ")}
        {triggers.issues.labels.length > 0 ? ` with label ${triggers.issues.labels.join(" or ")}` : ""}
      </li>
    ) : null}
    {triggers.issue_comment ? (
      <li>
        issue comment {triggers.issue_comment.types.join(", ")}
        {triggers.issue_comment.command ? (
          <>
            {" "}
            starting <code>{triggers.issue_comment.command}</code>
          </>
        ) : null}
      </li>
    ) : null}
    {triggers.pull_request ? <li>pull request {triggers.pull_request.types.join(", ")}</li> : null}
  </ul>
);

export const FormulasPage: FC<FormulasPageProps> = (props) => (
  <Layout page={props.page} title="Formulas">
    <Notice text={props.notice} />
    <Notice text={props.error} kind="error" />
    <form method="post" action="/formulas/reload" class="filters">
      <CsrfField token={props.page.csrf} />
      <button type="submit">Reload formulas from disk</button>
    </form>
    {props.problems.length > 0 ? (
      <section aria-labelledby="problems" class="problems">
        <h2 id="problems">Load problems</h2>
        <table>
          <thead>
            <tr>
              <th scope="col">Severity</th>
              <th scope="col">File</th>
              <th scope="col">Line</th>
              <th scope="col">Field</th>
              <th scope="col">Problem</th>
            </tr>
          </thead>
          <tbody>
            {props.problems.map((p) => (
              <tr>
                <td>
                  <Status status={p.severity} />
                </td>
                <td>
                  <code>{p.file}</code>
                </td>
                <td>{p.line ?? ""}</td>
                <td>
                  <code>{p.field}</code>
                </td>
                <td>{p.message}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    ) : null}
    {props.formulas.length === 0 ? <p>No formulas are loaded.</p> : null}
    {props.formulas.map((f) => (
      <section class="formula" aria-labelledby={`formula-${f.name}`}>
        <h2 id={`formula-${f.name}`}>{f.name}</h2>
        <p>{f.description}</p>
        <p>
          Agent {f.agent}
          {f.model ? `, model ${f.model}` : ""}; file <code>{f.file}</code>
        </p>
        <TriggerList triggers={f.triggers} />
        <p>
          Last run:{" "}
          {f.lastRun ? (
            <>
              <a href={`/runs/${f.lastRun.id}`}>#{f.lastRun.id}</a> <Status status={f.lastRun.status} />{" "}
              {formatTime(f.lastRun.finishedAt ?? f.lastRun.startedAt ?? f.lastRun.queuedAt)}
            </>
          ) : (
            "never"
          )}
        </p>
        {f.triggers.dispatch && props.projects.length > 0 ? (
          <form method="post" action={`/formulas/${encodeURIComponent(f.name)}/dispatch`} class="filters">
            <CsrfField token={props.page.csrf} />
            <label>
              Project{" "}
              <select name="project">
                {props.projects.map((p) => (
                  <option value={p.name}>{p.name}</option>
                ))}
              </select>
            </label>
            <label>
              Issue <input type="number" name="issue" min="1" step="1" />
            </label>
            <button type="submit">Run {f.name}</button>
          </form>
        ) : null}
      </section>
    ))}
  </Layout>
);
