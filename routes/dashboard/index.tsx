import { readFileSync } from "node:fs";
import { open, stat } from "node:fs/promises";
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { secureHeaders } from "hono/secure-headers";
import { streamSSE } from "hono/streaming";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import { DELIVERY_OUTCOMES, RUN_STATUSES, type RunStatus } from "../../db/schema/index.js";
import type { AppEnv } from "../../src/app.js";
import { AppError } from "../../src/errors.js";
import { listDeliveries } from "../../src/forge/deliveries.js";
import type { Services } from "../../src/services.js";
import { formulaJson } from "../formulas.js";
import { idParam } from "../input.js";
import { runRoutes } from "../runs.js";
import { deleteWorktree } from "../worktrees.js";
import { safeNext, stripAnsi } from "./format.js";
import { FormulasPage } from "./formulas-page.js";
import { type PageContext, renderPage } from "./layout.js";
import { DeliveriesPage, ErrorPage, LoginPage } from "./other-pages.js";
import { RunPage } from "./run-page.js";
import { RunsPage } from "./runs-page.js";
import { CSRF_FIELD, type DashboardSession, SessionKeeper } from "./session.js";
import { clientAddress, SignInLimit } from "./sign-in-limit.js";
import { WorktreesPage } from "./worktrees-page.js";

/** How much of a log the run page shows before following it live. */
const LOG_TAIL_BYTES = 64 * 1024;
const RUNS_PER_PAGE = 50;
const WORKTREES_PER_PAGE = 500;
const FORM_BODY_LIMIT = 256 * 1024;
/** The live feed of run changes: how often it looks, how far back it looks again, keep-alive. */
const EVENTS_POLL_MS = 1_000;
const EVENTS_OVERLAP_MS = 5_000;
const EVENTS_KEEP_ALIVE_MS = 15_000;
/** Changes read at once; a full batch means more are waiting: read on without the look-back. */
const EVENTS_BATCH = 500;

/** Pages only talk to this server: no inline script or style, no framing, forms post here only. */
const CSP = {
  defaultSrc: ["'self'"],
  scriptSrc: ["'self'"],
  styleSrc: ["'self'"],
  imgSrc: ["'self'", "data:"],
  connectSrc: ["'self'"],
  fontSrc: ["'self'"],
  objectSrc: ["'none'"],
  baseUri: ["'none'"],
  formAction: ["'self'"],
  frameAncestors: ["'none'"],
};

/** Every path this router answers (it is mounted at "/" beside the API). */
const DASHBOARD_PATHS = [
  "/",
  "/login",
  "/logout",
  "/assets/*",
  "/runs/*",
  "/worktrees",
  "/worktrees/*",
  "/formulas",
  "/formulas/*",
  "/deliveries",
  "/events",
];

const staticFile = (name: string) => readFileSync(new URL(`./static/${name}`, import.meta.url));

type DashboardEnv = AppEnv & { Variables: { session: DashboardSession; page: PageContext } };

const runsQuery = z.object({
  status: z.enum(RUN_STATUSES).or(z.literal("")).optional(),
  formula: z.string().max(200).optional(),
  project: z.string().max(200).optional(),
  cursor: z.string().max(200).optional(),
});

/** `?state=` of the worktrees page: preserved unless another known state is asked for. */
const worktreeState = (c: Context) => {
  const state = c.req.query("state");
  return state === "active" || state === "removed" ? state : "preserved";
};
const notice = (c: Context) => c.req.query("notice")?.slice(0, 300) || undefined;
const errorText = (c: Context) => c.req.query("error")?.slice(0, 300) || undefined;
const withNotice = (path: string, text: string) => `${path}?${new URLSearchParams({ notice: text })}`;

/**
 * The operator console: server-rendered pages (hono/jsx) over the same services as the
 * /api routes, signed in with the API token through a form, kept by an HMAC-signed
 * HttpOnly cookie. Every form carries a CSRF token; the pages work without JavaScript,
 * and one small script adds the live log.
 */
