import type { FC } from "hono/jsx";
import { FINAL_RUN_STATUSES } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import type { RunService } from "../../src/runs/run-service.js";
import { formatBytes, formatCost, formatDuration, formatTime, issueUrl } from "./format.js";
import { CsrfField, Layout, Notice, type PageContext, Status } from "./layout.js";
import { triggerText } from "./runs-page.js";

export type RunDetail = Awaited<ReturnType<RunService["detail"]>>;

export interface RunPageProps {
  page: PageContext;
  run: RunDetail;
  project: ProjectConfig | undefined;
  /** The end of the log (ANSI stripped, secrets scrubbed) and the byte offset it ends at. */
  log: { text: string; offset: number; truncated: number };
  /** Size on disk of the run's worktree, when it was measured. */
  worktreeBytes: number | null;
  notice: string | undefined;
  error: string | undefined;
  now: Date;
}

/**
 * Whether the page should follow the run live: it is queued or running, or it waits
 * for an answer that was already given (the next session is about to start).
 */
export function isLive(run: RunDetail): boolean {
  if (run.status === "queued" || run.status === "running") return true;
  if (run.status !== "escalated") return false;
  return !run.escalations.some((e) => e.state === "open") && run.escalations.some((e) => e.state === "answered");
}

const TIMELINE_WIDTH = 1000;

/** The phases on a time axis: one bar per phase, as long as the phase lasted. */
const Timeline: FC<{ run: RunDetail; now: Date }> = ({ run, now }) => {
  const start = Date.parse(run.started_at ?? run.queued_at);
  const points = run.phases.map((p) => ({ ...p, t: Date.parse(p.at) }));
  const end = run.finished_at ? Date.parse(run.finished_at) : Math.max(now.getTime(), ...points.map((p) => p.t));
  const span = Math.max(1, end - start);
  const x = (t: number) => Math.round(((t - start) / span) * TIMELINE_WIDTH);
  return (
    <figure class="timeline">
      <svg
        viewBox={`0 0 ${TIMELINE_WIDTH} 40`}
        preserveAspectRatio="none"
        role="img"
        aria-label={`Phase timeline over ${formatDuration(span)}`}
      >
        <rect x="0" y="16" width={TIMELINE_WIDTH} height="8" class="axis" />
        {points.map((p, i) => {
          const from = x(p.t);
          const next = points[i + 1];
          const to = next ? x(next.t) : x(end);
          return (
            <g>
              <rect x={from} y="10" width={Math.max(2, to - from)} height="20" class={`seg phase-${cssWord(p.phase)}`}>
                <title>{`${p.phase} at ${formatTime(p.at)}`}</title>
              </rect>
              <circle cx={from} cy="20" r="5" class="dot" />
            </g>
          );
        })}
      </svg>
      <ol class="phases">
        {points.map((p, i) => {
          const previous = i === 0 ? start : (points[i - 1]?.t ?? start);
          return (
            <li class={`phase-${cssWord(p.phase)}`}>
              <span class="phase-name">{p.phase}</span> <time datetime={p.at}>{formatTime(p.at)}</time>{" "}
              <span class="gap">+{formatDuration(p.t - previous)}</span>
              {p.detail ? <div class="phase-detail">{p.detail}</div> : null}
            </li>
          );
        })}
      </ol>
      {points.length === 0 ? <figcaption>No phase yet.</figcaption> : null}
    </figure>
  );
};

const cssWord = (word: string) => word.toLowerCase().replace(/[^a-z0-9-]/g, "-");

const Escalations: FC<{ run: RunDetail; csrf: string; now: Date }> = ({ run, csrf, now }) => (
  <section aria-labelledby="escalations">
    <h2 id="escalations">Escalations</h2>
    {run.escalations.length === 0 ? <p>None.</p> : null}
    {run.escalations.map((e) => (
      <article class={`escalation escalation-${e.state}`}>
        <p>
          <Status status={e.state} /> asked {formatTime(e.asked_at)}
          {e.issue ? ` on issue #${e.issue}` : ""}
        </p>
        <pre class="question">{e.question}</pre>
        {e.state === "answered" ? (
          <p>
            Answered by <strong>{e.reply_author ?? "someone"}</strong> {formatTime(e.claimed_at)}:
          </p>
        ) : null}
        {e.reply_body ? <pre class="reply">{e.reply_body}</pre> : null}
        {e.state === "open" ? (
          <>
            <p>
              {formatDuration(Date.parse(e.deadline_at) - now.getTime())} left before the issue is labelled blocked
              (deadline {formatTime(e.deadline_at)}).
            </p>
            <form method="post" action={`/runs/${run.id}/reply`} class="reply-form">
              <CsrfField token={csrf} />
              <label for="reply-body">Your answer</label>
              <textarea id="reply-body" name="body" rows={4} required maxlength={65536} />
              <button type="submit">Send answer</button>
            </form>
          </>
        ) : null}
      </article>
    ))}
  </section>
);

