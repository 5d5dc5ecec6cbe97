import type { FC } from "hono/jsx";
import type { Worktree } from "../../db/schema/index.js";
import type { PurgeResult } from "../../src/worktrees/worktree-manager.js";
import { formatBytes, formatDuration, formatTime } from "./format.js";
import { CsrfField, Layout, Notice, type PageContext } from "./layout.js";

export interface WorktreesPageProps {
  page: PageContext;
  worktrees: readonly Worktree[];
  /** Which worktrees are listed. */
  state: "preserved" | "active" | "removed";
  /** Present after a dry run: what a purge would do, with a form to do it. */
  preview: { olderThanHours: number; result: PurgeResult } | undefined;
  /** Present after a purge: what it did. */
  purged: PurgeResult | undefined;
  notice: string | undefined;
  error: string | undefined;
  now: Date;
}

const PurgeTable: FC<{ caption: string; entries: PurgeResult["purged"] }> = ({ caption, entries }) =>
  entries.length === 0 ? null : (
    <table>
      <caption>{caption}</caption>
      <thead>
        <tr>
          <th scope="col">Worktree</th>
          <th scope="col">Run</th>
          <th scope="col">Project</th>
          <th scope="col">Path</th>
          <th scope="col">Why</th>
        </tr>
      </thead>
      <tbody>
        {entries.map((e) => (
          <tr>
            <td>{e.id}</td>
            <td>{e.run_id === null ? "" : <a href={`/runs/${e.run_id}`}>#{e.run_id}</a>}</td>
            <td>{e.project}</td>
            <td>
              <code>{e.path}</code>
            </td>
            <td>{e.reason}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );

export const WorktreesPage: FC<WorktreesPageProps> = (props) => {
  const totals = new Map<string, { count: number; bytes: number }>();
  for (const w of props.worktrees) {
    const total = totals.get(w.project) ?? { count: 0, bytes: 0 };
    total.count++;
    total.bytes += w.sizeBytes ?? 0;
    totals.set(w.project, total);
  }
  const now = props.now.getTime();
  return (
    <Layout page={props.page} title="Worktrees">
      <Notice text={props.notice} />
      <Notice text={props.error} kind="error" />
      {props.preview ? (
        <section aria-labelledby="preview" class="preview">
          <h2 id="preview">Purge preview: older than {props.preview.olderThanHours} h</h2>
          <p>
            {props.preview.result.purged.length} worktree(s) would be deleted, {props.preview.result.kept.length} kept.
            Nothing has been deleted yet.
          </p>
          <PurgeTable caption="Would be deleted" entries={props.preview.result.purged} />
          <PurgeTable caption="Would be kept" entries={props.preview.result.kept} />
          {props.preview.result.purged.length > 0 ? (
            <form method="post" action="/worktrees/purge">
              <CsrfField token={props.page.csrf} />
              <input type="hidden" name="older_than_hours" value={String(props.preview.olderThanHours)} />
              <input type="hidden" name="confirm" value="1" />
              <button type="submit" class="danger">
                Purge {props.preview.result.purged.length} worktree(s) now
              </button>
            </form>
          ) : null}
        </section>
      ) : null}
      {props.purged ? (
        <section aria-labelledby="purged">
          <h2 id="purged">Purged</h2>
          <PurgeTable caption="Deleted" entries={props.purged.purged} />
          <PurgeTable caption="Kept" entries={props.purged.kept} />
        </section>
      ) : null}

      <form method="get" action="/worktrees" class="filters" aria-label="Which worktrees">
        <label>
          State{" "}
          <select name="state">
            {(["preserved", "active", "removed"] as const).map((s) => (
              <option value={s} selected={s === props.state}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <button type="submit">Show</button>
      </form>

      <form method="post" action="/worktrees/purge" class="filters" aria-label="Purge old worktrees">
        <CsrfField token={props.page.csrf} />
        <label>
          Purge preserved worktrees older than{" "}
          <input type="number" name="older_than_hours" min="0" max="8760" step="any" value="24" required /> hours
        </label>
        <button type="submit">Preview purge</button>
      </form>

      {totals.size > 0 ? (
        <table class="totals">
          <caption>Per project</caption>
          <thead>
            <tr>
              <th scope="col">Project</th>
              <th scope="col">Worktrees</th>
              <th scope="col">On disk</th>
            </tr>
          </thead>
          <tbody>
            {[...totals].map(([project, total]) => (
              <tr>
                <td>{project}</td>
                <td>{total.count}</td>
                <td>{formatBytes(total.bytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}

      {props.worktrees.length === 0 ? (
        <p>No {props.state} worktrees.</p>
      ) : (
        <div class="scroll">
          <table>
            <caption>{`${props.state[0]?.toUpperCase()}${props.state.slice(1)} worktrees, newest first`}</caption>
            <thead>
              <tr>
                <th scope="col">Worktree</th>
                <th scope="col">Run</th>
                <th scope="col">Project</th>
                <th scope="col">Formula</th>
                <th scope="col">Reason</th>
                <th scope="col">Size</th>
                <th scope="col">Age</th>
                <th scope="col">Expires</th>
                <th scope="col">Path</th>
                <th scope="col">Action</th>
              </tr>
            </thead>
            <tbody>
              {props.worktrees.map((w) => (
                <tr>
                  <td>{w.id}</td>
                  <td>{w.runId === null ? "" : <a href={`/runs/${w.runId}`}>#{w.runId}</a>}</td>
                  <td>{w.project}</td>
                  <td>{w.formula}</td>
                  <td>{w.reason ?? ""}</td>
                  <td>{formatBytes(w.sizeBytes)}</td>
                  <td>{formatDuration(now - (w.preservedAt ?? w.createdAt).getTime())}</td>
                  <td>
                    {w.expiresAt
                      ? `${formatTime(w.expiresAt)} (${w.expiresAt.getTime() <= now ? "expired" : `in ${formatDuration(w.expiresAt.getTime() - now)}`})`
                      : ""}
                  </td>
                  <td>
                    <code>{w.path}</code>
                  </td>
                  <td>
                    {w.state === "preserved" ? (
                      <form method="post" action={`/worktrees/${w.id}/delete`} class="inline">
                        <CsrfField token={props.page.csrf} />
                        <button type="submit" class="danger" aria-label={`Delete worktree ${w.id}`}>
                          Delete
                        </button>
                      </form>
                    ) : (
                      w.state
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Layout>
  );
};
