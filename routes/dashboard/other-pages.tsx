import type { FC } from "hono/jsx";
import { DELIVERY_OUTCOMES } from "../../db/schema/index.js";
import type { listDeliveries } from "../../src/forge/deliveries.js";
import { formatTime } from "./format.js";
import { Document, Layout, Notice, type PageContext, Status } from "./layout.js";
import { CSRF_FIELD } from "./session.js";

export interface DeliveriesPageProps {
  page: PageContext;
  listing: Awaited<ReturnType<typeof listDeliveries>>;
  outcome: string | undefined;
}

export const DeliveriesPage: FC<DeliveriesPageProps> = ({ page, listing, outcome }) => (
  <Layout page={page} title="Webhook deliveries">
    <form method="get" action="/deliveries" class="filters" aria-label="Filter deliveries">
      <label>
        Outcome{" "}
        <select name="outcome">
          <option value="">any</option>
          {DELIVERY_OUTCOMES.map((o) => (
            <option value={o} selected={o === outcome}>
              {o}
            </option>
          ))}
        </select>
      </label>
      <button type="submit">Filter</button>
    </form>
    {listing.deliveries.length === 0 ? (
      <p>No deliveries recorded.</p>
    ) : (
      <div class="scroll">
        <table>
          <thead>
            <tr>
              <th scope="col">Received</th>
              <th scope="col">Delivery</th>
              <th scope="col">Event</th>
              <th scope="col">Project</th>
              <th scope="col">Sender</th>
              <th scope="col">Outcome</th>
              <th scope="col">Runs, or why none</th>
            </tr>
          </thead>
          <tbody>
            {listing.deliveries.map((d) => (
              <tr>
                <td>{formatTime(d.received_at)}</td>
                <td>
                  <code>{d.id}</code>
                </td>
                <td>
                  {d.forge} {d.event}
                  {d.action ? `.${d.action}` : ""}
                </td>
                <td>{d.project ?? d.repository ?? ""}</td>
                <td>{d.sender ?? ""}</td>
                <td>
                  <Status status={d.outcome} />
                </td>
                <td>
                  {d.runs.length > 0
                    ? d.runs.map((id, i) => (
                        <>
                          {i > 0 ? ", " : ""}
                          <a href={`/runs/${id}`}>#{id}</a>
                        </>
                      ))
                    : (d.reason ?? "")}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    )}
    {listing.next_cursor ? (
      <nav class="pager" aria-label="Pages">
        <a href="/deliveries">Newest</a>
        <a
          rel="next"
          href={`/deliveries?${new URLSearchParams({ ...(outcome ? { outcome } : {}), cursor: listing.next_cursor })}`}
        >
          Older
        </a>
      </nav>
    ) : null}
  </Layout>
);

export const LoginPage: FC<{ csrf: string; next: string; error: string | undefined }> = ({ csrf, next, error }) => (
  <Document title="Sign in">
    <main id="main" class="login">
      <h1>formula-runner</h1>
      <Notice text={error} kind="error" />
      <form method="post" action="/login">
        <input type="hidden" name={CSRF_FIELD} value={csrf} />
        <input type="hidden" name="next" value={next} />
        <label for="token">API token</label>
        <input id="token" type="password" name="token" autocomplete="current-password" required />
        <button type="submit">Sign in</button>
      </form>
      <p>The token is the server's API_TOKEN (or the file its start-up log names).</p>
    </main>
  </Document>
);

/** A page for a refused or failed request, signed in or not. */
export const ErrorPage: FC<{ page: PageContext | undefined; title: string; message: string }> = (props) =>
  props.page ? (
    <Layout page={props.page} title={props.title}>
      <Notice text={props.message} kind="error" />
      <p>
        <a href="/">Back to the runs</a>
      </p>
    </Layout>
  ) : (
    <Document title={props.title}>
      <main id="main">
        <h1>{props.title}</h1>
        <Notice text={props.message} kind="error" />
        <p>
          <a href="/login">Sign in</a>
        </p>
      </main>
    </Document>
  );