export const RunPage: FC<RunPageProps> = ({ page, run, project, log, worktreeBytes, notice, error, now }) => {
  const final = (FINAL_RUN_STATUSES as readonly string[]).includes(run.status);
  const link = issueUrl(project, run.issue);
  const live = isLive(run);
  return (
    <Layout page={page} title={`Run #${run.id}`}>
      <div id="run" data-run={run.id} data-live={live ? "1" : "0"} data-status={run.status}>
        <Notice text={notice} />
        <Notice text={error} kind="error" />
        <dl class="facts">
          <dt>Status</dt>
          <dd>
            <Status status={run.status} />
            {run.skip_reason ? ` (${run.skip_reason})` : ""}
            {run.cancel_requested && !final ? " (cancel requested)" : ""}
          </dd>
          <dt>Phase</dt>
          <dd>{run.phase ?? "none yet"}</dd>
          <dt>Formula</dt>
          <dd>{run.formula}</dd>
          <dt>Project</dt>
          <dd>{run.project}</dd>
          <dt>Trigger</dt>
          <dd>{triggerText({ triggerKind: run.trigger.kind, triggerRef: run.trigger.ref })}</dd>
          <dt>Issue</dt>
          <dd>{run.issue === null ? "none" : link ? <a href={link}>#{run.issue}</a> : `#${run.issue}`}</dd>
          <dt>Queued</dt>
          <dd>{formatTime(run.queued_at)}</dd>
          <dt>Started</dt>
          <dd>{formatTime(run.started_at)}</dd>
          <dt>Finished</dt>
          <dd>{formatTime(run.finished_at)}</dd>
          <dt>Cost, turns</dt>
          <dd>
            {formatCost(run.cost_usd) || "n/a"}, {run.num_turns ?? "n/a"}
          </dd>
          {run.detail ? (
            <>
              <dt>Detail</dt>
              <dd>{run.detail}</dd>
            </>
          ) : null}
        </dl>
        {final ? null : (
          <form method="post" action={`/runs/${run.id}/cancel`} class="inline">
            <CsrfField token={page.csrf} />
            <button type="submit" class="danger">
              Cancel run
            </button>
          </form>
        )}

        <section aria-labelledby="timeline">
          <h2 id="timeline">Timeline</h2>
          <Timeline run={run} now={now} />
        </section>

        <section aria-labelledby="sessions">
          <h2 id="sessions">Sessions</h2>
          {run.sessions.length === 0 ? (
            <p>None yet.</p>
          ) : (
            <div class="scroll">
              <table>
                <thead>
                  <tr>
                    <th scope="col">#</th>
                    <th scope="col">Kind</th>
                    <th scope="col">Started</th>
                    <th scope="col">Duration</th>
                    <th scope="col">Exit</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Cost</th>
                    <th scope="col">Turns</th>
                    <th scope="col">Claude session</th>
                  </tr>
                </thead>
                <tbody>
                  {run.sessions.map((s) => (
                    <tr>
                      <td>{s.seq}</td>
                      <td>{s.kind}</td>
                      <td>{formatTime(s.started_at)}</td>
                      <td>{formatDuration(s.duration_ms)}</td>
                      <td>{s.exit_code ?? s.signal ?? ""}</td>
                      <td>{s.outcome ?? "running"}</td>
                      <td>{formatCost(s.cost_usd)}</td>
                      <td>{s.num_turns ?? ""}</td>
                      <td>
                        <code>{s.agent_session_id ?? ""}</code>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </section>

        <Escalations run={run} csrf={page.csrf} now={now} />

        <section aria-labelledby="worktree">
          <h2 id="worktree">Worktree</h2>
          {run.worktree ? (
            <p>
              <Status status={run.worktree.state} /> <code>{run.worktree.path}</code>
              {run.worktree.reason ? ` (${run.worktree.reason})` : ""}
              {worktreeBytes !== null ? `, ${formatBytes(worktreeBytes)}` : ""}
              {run.worktree.expires_at && run.worktree.state === "preserved"
                ? `, expires ${formatTime(run.worktree.expires_at)}`
                : ""}
              {run.worktree.state === "preserved" ? (
                <>
                  {" "}
                  <a href="/worktrees">manage</a>
                </>
              ) : null}
            </p>
          ) : (
            <p>None.</p>
          )}
        </section>
      </div>

      <section aria-labelledby="log-title">
        <h2 id="log-title">
          Log <span id="log-state" role="status" />
        </h2>
        {log.truncated > 0 ? <p>Earlier output left out: {formatBytes(log.truncated)}.</p> : null}
        <pre id="log" class="log" data-offset={log.offset} data-run={run.id} tabindex={0}>
          {log.text}
        </pre>
        <p>
          <a href={`/runs/${run.id}/log`}>Whole log as text</a>
        </p>
      </section>
    </Layout>
  );
};
