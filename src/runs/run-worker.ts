import { and, desc, eq, inArray, isNotNull, sql } from "drizzle-orm";
import { type Run, runs, sessions } from "../../db/schema/index.js";
import { errorMessage } from "../errors.js";
import type { MemoryProbe } from "../memory.js";
import { processHasEnv, stopGroup } from "../sessions/process-group.js";
import { WakeableSleep } from "../worktrees/concurrency.js";
import {
  activeWorktreeOf,
  type ExecutionMode,
  notifyObservers,
  type RunEngineDeps,
  RunExecution,
  settleWorktree,
} from "./run-executor.js";
import { claimNextRun } from "./run-queue.js";

export interface RunWorkerOptions {
  maxSessions: number;
  /** How long a stop waits for sessions to finish on their own (SHUTDOWN_GRACE). */
  shutdownGraceMs: number;
  readMemory: MemoryProbe;
  /** How often the queue is looked at without a wake-up (runs queued by other instances). */
  pollMs?: number;
  /**
   * How often runs of this instance left `running` with no execution here (a failure to
   * record their end while the database was away) are looked for and settled. Default 30 s.
   */
  sweepMs?: number;
}

/**
 * Claims queued runs up to MAX_SESSIONS at a time and executes them; on start it first
 * takes over the runs this instance left `running` (after a crash or kill -9).
 */
export class RunWorker {
  readonly #deps: RunEngineDeps;
  readonly #options: Required<RunWorkerOptions>;
  readonly #active = new Map<number, { execution: RunExecution; done: Promise<void> }>();
  readonly #idle = new WakeableSleep();
  #loop: Promise<void> | undefined;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  /** When the loop next looks for runs left `running` with nobody executing them. */
  #nextSweepAt = 0;

  constructor(deps: RunEngineDeps, options: RunWorkerOptions) {
    this.#deps = deps;
    this.#options = { pollMs: 500, sweepMs: 30_000, ...options };
  }