export function dashboardRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<DashboardEnv>();
  const sessions = new SessionKeeper(services.apiToken);
  const signIns = new SignInLimit();
  // The log follow of the API, reached with the session instead of the bearer token.
  const runApi = runRoutes(services);
  const assets = { js: staticFile("dashboard.js"), css: staticFile("dashboard.css") };
  const now = () => new Date();

  const pageContext = (session: DashboardSession, section: PageContext["section"]): PageContext => ({
    csrf: sessions.csrfFor(session),
    section,
    version: services.version,
  });

  // Only the dashboard's own paths: this router is mounted at "/" beside the API.
  const headers = secureHeaders({
    contentSecurityPolicy: CSP,
    xFrameOptions: "DENY",
    referrerPolicy: "no-referrer",
    crossOriginResourcePolicy: "same-origin",
  });
  const noStore: MiddlewareHandler = async (c, next) => {
    await next();
    if (!c.res.headers.has("cache-control")) c.header("Cache-Control", "no-store");
  };
  for (const path of DASHBOARD_PATHS) app.use(path, headers, noStore);

  app.onError(async (error, c) => {
    const session = sessions.read(c);
    const page = session ? pageContext(session, "runs") : undefined;
    let status: ContentfulStatusCode = 500;
    let message = "internal server error";
    if (error instanceof AppError) {
      status = error.status as ContentfulStatusCode;
      message = error.message;
    } else if (error instanceof HTTPException) {
      status = error.status as ContentfulStatusCode;
      message = error.message || "request refused";
    } else {
      c.get("log")().error({ err: error }, "dashboard: unhandled error");
    }
    const title = status === 404 ? "Not found" : status === 403 ? "Refused" : status >= 500 ? "Error" : "Not done";
    return c.html(await renderPage(<ErrorPage page={page} title={title} message={message} />), status);
  });

  app.get("/assets/dashboard.js", (c) =>
    c.body(assets.js, 200, {
      "content-type": "text/javascript; charset=utf-8",
      "cache-control": "public, max-age=300",
    }),
  );
  app.get("/assets/dashboard.css", (c) =>
    c.body(assets.css, 200, { "content-type": "text/css; charset=utf-8", "cache-control": "public, max-age=300" }),
  );

  // --- sign-in -------------------------------------------------------------------------
  const loginForm = async (c: Context, error?: string, status: ContentfulStatusCode = 200) =>
    c.html(
      await renderPage(<LoginPage csrf={sessions.loginCsrf(c)} next={safeNext(c.req.query("next"))} error={error} />),
      status,
    );

  app.get("/login", async (c) => {
    if (sessions.read(c)) return c.redirect(safeNext(c.req.query("next")), 302);
    return loginForm(c);
  });

  app.post("/login", bodyLimit({ maxSize: FORM_BODY_LIMIT }), async (c) => {
    const form = await c.req.parseBody();
    if (!sessions.loginCsrfValid(c, form[CSRF_FIELD])) {
      return loginForm(c, "The sign-in form expired or came from another site; try again.", 403);
    }
    const client = clientAddress(c);
    const wait = signIns.retryAfterS(client);
    if (wait !== undefined) {
      c.header("Retry-After", String(wait));
      return loginForm(c, `Too many wrong tokens from this address; try again in ${Math.ceil(wait / 60)} min.`, 429);
    }
    const token = typeof form.token === "string" ? form.token : "";
    if (!sessions.tokenMatches(token)) {
      signIns.failed(client);
      c.get("log")().warn({ client }, "dashboard: sign-in with a wrong token");
      return loginForm(c, "That is not the API token.", 401);
    }
    signIns.succeeded(client);
    sessions.start(c);
    return c.redirect(safeNext(typeof form.next === "string" ? form.next : undefined), 303);
  });

  // --- everything below needs a session (and a CSRF token on POST) ----------------------
  const requireSession: MiddlewareHandler<DashboardEnv> = async (c, next) => {
    const session = sessions.read(c);
    if (!session) {
      const url = new URL(c.req.url);
      const back = c.req.method === "GET" ? `${url.pathname}${url.search}` : "/";
      return c.redirect(`/login?${new URLSearchParams({ next: back })}`, c.req.method === "GET" ? 302 : 303);
    }
    c.set("session", session);
    if (c.req.method === "POST") {
      const form = await c.req.parseBody();
      if (!sessions.csrfValid(session, form[CSRF_FIELD])) {
        throw new AppError({
          code: "forbidden",
          message: "the form's CSRF token is missing or wrong; reload the page and try again",
        });
      }
    }
    await next();
  };
  // Every path but the sign-in form and the assets.
  const guarded = DASHBOARD_PATHS.filter((path) => path !== "/login" && path !== "/assets/*");
  for (const path of guarded) {
    app.on("POST", path, bodyLimit({ maxSize: FORM_BODY_LIMIT }));
    app.on(["GET", "POST"], path, requireSession);
  }
  const page = (c: Context<DashboardEnv>, section: PageContext["section"]) => pageContext(c.get("session"), section);
  const form = async (c: Context<DashboardEnv>) => (await c.req.parseBody()) as Record<string, string | File>;

  app.post("/logout", (c) => {
    sessions.end(c);
    return c.redirect("/login", 303);
  });

  // --- runs ----------------------------------------------------------------------------
  app.get("/", async (c) => {
    const parsed = runsQuery.safeParse(c.req.query());
    if (!parsed.success) throw new AppError({ code: "bad_request", message: "unknown filter value" });
    const q = parsed.data;
    const status = q.status ? [q.status as RunStatus] : undefined;
    const listing = await services.runs.list({
      status,
      formula: q.formula || undefined,
      project: q.project || undefined,
      cursor: q.cursor || undefined,
      limit: RUNS_PER_PAGE,
    });
    const totals = await services.runs.totals(listing.runs.map((r) => r.id));
    return c.html(
      await renderPage(
        <RunsPage
          page={page(c, "runs")}
          runs={listing.runs}
          totals={totals}
          nextCursor={listing.nextCursor}
          newest={!q.cursor}
          filter={{ status: q.status || undefined, formula: q.formula || undefined, project: q.project || undefined }}
          formulas={services.formulas
            .list()
            .map((f) => f.name)
            .sort()}
          projects={services.config.projects}
          now={now()}
        />,
      ),
    );
  });

  /**
   * Run changes as server-sent events, for pages that follow them live: one `run` event
   * ({id, status, phase}) per change of any run on any instance, read from the runs table
   * every second, and a keep-alive comment every 15 s. Each poll looks 5 s behind the last
   * change seen, since a transaction stamped earlier may commit later; what was sent is
   * not sent again.
   */
  app.get("/events", (c) =>
    streamSSE(c, async (stream) => {
      const aborted = new AbortController();
      stream.onAbort(() => aborted.abort());
      const sent = new Map<number, number>();
      let since = (await services.runs.lastChange()).getTime();
      let lastSent = Date.now();
      let behind = false;
      while (!aborted.signal.aborted && services.intake.accepting) {
        const from = new Date(behind ? since : since - EVENTS_OVERLAP_MS);
        const changes = await services.runs.changedSince(from, EVENTS_BATCH);
        behind = changes.length === EVENTS_BATCH;
        for (const change of changes) {
          const at = change.updatedAt.getTime();
          since = Math.max(since, at);
          if ((sent.get(change.id) ?? -1) >= at) continue;
          sent.set(change.id, at);
          const { id, status, phase } = change;
          await stream.writeSSE({ event: "run", id: String(id), data: JSON.stringify({ id, status, phase }) });
          lastSent = Date.now();
        }
        for (const [id, at] of sent) if (at < since - EVENTS_OVERLAP_MS) sent.delete(id);
        if (Date.now() - lastSent >= EVENTS_KEEP_ALIVE_MS) {
          await stream.write(": keep-alive\n\n");
          lastSent = Date.now();
        }
        if (!behind) await stream.sleep(EVENTS_POLL_MS);
      }
    }),
  );

  app.get("/runs/:id", async (c) => {
    const id = idParam(c);
    const [run, outputs] = await Promise.all([services.runs.detail(id), services.outputs.list(id)]);
    const worktree = run.worktree ? await services.worktrees.get(run.worktree.id) : undefined;
    const clean = (text: string) => stripAnsi(services.secrets.scrub(text));
    // The log lives in the database (any instance serves it); a run from before that has a file here.
    const stored = await services.runLog.read(id);
    const log =
      stored.text === "" && stored.droppedBytes === 0
        ? await logTail(await services.runs.logFile(id), clean)
        : storedTail(stored, clean);
    return c.html(
      await renderPage(
        <RunPage
          page={page(c, "runs")}
          run={run}
          project={services.config.projects.find((p) => p.name === run.project)}
          log={log}
          outputs={outputs}
          worktreeBytes={worktree?.sizeBytes ?? null}
          notice={notice(c)}
          error={errorText(c)}
          now={now()}
        />,
      ),
    );
  });

  /** The whole log as text, and its live follow as server-sent events: the API's own handlers. */
  const forwardLog = (follow: boolean) => async (c: Context<DashboardEnv>) => {
    const id = idParam(c);
    await services.runs.get(id);
    const url = new URL(`/api/runs/${id}/log`, c.req.url);
    if (follow) {
      url.searchParams.set("follow", "1");
      const offset = c.req.query("offset");
      if (offset && /^\d{1,15}$/.test(offset)) url.searchParams.set("offset", offset);
    }
    const headers = new Headers();
    const lastEventId = c.req.header("last-event-id");
    if (lastEventId) headers.set("last-event-id", lastEventId);
    return runApi.fetch(new Request(url, { headers, signal: c.req.raw.signal }), c.env);
  };
  app.get("/runs/:id/log", forwardLog(false));
  app.get("/runs/:id/log/stream", forwardLog(true));

  app.post("/runs/:id/cancel", async (c) => {
    const id = idParam(c);
    const { run, request } = await services.runs.cancel(id);
    const notice =
      run.status === "cancelled"
        ? "Run cancelled."
        : request
          ? `Cancel requested from instance ${request.instanceId}, which runs it.`
          : "Cancel requested.";
    return c.redirect(withNotice(`/runs/${id}`, notice), 303);
  });

  app.post("/runs/:id/reply", async (c) => {
    const id = idParam(c);
    const body = (await form(c)).body;
    const text = typeof body === "string" ? body.trim() : "";
    if (text === "") throw new AppError({ code: "validation_failed", message: "the answer must not be empty" });
    if (text.length > 65_536) throw new AppError({ code: "validation_failed", message: "the answer is too long" });
    await services.escalations.replyViaApi(id, text, "dashboard");
    return c.redirect(withNotice(`/runs/${id}`, "Answer sent; the run resumes."), 303);
  });

  // --- worktrees -----------------------------------------------------------------------
  const worktreesPage = async (
    c: Context<DashboardEnv>,
    extra: Partial<Pick<Parameters<typeof WorktreesPage>[0], "preview" | "purged" | "notice" | "error">> = {},
  ) =>
    c.html(
      await renderPage(
        <WorktreesPage
          page={page(c, "worktrees")}
          worktrees={await services.worktrees.list({ state: worktreeState(c), limit: WORKTREES_PER_PAGE })}
          state={worktreeState(c)}
          preview={extra.preview}
          purged={extra.purged}
          notice={extra.notice ?? notice(c)}
          error={extra.error ?? errorText(c)}
          now={now()}
        />,
      ),
    );

  app.get("/worktrees", (c) => worktreesPage(c));

  app.post("/worktrees/:id/delete", async (c) => {
    const id = idParam(c);
    // Already removed is no error here: the page no longer lists it either way.
    const { request } = await deleteWorktree(services, id);
    const notice = request
      ? `Worktree ${id} is on instance ${request.instanceId}'s disk: asked it to delete it.`
      : `Worktree ${id} deleted.`;
    return c.redirect(withNotice("/worktrees", notice), 303);
  });

  app.post("/worktrees/purge", async (c) => {
    const fields = await form(c);
    const hours = Number(fields.older_than_hours);
    if (!Number.isFinite(hours) || hours < 0 || hours > 24 * 365) {
      throw new AppError({ code: "validation_failed", message: "older_than_hours: a number of hours from 0 to 8760" });
    }
    const confirm = fields.confirm === "1";
    const result = await services.worktrees.purge({
      olderThanMs: hours * 3_600_000,
      dryRun: !confirm,
      by: "api",
      projects: services.config.projects,
    });
    if (!confirm) return worktreesPage(c, { preview: { olderThanHours: hours, result } });
    return worktreesPage(c, {
      purged: result,
      notice: `Purged ${result.purged.length} worktree(s), kept ${result.kept.length}.`,
    });
  });

  // --- formulas, deliveries ------------------------------------------------------------
  app.get("/formulas", async (c) => {
    const formulas = await Promise.all(
      services.formulas
        .list()
        .sort((a, b) => a.name.localeCompare(b.name))
        .map(async (f) => ({
          ...formulaJson(f, services),
          lastRun: (await services.runs.list({ formula: f.name, limit: 1 })).runs[0],
        })),
    );
    return c.html(
      await renderPage(
        <FormulasPage
          page={page(c, "formulas")}
          formulas={formulas}
          problems={services.formulas.problems()}
          projects={services.config.projects}
          notice={notice(c)}
          error={errorText(c)}
        />,
      ),
    );
  });

  /** What SIGHUP and POST /api/formulas/reload do. */
  app.post("/formulas/reload", async (c) => {
    await services.reloadFormulas();
    const problems = services.formulas.problems().length;
    return c.redirect(
      withNotice(
        "/formulas",
        `Reloaded ${services.formulas.list().length} formula(s)${problems > 0 ? `; ${problems} problem(s)` : ""}.`,
      ),
      303,
    );
  });

  app.post("/formulas/:name/dispatch", async (c) => {
    const fields = await form(c);
    const issueText = typeof fields.issue === "string" ? fields.issue.trim() : "";
    const issue = issueText === "" ? undefined : Number(issueText);
    if (issue !== undefined && (!Number.isSafeInteger(issue) || issue <= 0)) {
      throw new AppError({ code: "validation_failed", message: "issue: a positive whole number" });
    }
    const run = await services.runs.dispatch({
      formula: c.req.param("name"),
      project: typeof fields.project === "string" && fields.project !== "" ? fields.project : undefined,
      issue,
      actor: "dashboard",
    });
    return c.redirect(withNotice(`/runs/${run.id}`, "Run queued."), 303);
  });

  app.get("/deliveries", async (c) => {
    const outcome = c.req.query("outcome");
    const listing = await listDeliveries(services.database, {
      outcome: DELIVERY_OUTCOMES.find((o) => o === outcome),
      cursor: c.req.query("cursor") || undefined,
      limit: 100,
    });
    return c.html(
      await renderPage(
        <DeliveriesPage page={page(c, "deliveries")} listing={listing} outcome={outcome || undefined} />,
      ),
    );
  });

  return app as unknown as Hono<AppEnv>;
}

