import { sql } from "drizzle-orm";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Database } from "../db/client.js";
import {
  deliveries,
  escalations,
  outbox,
  RUN_STATUSES,
  type Run,
  runs,
  SESSION_KINDS,
  type Session,
  SKIP_REASONS,
  worktrees,
} from "../db/schema/index.js";
import { errorMessage } from "./errors.js";
import type { Logger } from "./logger.js";
import type { RunObserver } from "./runs/run-executor.js";

const PREFIX = "formula_runner_";

/** How a session can end (the `outcome` column, see db/schema/sessions.ts). */
const SESSION_OUTCOMES = ["done", "failed", "crashed", "timed_out", "cancelled", "escalated", "interrupted"] as const;

/** Worktree states worth a gauge: removed ones only grow, like a counter nobody asked for. */
const LIVE_WORKTREE_STATES = ["active", "preserved"] as const;

/** Agent sessions last minutes to hours (max_duration caps them, 2 h in the shipped formulas). */
const SESSION_BUCKETS_S = [10, 30, 60, 120, 300, 600, 1_200, 1_800, 3_600, 7_200, 14_400, 28_800];

/** A run can also wait for a human between sessions (escalation_timeout: 24 h by default). */
const RUN_BUCKETS_S = [10, 30, 60, 300, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 86_400, 172_800];

/** A scrape answers within Prometheus' default 10 s timeout even when the database hangs. */
const DEFAULT_QUERY_TIMEOUT_MS = 5_000;

export interface MetricsOptions {
  /** Read at scrape time for the cluster-wide gauges. */
  database: Database;
  log: Logger;
  /** How long a scrape waits for the database before leaving the gauges out. */
  queryTimeoutMs?: number;
}

/** What the database gauges show, read once per scrape. */
interface DatabaseCounts {
  runs: Map<string, number>;
  worktrees: Map<string, number>;
  outboxPending: number;
  escalationsOpen: number;
  deliveriesPending: number;
}

/**
 * A label value from a closed set, so a value nobody expected cannot add a series per
 * distinct string (the columns behind these labels are plain `text`).
 */
function oneOf(value: string | null, allowed: readonly string[]): string {
  if (value === null) return "unknown";
  return allowed.includes(value) ? value : "other";
}

/** Adds what a session reported; null (the agent said nothing) adds no sample. */
function addTo<T extends string>(counter: Counter<T>, labels: Partial<Record<T, string>>, value: number | null): void {
  // A NaN would stick to the counter forever and a negative one throws: neither is a count.
  if (value !== null && Number.isFinite(value) && value >= 0) counter.inc(labels, value);
}

function seconds(from: Date | null, to: Date | null): number | undefined {
  if (!from || !to) return undefined;
  const s = (to.getTime() - from.getTime()) / 1000;
  return s >= 0 ? s : undefined;
}

/**
 * The Prometheus metrics of one server: its own registry (never prom-client's global
 * one: a process, a test run say, may hold several servers), Node.js process metrics,
 * counters fed by run events (it is a `RunObserver`), and gauges read from the database
 * at scrape time.
 *
 * Labels are only formula and project names (slugs checked when the config and the
 * formula files are loaded) and values from closed sets (statuses, kinds, outcomes):
 * never issue numbers, run ids, logins or other text that came from people, which would
 * add a series per value and could carry what must not leave the server.
 *
 * Counters and histograms count what THIS instance saw (sum them across instances); the
 * database gauges describe the whole cluster, so every instance reports the same value
 * (take max, not sum).
 */
export class Metrics implements RunObserver {
  readonly #registry = new Registry();
  readonly #database: Database;
  readonly #log: Logger;
  readonly #queryTimeoutMs: number;
  /** The database read shared by every gauge of the scrape in progress. */
  #scrape: Promise<DatabaseCounts | undefined> | undefined;

  readonly #sessions: Counter<"formula" | "project" | "kind" | "outcome">;
  readonly #cost: Counter<"formula" | "project">;
  readonly #turns: Counter<"formula" | "project">;
  readonly #toolCalls: Counter<"formula" | "project">;
  readonly #sessionDuration: Histogram<"formula" | "outcome">;
  readonly #runsFinished: Counter<"formula" | "project" | "status" | "skip_reason">;
  readonly #runDuration: Histogram<"formula" | "status">;
  readonly #instancesDeclaredDead: Counter;
  readonly #runsTakenOver: Counter<"status">;

