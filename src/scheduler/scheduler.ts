import { Cron } from "croner";
import type { Database } from "../../db/client.js";
import type { Run } from "../../db/schema/index.js";
import type { ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import { firesOn } from "../formulas/projects.js";
import type { Formula, FormulaSchedule } from "../formulas/schema.js";
import type { FormulaStore } from "../formulas/store.js";
import type { Logger } from "../logger.js";
import { claimSlot, latestSlots, type SlotNote, slotKey, slotTime } from "./slots.js";

export interface SchedulerDeps {
  database: Database;
  /** The formulas in force; `list()` is read on start() and sync(). */
  formulas: FormulaStore;
  projects: readonly ProjectConfig[];
  instanceId: string;
  log: Logger;
  /** Called after a run was queued, to wake the worker. */
  onQueued: (run: Run) => void;
  /** Clock for the catch-up after downtime and for nextRuns(); croner itself ticks on real time. */
  now?: () => Date;
}

/** The next fire times of one schedule entry of a formula. */
export interface ScheduleForecast {
  cron: string;
  timezone: string;
  /** UTC ISO 8601 strings, soonest first. */
  next: string[];
}

/** One croner job: one schedule entry of one formula, firing for every project that opted in. */
interface ScheduleJob {
  readonly key: string;
  /** Replaced by sync() when the file changed but this entry did not, so a tick uses the current formula. */
  formula: Formula;
  readonly schedule: FormulaSchedule;
  readonly cron: Cron;
}

const jobKey = (formula: string, schedule: FormulaSchedule) =>
  `${formula}\u0000${schedule.cron}\u0000${schedule.timezone}`;

/**
 * Fires formula schedules. Every instance ticks every schedule; the slot's primary key in
 * `schedule_slots` makes each (formula, project, slot time) one run however many instances
 * tick at that moment, and a slot missed while no instance was up is caught up once.
 */
export class Scheduler {
  readonly #deps: SchedulerDeps;
  readonly #log: Logger;
  readonly #now: () => Date;
  readonly #jobs = new Map<string, ScheduleJob>();
  /** Fires not finished yet (ticks, catch-up, direct calls); stop() waits for them. */
  readonly #inFlight = new Set<Promise<unknown>>();
  /** start(), sync() and stop() take turns: a reload during the catch-up waits for it. */
  #turn: Promise<void> = Promise.resolve();
  #running = false;

  constructor(deps: SchedulerDeps) {
    this.#deps = deps;
    this.#log = deps.log.child({ component: "scheduler" });
    this.#now = deps.now ?? (() => new Date());
  }

  /**
   * Creates one croner job per (formula, schedule entry), each firing for the projects the
   * formula fires on (see `firesOn`), then catches up the latest slot missed while down. Idempotent.
   */
  start(): Promise<void> {
    return this.#inTurn(async () => {
      if (this.#running) return;
      this.#running = true;
      this.#replaceJobs();
      await this.#catchUp();
    });
  }

  /** Stops every croner job and waits for the fires in flight. Idempotent. */
  stop(): Promise<void> {
    // No tick from here on, even while a start() or sync() in progress finishes first.
    this.#stopJobs();
    return this.#inTurn(async () => {
      if (this.#running) this.#log.info("scheduler stopped");
      this.#running = false;
      this.#stopJobs();
      while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
    });
  }

  /**
   * Re-reads the formulas (the caller has reloaded the store) and replaces the jobs:
   * added, removed and changed schedule entries take effect, unchanged ones keep ticking.
   * Then catches up like start(). Does nothing while the scheduler is stopped.
   */
  sync(): Promise<void> {
    return this.#inTurn(async () => {
      if (!this.#running) return;
      this.#replaceJobs();
      await this.#catchUp();
    });
  }

  /** The next `count` fire times of each schedule entry of `formula`; [] when it has none or is unknown. */
  nextRuns(formula: string, count = 5): ScheduleForecast[] {
    const found = this.#deps.formulas.get(formula);
    if (!found) return [];
    const from = this.#now();
    return found.on.schedule.map((schedule) => {
      const cron = new Cron(schedule.cron, { timezone: schedule.timezone, paused: true });
      try {
        return {
          cron: schedule.cron,
          timezone: schedule.timezone,
          next: cron.nextRuns(count, from).map((d) => d.toISOString()),
        };
      } finally {
        cron.stop();
      }
    });
  }

  /**
   * Fires one slot: records it and queues its run in one transaction, then wakes the
   * worker. Returns the run id, or undefined when the slot was claimed before (another
   * instance, an earlier fire) or could not be recorded; a failure is logged, never thrown.
   */
  fire(formula: Formula, project: ProjectConfig, slotAt: Date, note: SlotNote = "fired"): Promise<number | undefined> {
    const at = slotTime(slotAt);
    const slot = at.toISOString();
    const log = this.#log.child({ formula: formula.name, project: project.name, slot });
    const work = (async () => {
      let run: Run | undefined;
      try {
        run = await claimSlot(this.#deps.database, {
          formula,
          project: project.name,
          slotAt: at,
          instanceId: this.#deps.instanceId,
          note,
        });
      } catch (error) {
        log.error(
          { err: error, note },
          `schedule slot ${slot} of ${formula.name}/${project.name} could not be recorded: ${errorMessage(error)}`,
        );
        return undefined;
      }
      if (!run) {
        log.info({ note }, `schedule slot ${slot} of ${formula.name}/${project.name}: claimed elsewhere`);
        return undefined;
      }
      const what = note === "missed" ? "missed schedule slot" : "schedule slot";
      log.info({ runId: run.id, note }, `${what} ${slot} of ${formula.name}/${project.name}: queued run ${run.id}`);
      try {
        this.#deps.onQueued(run);
      } catch (error) {
        // The run is queued and committed; a worker's poll picks it up even without the wake-up.
        log.warn({ err: error, runId: run.id }, `waking the worker for run ${run.id} failed: ${errorMessage(error)}`);
      }
      return run.id;
    })();
    this.#inFlight.add(work);
    const forget = () => this.#inFlight.delete(work);
    work.then(forget, forget);
    return work;
  }

  #inTurn(body: () => Promise<void>): Promise<void> {
    const turn = this.#turn.then(body);
    this.#turn = turn.catch(() => {});
    return turn;
  }

  /** Makes the jobs match the store's formulas, keeping the jobs of unchanged entries. */
  #replaceJobs(): void {
    const wanted = new Map<string, { formula: Formula; schedule: FormulaSchedule }>();
    for (const formula of this.#deps.formulas.list()) {
      // A formula that fires on no project gets no job: nothing ticks that cannot fire.
      if (!this.#deps.projects.some((project) => firesOn(formula, project))) continue;
      for (const schedule of formula.on.schedule) wanted.set(jobKey(formula.name, schedule), { formula, schedule });
    }
    for (const [key, job] of this.#jobs) {
      if (wanted.has(key)) continue;
      job.cron.stop();
      this.#jobs.delete(key);
      const { cron, timezone } = job.schedule;
      this.#log.info(
        { formula: job.formula.name, cron, timezone },
        `schedule removed: ${job.formula.name} \`${cron}\` (${timezone})`,
      );
    }
    for (const [key, { formula, schedule }] of wanted) {
      const existing = this.#jobs.get(key);
      if (existing) {
        existing.formula = formula;
        continue;
      }
      const log = this.#log.child({ formula: formula.name, cron: schedule.cron, timezone: schedule.timezone });
      try {
        this.#jobs.set(key, this.#createJob(key, formula, schedule, log));
        log.info(`schedule added: ${formula.name} \`${schedule.cron}\` (${schedule.timezone})`);
      } catch (error) {
        // The formula loader checked the expression with croner already; this is a safety net
        // so one entry can never keep the others from ticking.
        log.error(
          { err: error },
          `schedule of ${formula.name} \`${schedule.cron}\` could not be created: ${errorMessage(error)}`,
        );
      }
    }
    if (this.#deps.projects.length === 0 && this.#deps.formulas.list().some((f) => f.on.schedule.length > 0)) {
      this.#log.warn("no projects configured: formula schedules do not fire");
    }
  }

  #createJob(key: string, formula: Formula, schedule: FormulaSchedule, log: Logger): ScheduleJob {
    const cron: Cron = new Cron(
      schedule.cron,
      {
        timezone: schedule.timezone,
        // A slow fire (a database that hangs) must not stack up ticks behind it.
        protect: () => log.warn("the previous fire of this schedule is still in progress: this tick is skipped"),
        catch: (error) => log.error({ err: error }, `schedule tick failed: ${errorMessage(error)}`),
      },
      () => this.#tick(job, cron),
    );
    const job: ScheduleJob = { key, formula, schedule, cron };
    return job;
  }

  /** A croner tick: the slot is the scheduled time, not the clock, so every instance agrees on it. */
  async #tick(job: ScheduleJob, cron: Cron): Promise<void> {
    // croner never fires before the scheduled time; the latest slot at or before the moment
    // it fired is the one this tick is for (previousRuns is strictly before its reference).
    const firedAt = cron.currentRun() ?? new Date();
    const [slotAt] = cron.previousRuns(1, new Date(firedAt.getTime() + 1));
    if (!slotAt) return;
    const projects = this.#deps.projects.filter((project) => firesOn(job.formula, project));
    await Promise.all(projects.map((project) => this.fire(job.formula, project, slotAt)));
  }

  /**
   * For each (formula, project) that fired before: when the latest slot due before now is
   * newer than the latest recorded one, fire that one slot as `missed`. One slot, never a
   * backfill of every slot missed; a formula that never fired waits for its next slot.
   */
  async #catchUp(): Promise<void> {
    const byFormula = new Map<string, { formula: Formula; crons: Cron[] }>();
    for (const job of this.#jobs.values()) {
      const entry = byFormula.get(job.formula.name) ?? { formula: job.formula, crons: [] };
      entry.crons.push(job.cron);
      byFormula.set(job.formula.name, entry);
    }
    if (byFormula.size === 0) return;
    let latest: Map<string, Date>;
    try {
      latest = await latestSlots(this.#deps.database, [...byFormula.keys()]);
    } catch (error) {
      this.#log.error({ err: error }, `catching up missed schedule slots failed: ${errorMessage(error)}`);
      return;
    }
    const now = this.#now();
    const fires: Promise<unknown>[] = [];
    for (const { formula, crons } of byFormula.values()) {
      let due: Date | undefined;
      for (const cron of crons) {
        const [previous] = cron.previousRuns(1, now);
        if (previous && (!due || previous.getTime() > due.getTime())) due = previous;
      }
      if (!due) continue;
      for (const project of this.#deps.projects) {
        if (!firesOn(formula, project)) continue;
        const last = latest.get(slotKey(formula.name, project.name));
        if (last === undefined || due.getTime() <= last.getTime()) continue;
        fires.push(this.fire(formula, project, due, "missed"));
      }
    }
    await Promise.all(fires);
  }

  #stopJobs(): void {
    for (const job of this.#jobs.values()) job.cron.stop();
    this.#jobs.clear();
  }
}