  /** Runs being executed by this instance right now. */
  get activeRunIds(): number[] {
    return [...this.#active.keys()];
  }

  async start(): Promise<void> {
    if (this.#loop) return;
    await this.#takeOver();
    this.#nextSweepAt = Date.now() + this.#options.sweepMs;
    this.#loop = this.#run();
  }

  /** Wakes the loop now (a run was just queued). */
  notify(): void {
    this.#idle.wake();
  }

  /**
   * Looks for runs of this instance that nobody executes at once: the reaper just moved a
   * dead instance's runs here. The loop does it, so a run is launched once.
   */
  takeOverNow(): void {
    this.#nextSweepAt = 0;
    this.notify();
  }

  /**
   * Stops every session here without recording an end: this instance was declared dead
   * while it was away, and its runs now belong to the instance that took them over.
   */
  abandonAll(): void {
    if (this.#active.size === 0) return;
    this.#deps.log.error(
      { runs: this.activeRunIds },
      "stopping the sessions of runs taken over by another instance; this instance records nothing more for them",
    );
    for (const { execution } of this.#active.values()) execution.interrupt();
  }

  /** Cancels a run executing here; false if it is not executing on this instance. */
  cancelLocal(runId: number, why: string): Promise<void> | undefined {
    const entry = this.#active.get(runId);
    if (!entry) return undefined;
    entry.execution.cancel(why);
    return entry.done;
  }

  /** Resolves when the run's execution here has ended (or at once if it is not here). */
  async settled(runId: number): Promise<void> {
    await this.#active.get(runId)?.done;
  }

  /**
   * Stops claiming, waits up to SHUTDOWN_GRACE for sessions to end by themselves, then
   * interrupts the rest; their runs stay `running` and are taken over on the next start.
   */
  stop(): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stopping = true;
      this.notify();
      await this.#loop;
      if (this.#active.size > 0) {
        this.#deps.log.info(
          { runs: this.activeRunIds, graceMs: this.#options.shutdownGraceMs },
          "waiting for running sessions",
        );
        const all = Promise.all([...this.#active.values()].map((e) => e.done));
        let timer: NodeJS.Timeout | undefined;
        const graceOver = new Promise<"grace">((resolve) => {
          timer = setTimeout(() => resolve("grace"), this.#options.shutdownGraceMs);
        });
        const first = await Promise.race([all.then(() => "done" as const), graceOver]);
        clearTimeout(timer);
        if (first === "grace") {
          this.#deps.log.warn({ runs: this.activeRunIds }, "shutdown grace over: stopping the sessions still running");
          for (const { execution } of this.#active.values()) execution.interrupt();
          await all;
        }
      }
    })();
    return this.#stopped;
  }

  #launch(run: Run, mode: ExecutionMode): void {
    const execution = new RunExecution(this.#deps, run);
    const done = execution
      .execute(mode)
      .catch((error: unknown) =>
        this.#deps.log.error({ err: error, runId: run.id }, `run execution failed: ${errorMessage(error)}`),
      )
      .finally(() => {
        this.#active.delete(run.id);
        this.notify();
      });
    this.#active.set(run.id, { execution, done });
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      try {
        await this.#pollCancellations();
        if (Date.now() >= this.#nextSweepAt) {
          this.#nextSweepAt = Date.now() + this.#options.sweepMs;
          await this.#takeOver();
        }
        // Answered questions first: those runs already hold a worktree and a key.
        while (!this.#stopping) {
          const answered = await this.#claimAnswered();
          if (!answered) break;
          this.#deps.log.info({ runId: answered.id }, "resuming an answered run");
          this.#launch(answered, "resume");
        }
        while (!this.#stopping && this.#active.size < this.#options.maxSessions) {
          const claimed = await claimNextRun(this.#deps.database, this.#deps.instanceId, (run) => ({
            formula: this.#deps.formulas.get(run.formula),
            projectKnown: this.#deps.config.projects.some((p) => p.name === run.project),
            availableMemoryMb: this.#options.readMemory,
          }));
          if (claimed.kind === "none") break;
          const log = this.#deps.log.child({
            runId: claimed.run.id,
            formula: claimed.run.formula,
            project: claimed.run.project,
          });
          if (claimed.kind === "started") {
            log.info("run claimed");
            this.#launch(claimed.run, "start");
          } else {
            log.info(
              { status: claimed.run.status, reason: claimed.run.skipReason, detail: claimed.run.detail },
              `run ${claimed.run.status}`,
            );
            for (const observer of this.#deps.observers) {
              await Promise.resolve(observer.runFinished?.(claimed.run, undefined)).catch((error: unknown) =>
                log.error({ err: error }, "run observer failed"),
              );
            }
          }
        }
      } catch (error) {
        this.#deps.log.error({ err: error }, `run worker: ${errorMessage(error)}; retrying`);
      }
      await this.#idle.sleep(this.#options.pollMs);
    }
  }

  /**
   * An escalated run of THIS instance (its worktree is on this disk) whose question was
   * answered and not yet delivered to a session: moved back to `running` here.
   */
  async #claimAnswered(): Promise<Run | undefined> {
    const rows = await this.#deps.database.rows<{ id: number }>(sql`
      update runs set status = 'running', updated_at = now()
      where id = (
        select r.id from runs r
        join escalations e on e.run_id = r.id
        where r.status = 'escalated' and r.instance_id = ${this.#deps.instanceId}
          and e.state = 'answered' and e.resumed_session_id is null
        order by e.claimed_at
        limit 1
        for update of r skip locked)
      returning id`);
    const id = rows[0]?.id;
    if (id === undefined) return undefined;
    const [run] = await this.#deps.database.db
      .select()
      .from(runs)
      .where(eq(runs.id, Number(id)));
    return run;
  }

  /**
   * A run another part of the server ended while no session ran (an escalation that
   * timed out, a queued or escalated run cancelled): settle its worktree here when it is
   * on this instance's disk, and tell the observers. On another instance, its
   * housekeeping finds the worktree.
   */
  async settleEnded(run: Run): Promise<void> {
    const worktree =
      run.instanceId === this.#deps.instanceId ? await activeWorktreeOf(this.#deps.database, run.id) : undefined;
    const log = this.#deps.log.child({ runId: run.id });
    const final = await settleWorktree(this.#deps, run, run.status as "failed", worktree, log);
    await notifyObservers(this.#deps.observers, log, "runFinished", (o) => o.runFinished?.(run, final));
  }

  /** Cancel requests made on another instance (or by `cancel-running`) for runs executing here. */
  async #pollCancellations(): Promise<void> {
    const ids = this.activeRunIds;
    if (ids.length === 0) return;
    const requested = await this.#deps.database.db
      .select({ id: runs.id })
      .from(runs)
      .where(and(inArray(runs.id, ids), isNotNull(runs.cancelRequestedAt)));
    for (const { id } of requested) {
      this.#active.get(id)?.execution.cancel("cancel requested");
    }
  }

  /**
   * Runs of this instance that `running` with nobody executing them: left by this instance
   * (after a crash or kill -9), or moved here from an instance declared dead. Stop whatever
   * is left of their agent process groups on this host (only when the pid still belongs to
   * that run's agent: pids are reused), then treat each as a crash. Nothing is lost across
   * `kill -9`, nor when an instance never comes back.
   */
  async #takeOver(): Promise<void> {
    const { database, instanceId, log } = this.#deps;
    const orphans = await database.db
      .select()
      .from(runs)
      .where(and(eq(runs.instanceId, instanceId), eq(runs.status, "running")));
    for (const run of orphans) {
      // Executing here: not an orphan. (Claims and launches happen in this same loop, so
      // a run is never between its claim and its launch while this looks.)
      if (this.#active.has(run.id)) continue;
      const [last] = await database.db
        .select()
        .from(sessions)
        .where(eq(sessions.runId, run.id))
        .orderBy(desc(sessions.seq))
        .limit(1);
      if (last?.pid && (await processHasEnv(last.pid, "RUN_ID", String(run.id)))) {
        log.warn({ runId: run.id, pid: last.pid }, "stopping the agent left by the previous server process");
        await stopGroup(last.pid, this.#deps.config.settings.killGraceMs);
      }
      const inherited = last !== undefined && last.instanceId !== instanceId;
      if (last && last.endedAt === null) {
        await database.db
          .update(sessions)
          .set({
            endedAt: sql`now()`,
            outcome: "interrupted",
            detail: inherited
              ? `instance ${last.instanceId} stopped during this session and was declared dead`
              : "the server stopped during this session",
          })
          .where(eq(sessions.id, last.id));
      }
      // Its worktree may have no record yet (the server died between making and recording
      // it); housekeeping's scan of the whole root runs in the background, so look now.
      if (!inherited && !(await activeWorktreeOf(database, run.id))) {
        const adopted = await this.#deps.worktrees.adoptRunDirectory(run);
        if (adopted) log.warn({ runId: run.id, path: adopted.path }, "recorded the unrecorded worktree of a run");
      }
      if (inherited) {
        log.warn(
          { runId: run.id, from: last.instanceId },
          `taking over run ${run.id} from instance ${last.instanceId}, declared dead`,
        );
      } else {
        log.warn({ runId: run.id }, "taking over a run left running by this instance");
      }
      this.#launch(run, "takeover");
    }
  }
}