  constructor(options: MetricsOptions) {
    this.#database = options.database;
    this.#log = options.log;
    this.#queryTimeoutMs = options.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
    const registers = [this.#registry];
    collectDefaultMetrics({ register: this.#registry, prefix: PREFIX });

    this.#sessions = new Counter({
      name: `${PREFIX}sessions_total`,
      help: "Agent sessions ended, by formula, project, session kind (initial, recovery, resume) and outcome.",
      labelNames: ["formula", "project", "kind", "outcome"],
      registers,
    });
    this.#cost = new Counter({
      name: `${PREFIX}agent_cost_usd_total`,
      help: "Agent cost in US dollars as the agent reported it (Claude Code's total_cost_usd), by formula and project.",
      labelNames: ["formula", "project"],
      registers,
    });
    this.#turns = new Counter({
      name: `${PREFIX}agent_turns_total`,
      help: "Agent turns reported by ended sessions, by formula and project.",
      labelNames: ["formula", "project"],
      registers,
    });
    this.#toolCalls = new Counter({
      name: `${PREFIX}agent_tool_calls_total`,
      help: "Agent tool calls reported by ended sessions, by formula and project.",
      labelNames: ["formula", "project"],
      registers,
    });
    this.#sessionDuration = new Histogram({
      name: `${PREFIX}session_duration_seconds`,
      help: "How long agent sessions ran, by formula and outcome.",
      labelNames: ["formula", "outcome"],
      buckets: SESSION_BUCKETS_S,
      registers,
    });
    this.#runsFinished = new Counter({
      name: `${PREFIX}runs_finished_total`,
      help: 'Runs that reached a final status, by formula, project, status and skip_reason ("" unless skipped).',
      labelNames: ["formula", "project", "status", "skip_reason"],
      registers,
    });
    this.#runDuration = new Histogram({
      name: `${PREFIX}run_duration_seconds`,
      help: "From a run's start to its final status (escalation waits included), by formula and status.",
      labelNames: ["formula", "status"],
      buckets: RUN_BUCKETS_S,
      registers,
    });

    this.#instancesDeclaredDead = new Counter({
      name: `${PREFIX}instances_declared_dead_total`,
      help: "Instances this instance declared dead (heartbeat older than INSTANCE_DEAD_AFTER) and took over.",
      registers,
    });
    this.#runsTakenOver = new Counter({
      name: `${PREFIX}runs_taken_over_total`,
      help: "Runs this instance took over from instances it declared dead, by the status they had (running, escalated).",
      labelNames: ["status"],
      registers,
    });

    // Read from the database at scrape time, for the whole cluster. When the database
    // fails, the error is logged once for the scrape and these gauges are left out of
    // the answer (no samples, not zeros: a zero would claim "nothing queued"); the rest
    // of /metrics still answers, so a database outage stays visible in the other metrics.
    const runsGauge: Gauge<"status"> = new Gauge({
      name: `${PREFIX}runs`,
      help: "Runs in the database (every instance's) by status.",
      labelNames: ["status"],
      registers,
      collect: async () => {
        const counts = await this.#counts();
        runsGauge.reset();
        if (!counts) return;
        for (const status of RUN_STATUSES) runsGauge.set({ status }, counts.runs.get(status) ?? 0);
      },
    });
    const worktreesGauge: Gauge<"state"> = new Gauge({
      name: `${PREFIX}worktrees`,
      help: "Worktrees on every instance's disk, by state (active, preserved).",
      labelNames: ["state"],
      registers,
      collect: async () => {
        const counts = await this.#counts();
        worktreesGauge.reset();
        if (!counts) return;
        for (const state of LIVE_WORKTREE_STATES) worktreesGauge.set({ state }, counts.worktrees.get(state) ?? 0);
      },
    });
    const outboxGauge: Gauge = new Gauge({
      name: `${PREFIX}outbox_pending`,
      help: "Forge writes (comments, edits, labels) waiting in the outbox to be sent.",
      registers,
      collect: async () => {
        const counts = await this.#counts();
        if (counts) outboxGauge.set(counts.outboxPending);
        // A gauge without labels has a sample of its own, 0 after reset(): remove it.
        else outboxGauge.remove();
      },
    });
    const deliveriesGauge: Gauge = new Gauge({
      name: `${PREFIX}deliveries_pending`,
      help: "Webhook deliveries waiting for the forge to answer their sender's permission check.",
      registers,
      collect: async () => {
        const counts = await this.#counts();
        if (counts) deliveriesGauge.set(counts.deliveriesPending);
        else deliveriesGauge.remove();
      },
    });
    const escalationsGauge: Gauge = new Gauge({
      name: `${PREFIX}escalations_open`,
      help: "Agent questions waiting for a human reply.",
      registers,
      collect: async () => {
        const counts = await this.#counts();
        if (counts) escalationsGauge.set(counts.escalationsOpen);
        else escalationsGauge.remove();
      },
    });
  }

  /** The Content-Type of `text()`: Prometheus text format 0.0.4. */
  get contentType(): string {
    return this.#registry.contentType;
  }

  /** Every metric in Prometheus text format; never throws for a database failure. */
  async text(): Promise<string> {
    const scrape = this.#readCounts();
    // prom-client calls every gauge's collect() in the same tick, so all of them see this
    // scrape's read: one query, and at most one log line, per scrape.
    this.#scrape = scrape;
    try {
      return await this.#registry.metrics();
    } finally {
      if (this.#scrape === scrape) this.#scrape = undefined;
    }
  }

  sessionEnded(run: Run, session: Session): void {
    const { formula, project } = run;
    const outcome = oneOf(session.outcome, SESSION_OUTCOMES);
    this.#sessions.inc({ formula, project, kind: oneOf(session.kind, SESSION_KINDS), outcome });
    addTo(this.#cost, { formula, project }, session.costUsd);
    addTo(this.#turns, { formula, project }, session.numTurns);
    addTo(this.#toolCalls, { formula, project }, session.toolCalls);
    const duration = seconds(session.startedAt, session.endedAt);
    if (duration !== undefined) this.#sessionDuration.observe({ formula, outcome }, duration);
  }

  /** This instance declared another dead and took over its runs. */
  instanceTakenOver(takeover: { running: readonly number[]; escalated: readonly number[] }): void {
    this.#instancesDeclaredDead.inc();
    this.#runsTakenOver.inc({ status: "running" }, takeover.running.length);
    this.#runsTakenOver.inc({ status: "escalated" }, takeover.escalated.length);
  }

  runFinished(run: Run): void {
    const { formula, project } = run;
    const status = oneOf(run.status, RUN_STATUSES);
    const skipReason = run.skipReason === null ? "" : oneOf(run.skipReason, SKIP_REASONS);
    this.#runsFinished.inc({ formula, project, status, skip_reason: skipReason });
    const duration = seconds(run.startedAt, run.finishedAt);
    if (duration !== undefined) this.#runDuration.observe({ formula, status }, duration);
  }

  #counts(): Promise<DatabaseCounts | undefined> {
    // Outside text() (someone reading the registry directly) each gauge reads for itself.
    return this.#scrape ?? this.#readCounts();
  }

  /** One statement, so the database gauges describe one moment; undefined (logged) on failure. */
  async #readCounts(): Promise<DatabaseCounts | undefined> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const query = this.#database.rows<{ metric: string; key: string; n: number | string }>(sql`
        select 'runs' as metric, ${runs.status} as key, count(*)::int as n from ${runs} group by ${runs.status}
        union all
        select 'worktrees', ${worktrees.state}, count(*)::int from ${worktrees}
          where ${worktrees.state} in ('active', 'preserved') group by ${worktrees.state}
        union all
        select 'outbox', '', count(*)::int from ${outbox} where ${outbox.state} = 'pending'
        union all
        select 'escalations', '', count(*)::int from ${escalations} where ${escalations.state} = 'open'
        union all
        select 'deliveries', '', count(*)::int from ${deliveries} where ${deliveries.outcome} = 'pending'`);
      const rows = await Promise.race([
        query,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${this.#queryTimeoutMs} ms`)),
            this.#queryTimeoutMs,
          );
        }),
      ]);
      const counts: DatabaseCounts = {
        runs: new Map(),
        worktrees: new Map(),
        outboxPending: 0,
        escalationsOpen: 0,
        deliveriesPending: 0,
      };
      for (const row of rows) {
        const n = Number(row.n);
        if (row.metric === "runs") counts.runs.set(row.key, n);
        else if (row.metric === "worktrees") counts.worktrees.set(row.key, n);
        else if (row.metric === "outbox") counts.outboxPending = n;
        else if (row.metric === "escalations") counts.escalationsOpen = n;
        else if (row.metric === "deliveries") counts.deliveriesPending = n;
      }
      return counts;
    } catch (error) {
      this.#log.warn({ err: error }, `metrics: could not read the database gauges: ${errorMessage(error)}`);
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }
}