/**
 * The end of a log read from the database, from a line start, cleaned for the page;
 * `offset` (where following resumes) is the end of everything stored.
 */
function storedTail(
  stored: { text: string; droppedBytes: number },
  clean: (text: string) => string,
): { text: string; offset: number; truncated: number } {
  const bytes = Buffer.from(stored.text, "utf8");
  const end = stored.droppedBytes + bytes.length;
  if (bytes.length <= LOG_TAIL_BYTES) return { text: clean(stored.text), offset: end, truncated: stored.droppedBytes };
  let tail = bytes.subarray(bytes.length - LOG_TAIL_BYTES);
  const cut = tail.indexOf(0x0a);
  if (cut !== -1) tail = tail.subarray(cut + 1);
  return { text: clean(tail.toString("utf8")), offset: end, truncated: end - tail.length };
}

/** The last bytes of a log file, from a line start, cleaned for the page; `offset` is where following resumes. */
async function logTail(
  file: string,
  clean: (text: string) => string,
): Promise<{ text: string; offset: number; truncated: number }> {
  const size = await stat(file).then(
    (s) => s.size,
    () => 0,
  );
  if (size === 0) return { text: "", offset: 0, truncated: 0 };
  const start = Math.max(0, size - LOG_TAIL_BYTES);
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    let bytes = buffer.subarray(0, bytesRead);
    let skipped = start;
    if (start > 0) {
      const cut = bytes.indexOf(0x0a);
      if (cut !== -1) {
        bytes = bytes.subarray(cut + 1);
        skipped += cut + 1;
      }
    }
    // Whole lines only, as the live stream sends them: it resumes after the last newline.
    const end = bytes.lastIndexOf(0x0a) + 1;
    return { text: clean(bytes.subarray(0, end).toString("utf8")), offset: skipped + end, truncated: skipped };
  } finally {
    await handle.close();
  }
}
