import { access, appendFile, readFile, rm } from "node:fs/promises";
import { and, asc, desc, eq, isNotNull, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  type Escalation,
  escalations,
  type Phase,
  type Run,
  type RunStatus,
  runs,
  type Session,
  type SessionKind,
  sessions,
  type Worktree,
  worktrees,
} from "../../db/schema/index.js";
import { isDatabaseUnavailable } from "../../db/unavailable.js";
import type { Config, ProjectConfig } from "../config.js";
import { errorMessage } from "../errors.js";
import type { EscalationAnswer } from "../escalations/escalation-service.js";
import { buildContinuationPrompt, buildPrompt, phaseProtocol, type RecoveryContext } from "../formulas/prompt.js";
import type { Formula } from "../formulas/schema.js";
import type { FormulaStore } from "../formulas/store.js";
import type { Logger } from "../logger.js";
import type { OutputsService } from "../outputs/outputs-service.js";
import type { SecretRegistry } from "../secrets.js";
import { claudeSettingsArgs, writeClaudeSettings } from "../sessions/claude-settings.js";
import { parsePhaseFile } from "../sessions/phase-file.js";
import type { SandboxHost } from "../sessions/sandbox.js";
import { worktreeAdminDir, worktreeCommonDir } from "../worktrees/git.js";
import { WorktreeError, type WorktreeManager } from "../worktrees/worktree-manager.js";
import { agentCommand, agentEnv, rootRefusal } from "./agent-env.js";
import { allowedHosts, contain, sandboxModeFor } from "./containment.js";
import { readContextFiles, runContextCommands, worktreeState } from "./prompt-inputs.js";
import { retryWhileUnavailable } from "./retry-database.js";
import type { RunEvent } from "./run-event.js";
import type { RunLogSink } from "./run-log.js";
import { makeRunDirs, type RunPaths, runObjectsEnv, runPaths } from "./run-paths.js";
import { issueRunToken } from "./run-token.js";
import { describeExit, outcomeDetail, type SessionOutcome, SessionRunner, type StopCause } from "./session-runner.js";

export type ExecutionMode = "start" | "takeover" | "resume";

/** Things that want to hear about runs (status comments, metrics); failures are logged, never fatal. */
export interface RunObserver {
  runStarted?(run: Run): Promise<void> | void;
  phaseRecorded?(run: Run, phase: Phase): Promise<void> | void;
  escalated?(run: Run, escalation: Escalation): Promise<void> | void;
  /** A session's process ended and its record (outcome, turns, cost) is final. */
  sessionEnded?(run: Run, session: Session): Promise<void> | void;
  runFinished?(run: Run, worktree: Worktree | undefined): Promise<void> | void;
}

export interface RunEngineDeps {
  database: Database;
  config: Config;
  formulas: FormulaStore;
  worktrees: WorktreeManager;
  log: Logger;
  instanceId: string;
  secrets: SecretRegistry;
  /** The agent sandbox of this server (probed once; shared proxy). */
  sandbox: SandboxHost;
  /** Decides the forge writes an agent asked for in its outputs file (absent in tests that do not need them). */
  outputs?: Pick<OutputsService, "collect">;
  /** The server's own environment, filtered by `agentEnv`. */
  serverEnv: Readonly<Record<string, string | undefined>>;
  /** Where agents can reach this server, once it listens. */
  serverUrl: () => string | undefined;
  observers: RunObserver[];
  /** Answers to escalations, for resumed sessions (absent in tests that do not need them). */
  escalations?: {
    answerFor(runId: number): Promise<EscalationAnswer | undefined>;
    markResumed(escalationId: number, sessionId: number): Promise<void>;
  };
  now: () => Date;
  /** After a terminal phase, how long an agent may take to exit (DESIGN: 60 s). */
  terminalLingerMs: number;
  /** After a stream-json agent's final result, how long it may take to exit (DESIGN: 30 s). */
  resultLingerMs?: number;
  /** Run logs in the database (absent in tests that read only the disk file). */
  runLog?: RunLogSink;
}

const FINAL_BY_OUTCOME = { failed: "failed", crashed: "crashed", timed_out: "timed_out" } as const;

type FinalStatus = Exclude<RunStatus, "queued" | "running" | "escalated" | "skipped">;

/**
 * The worktree's fate when its run ends: preserved (with expiry) when the outcome is in
 * the formula's `preserve_on`, removed otherwise. Never throws: a failure is logged and
 * housekeeping finds the worktree later.
 */
export async function settleWorktree(
  deps: Pick<RunEngineDeps, "formulas" | "config" | "worktrees">,
  run: Run,
  status: FinalStatus,
  worktree: Worktree | undefined,
  log: Logger,
): Promise<Worktree | undefined> {
  if (worktree?.state !== "active") return worktree;
  const formula = deps.formulas.get(run.formula);
  const project = deps.config.projects.find((p) => p.name === run.project);
  try {
    const keep = status in FINAL_BY_OUTCOME && (formula?.preserveOn ?? ["crashed"]).includes(status as never);
    // Retried while the database is out of reach: a cut here left settled runs' worktrees
    // `active` until a restart (16 in a 10-minute chaos run). Both steps are idempotent.
    return await retryWhileUnavailable(
      async () => {
        if (keep) {
          const kept = await deps.worktrees.preserve(worktree, status, formula?.retentionMs ?? 24 * 3_600_000);
          log.warn(
            { path: worktree.path, expiresAt: kept.expiresAt },
            `worktree preserved for debugging: ${worktree.path}`,
          );
          return kept;
        }
        return await deps.worktrees.remove(worktree, status === "cancelled" ? "api" : "success", project);
      },
      { log, what: `settle the worktree of run ${run.id}` },
    );
  } catch (error) {
    log.error({ err: error, path: worktree.path }, `could not settle the worktree: ${errorMessage(error)}`);
    return worktree;
  }
}

/** The run's worktree in use, if it has one. */
export async function activeWorktreeOf(database: Database, runId: number): Promise<Worktree | undefined> {
  const [row] = await database.db
    .select()
    .from(worktrees)
    .where(and(eq(worktrees.runId, runId), eq(worktrees.state, "active")))
    .orderBy(desc(worktrees.id))
    .limit(1);
  return row;
}

/**
 * Carries one claimed run through its sessions to its final status: worktree, prompt,
 * session, outcome, one recovery after a crash, and the worktree's fate. The only owner
 * of the run's agent process while it lives.
 */
export class RunExecution {
  #runner: SessionRunner | undefined;
  #stopCause: StopCause | undefined;
  readonly #deps: RunEngineDeps;
  readonly #log: Logger;
  run: Run;

  constructor(deps: RunEngineDeps, run: Run) {
    this.#deps = deps;
    this.run = run;
    this.#log = deps.log.child({ runId: run.id, formula: run.formula, project: run.project });
  }

  /** Stops the run for good (`cancelled`). */
  cancel(why: string): void {
    this.#stop({ kind: "cancelled", why });
  }

  /** Stops the session for a server shutdown; the run stays `running` for the next start to take over. */
  interrupt(): void {
    this.#stop({ kind: "interrupted" });
  }

  #stop(cause: StopCause): void {
    this.#stopCause ??= cause;
    this.#runner?.stop(cause);
  }

  /**
   * `start`: a freshly claimed run. `takeover`: a run left `running` by this instance when
   * it died, or by another instance declared dead (then in a fresh worktree: the old one
   * was on that instance's disk); its agent group is already stopped, and it counts as a crash. `resume`: an
   * escalated run whose question was answered; a new session continues with the answer.
   */
  async execute(mode: ExecutionMode): Promise<void> {
    try {
      await this.#execute(mode);
    } catch (error) {
      if (isDatabaseUnavailable(error)) {
        // Not the run's fault: left `running` for the run sweep, which settles it from the disk.
        this.#log.error({ err: error }, `database out of reach; the run sweep will settle run ${this.run.id}`);
        return;
      }
      this.#log.error({ err: error }, `run failed unexpectedly: ${errorMessage(error)}`);
      await this.#finish("failed", `internal error: ${errorMessage(error)}`, undefined).catch((e: unknown) =>
        this.#log.error({ err: e }, "could not record the failure"),
      );
    }
  }

  async #execute(mode: ExecutionMode): Promise<void> {
    const { config, formulas } = this.#deps;
    const formula = formulas.get(this.run.formula);
    const project = config.projects.find((p) => p.name === this.run.project);
    if (!formula || !project) {
      const what = !formula
        ? `formula "${this.run.formula}" is not loaded`
        : `project "${this.run.project}" is not configured`;
      await this.#finish("failed", what, undefined);
      return;
    }
    const paths = runPaths(config.settings.dataDir, this.run.id);
    await makeRunDirs(paths);
    const previous = await this.#deps.database.db
      .select()
      .from(sessions)
      .where(eq(sessions.runId, this.run.id))
      .orderBy(asc(sessions.seq));
    let recoveryUsed = previous.some((s) => s.kind === "recovery");
    let worktree = await this.#activeWorktree();

    let kind: SessionKind = mode === "resume" ? "resume" : "initial";
    let recovery: RecoveryContext | undefined;
    /**
     * The dead instance whose disk held the run's worktree, when this session must start
     * in a fresh one instead (the run was taken over from it).
     */
    let takenOverFrom: string | undefined;
    /** A recovery whose worktree state is read once the fresh worktree exists. */
    let pendingRecovery: Omit<RecoveryContext, "gitStatus" | "diffStat"> | undefined;
    if (mode === "resume" && (!worktree || !(await exists(worktree.path)))) {
      const elsewhere = await this.#worktreeOnAnotherInstance();
      if (!elsewhere) {
        await this.#finish("failed", "the run's worktree is gone; it cannot resume", worktree);
        return;
      }
      takenOverFrom = elsewhere.instanceId;
      worktree = undefined;
    }
    const last = previous[previous.length - 1];
    if (mode === "takeover" && last && last.instanceId !== this.#deps.instanceId) {
      // Taken over from a dead instance: its agent went with it, so this is a crash, and
      // its worktree and phase file were on its disk. The database's record decides.
      if (this.run.phase === "done" || this.run.phase === "merged") {
        await this.#finish("done", null, worktree);
        return;
      }
      if (recoveryUsed) {
        await this.#finish(
          "crashed",
          `instance ${last.instanceId} stopped during the recovery session and was declared dead`,
          worktree,
        );
        return;
      }
      recoveryUsed = true;
      kind = "recovery";
      takenOverFrom = last.instanceId;
      if (worktree?.instanceId !== this.#deps.instanceId) worktree = undefined;
      pendingRecovery = {
        lastPhase: this.run.phase ?? undefined,
        exitDescription: `instance ${last.instanceId}, which ran it, stopped answering and was declared dead`,
      };
    } else if (mode === "takeover" && previous.length > 0) {
      // The phase file on disk is the agent's own word: done is done, whatever the database missed.
      const written = await readWrittenPhase(paths.phaseFile);
      if (written === "done" || written === "merged") {
        await rm(paths.scratchFile, { force: true });
        await this.#finish("done", null, worktree);
        return;
      }
      const lastSession = last as Session;
      if (!worktree || !(await exists(worktree.path))) {
        await this.#finish("crashed", "the server stopped during the run and its worktree is gone", worktree);
        return;
      }
      if (recoveryUsed) {
        await this.#finish("crashed", "the server stopped during the recovery session", worktree);
        return;
      }
      recoveryUsed = true;
      kind = "recovery";
      recovery = {
        lastPhase: this.run.phase ?? undefined,
        exitDescription: lastSession.detail ?? "the server restarted",
        ...(await worktreeState(
          worktree.path,
          runObjectsEnv(paths.objectsDir, await worktreeCommonDir(worktree.path)),
        )),
      };
    }

    if (!worktree) {
      try {
        worktree = await this.#deps.worktrees.create({ runId: this.run.id, project, formula: formula.name });
      } catch (error) {
        const detail =
          error instanceof WorktreeError ? error.message : `could not make the worktree: ${errorMessage(error)}`;
        await this.#finish("failed", detail, undefined);
        return;
      }
    } else if (!(await exists(worktree.path))) {
      await this.#finish("failed", `worktree ${worktree.path} is missing`, worktree);
      return;
    }
    if (takenOverFrom !== undefined) {
      await this.#logNote(
        paths,
        `instance ${takenOverFrom}, which held this run, was declared dead; instance ${this.#deps.instanceId} ` +
          `takes the run over in a fresh worktree from origin/${project.primaryBranch} (${worktree.path}): ` +
          "changes left in the old worktree are not carried over",
      );
      if (pendingRecovery) {
        recovery = {
          ...pendingRecovery,
          ...(await worktreeState(
            worktree.path,
            runObjectsEnv(paths.objectsDir, await worktreeCommonDir(worktree.path)),
          )),
        };
      }
    }
    if (mode === "start") await this.#notify("runStarted", (o) => o.runStarted?.(this.run));

    let seq = previous.length;
    // Set when a --resume found no conversation: the next session starts afresh, once.
    let fresh = false;
    for (;;) {
      if (this.#stopCause) {
        await this.#settleStopped(this.#stopCause, worktree);
        return;
      }
      seq += 1;
      const { outcome, session, lastPhase } = await this.#runSession({
        formula,
        project,
        worktree,
        paths,
        seq,
        kind,
        recovery,
        fresh,
        takenOverFrom,
      });
      if (session) await this.#notify("sessionEnded", (o) => o.sessionEnded?.(this.run, session));
      // What the agent asked to write to the forge, decided before the worktree is settled
      // (a pull request pushes the worktree's commits). A failure here never fails the run.
      await this.#deps.outputs
        ?.collect({ run: this.run, formula, project, paths, worktreePath: worktree.path })
        .catch((error: unknown) =>
          this.#log.error({ err: error }, `could not collect the agent's outputs: ${errorMessage(error)}`),
        );
      switch (outcome.kind) {
        case "phase":
          if (outcome.phase === "done" || outcome.phase === "merged") {
            await rm(paths.scratchFile, { force: true });
            await this.#finish("done", null, worktree);
          } else if (outcome.phase === "failed") {
            await this.#finish("failed", outcome.detail ?? "the agent wrote PHASE:failed", worktree);
          } else {
            await this.#escalate(formula, session, outcome.body);
          }
          return;
        case "no_phase":
          await this.#finish("failed", `${outcomeDetail(outcome)}${tailNote(session)}`, worktree);
          return;
        case "api_error":
          await this.#finish("failed", outcomeDetail(outcome), worktree);
          return;
        case "resume_not_found":
          if (!fresh) {
            fresh = true;
            this.#log.warn(
              { detail: outcome.message },
              "the agent's conversation is gone; starting a fresh session with the full prompt",
            );
            continue;
          }
          await this.#finish("failed", outcomeDetail(outcome), worktree);
          return;
        case "spawn_failed":
          await this.#finish("failed", `could not start the agent: ${outcome.message}`, worktree);
          return;
        case "crash":
          if (!recoveryUsed) {
            recoveryUsed = true;
            kind = "recovery";
            recovery = {
              lastPhase,
              exitDescription: describeExit(outcome.exit),
              ...(await worktreeState(
                worktree.path,
                runObjectsEnv(paths.objectsDir, await worktreeCommonDir(worktree.path)),
              )),
            };
            this.#log.warn({ exit: outcome.exit }, "agent crashed; starting the one recovery session");
            continue;
          }
          await this.#finish(
            "crashed",
            `the agent crashed twice (last: ${describeExit(outcome.exit)})${tailNote(session)}`,
            worktree,
          );
          return;
        case "timed_out":
        case "cancelled":
        case "interrupted":
          await this.#settleStopped(outcome, worktree);
          return;
      }
    }
  }

  async #settleStopped(
    cause: StopCause | Extract<SessionOutcome, { kind: "interrupted" }>,
    worktree: Worktree,
  ): Promise<void> {
    if (cause.kind === "interrupted") {
      // Left `running` on purpose: the next start of this instance takes it over.
      this.#log.info("session interrupted by shutdown; the run will be taken over on restart");
      return;
    }
    await this.#finish(cause.kind === "timed_out" ? "timed_out" : "cancelled", cause.why, worktree);
  }

  async #runSession(args: {
    formula: Formula;
    project: ProjectConfig;
    worktree: Worktree;
    paths: RunPaths;
    seq: number;
    kind: SessionKind;
    recovery: RecoveryContext | undefined;
    /** Start the agent's conversation afresh even if it could be resumed. */
    fresh: boolean;
    /** The dead instance whose worktree this session replaces with a fresh one. */
    takenOverFrom: string | undefined;
  }): Promise<{ outcome: SessionOutcome; session: Session | undefined; lastPhase: string | undefined }> {
    const { formula, project, worktree, paths, seq, kind, recovery } = args;
    // The answer stays in every later prompt of the run (a recovery after a resumed
    // session still needs it).
    const answer = await this.#deps.escalations?.answerFor(this.run.id);
    const { config } = this.#deps;
    const profile = config.agents[formula.agent];
    if (!profile) {
      return {
        outcome: { kind: "spawn_failed", message: `agent profile "${formula.agent}" is not configured` },
        session: undefined,
        lastPhase: undefined,
      };
    }
    // A resume after an answer, or a recovery after a crash, continues the agent's own
    // conversation when the profile can (resume_args) and the last session reported its id.
    const resumeId =
      kind !== "initial" && !args.fresh && profile.resumeArgs.length > 0 ? await this.#lastAgentSessionId() : undefined;
    const issue = this.run.issue ?? undefined;
    const [adminDir, commonDir] = await Promise.all([
      worktreeAdminDir(worktree.path),
      worktreeCommonDir(worktree.path),
    ]);
    // A new run token per session (stored below, before the agent starts): the previous
    // session's is dead from then on.
    const runToken = issueRunToken(this.run.id);
    const env = agentEnv({
      serverEnv: this.#deps.serverEnv,
      profile,
      formula,
      project,
      runId: this.run.id,
      issue,
      paths,
      worktree: worktree.path,
      commonDir,
      serverUrl: this.#deps.serverUrl(),
      runToken: runToken.token,
      ...(answer ? { escalationReply: answer.body } : {}),
    });
    const mode = sandboxModeFor(formula, profile, config);
    const willSandbox = mode !== "off" && (await this.#deps.sandbox.probe()).ok;
    const [contextFiles, contextOutputs, scratch] = await Promise.all([
      readContextFiles(formula, worktree.path, project.repoPath),
      runContextCommands(
        formula,
        {
          worktree: worktree.path,
          project: project.name,
          formula: formula.name,
          run_id: this.run.id,
          repo_root: project.repoPath,
          primary_branch: project.primaryBranch,
        },
        env,
        this.#log,
      ),
      readFile(paths.scratchFile, "utf8").catch(() => undefined),
    ]);
    const promptInput = {
      formula,
      project,
      runId: this.run.id,
      issue,
      event: (this.run.event as RunEvent | null) ?? undefined,
      worktree: worktree.path,
      phaseFile: paths.phaseFile,
      scratchFile: paths.scratchFile,
      contextFiles,
      contextOutputs,
      scratch,
      recovery,
      takenOverFrom: args.takenOverFrom,
      ...(answer
        ? { escalationReply: { author: answer.author, body: answer.body, question: answer.escalation.question } }
        : {}),
      envNames: Object.keys(env).sort(),
      sandboxHosts: willSandbox ? allowedHosts(formula, profile, env) : undefined,
    };
    const prompt = resumeId === undefined ? buildPrompt(promptInput) : buildContinuationPrompt(promptInput);
    const refusal = rootRefusal(profile.command, env);
    if (refusal)
      return { outcome: { kind: "spawn_failed", message: refusal }, session: undefined, lastPhase: undefined };
    const command = agentCommand(profile, formula.model, resumeId);
    if (profile.claudeSettings) {
      const settings = await writeClaudeSettings({
        runDir: paths.launchDir,
        worktree: worktree.path,
        primaryBranch: project.primaryBranch,
        phaseProtocol: phaseProtocol(promptInput),
      });
      command.push(...claudeSettingsArgs(settings));
    }
    const contained =
      adminDir === undefined
        ? {
            kind: "refused" as const,
            reason: `${worktree.path} is not a linked worktree (no .git file naming its admin directory)`,
            bySandbox: false,
          }
        : await contain(this.#deps.sandbox, mode, command, env, {
            config,
            project,
            formula,
            profile,
            worktree: worktree.path,
            adminDir,
            paths,
            env,
          });
    const sandboxed = contained.kind === "ready" && contained.sandboxed;
    const note = contained.kind === "ready" ? contained.note : contained.bySandbox ? contained.reason : undefined;
    await this.#deps.database.db
      .update(runs)
      .set({
        tokenHash: runToken.hash,
        forgeToken: formula.sandbox.forgeToken,
        sandboxed,
        sandboxNote: note ?? null,
        updatedAt: sql`now()`,
      })
      .where(eq(runs.id, this.run.id));
    this.run = { ...this.run, sandboxed, sandboxNote: note ?? null, forgeToken: formula.sandbox.forgeToken };
    if (contained.kind === "refused") {
      return { outcome: { kind: "spawn_failed", message: contained.reason }, session: undefined, lastPhase: undefined };
    }
    if (!sandboxed) this.#log.warn({ sandbox: mode }, `agent NOT sandboxed: ${note}`);
    if (formula.sandbox.forgeToken) {
      this.#log.warn("the agent holds the project's raw forge token ([sandbox] forge_token = true)");
    }
    const runner = new SessionRunner(
      {
        runId: this.run.id,
        seq,
        kind,
        command: contained.command,
        cwd: worktree.path,
        env: contained.env,
        prompt,
        runDir: paths.dir,
        phaseFile: paths.phaseFile,
        timeoutMs: formula.timeoutMs,
        maxDurationMs: formula.maxDurationMs,
        killGraceMs: config.settings.killGraceMs,
        terminalLingerMs: this.#deps.terminalLingerMs,
        output: profile.output,
        resultLingerMs: this.#deps.resultLingerMs ?? 30_000,
        resumed: resumeId !== undefined,
      },
      {
        database: this.#deps.database,
        instanceId: this.#deps.instanceId,
        log: this.#log,
        secrets: this.#deps.secrets,
        runLog: this.#deps.runLog,
        onPhase: async (phase) => {
          this.run = { ...this.run, phase: phase.phase };
          await this.#notify("phaseRecorded", (o) => o.phaseRecorded?.(this.run, phase));
        },
      },
    );
    this.#runner = runner;
    if (this.#stopCause) runner.stop(this.#stopCause);
    try {
      return await runner.run({
        onStarted: async (session) => {
          if (kind === "resume" && answer) await this.#deps.escalations?.markResumed(answer.escalation.id, session.id);
        },
      });
    } finally {
      this.#runner = undefined;
      contained.close();
    }
  }

  /** The agent's own id of the last session that reported one (Claude Code's session_id), for --resume. */
  async #lastAgentSessionId(): Promise<string | undefined> {
    const [row] = await this.#deps.database.db
      .select({ id: sessions.agentSessionId })
      .from(sessions)
      .where(and(eq(sessions.runId, this.run.id), isNotNull(sessions.agentSessionId)))
      .orderBy(desc(sessions.seq))
      .limit(1);
    return row?.id ?? undefined;
  }

  async #activeWorktree(): Promise<Worktree | undefined> {
    return activeWorktreeOf(this.#deps.database, this.run.id);
  }

  /**
   * The run's latest worktree when it was on another instance's disk (the run was taken
   * over from it, and the row closed as out of reach): a resumed session starts afresh then.
   */
  async #worktreeOnAnotherInstance(): Promise<Worktree | undefined> {
    const [row] = await this.#deps.database.db
      .select()
      .from(worktrees)
      .where(eq(worktrees.runId, this.run.id))
      .orderBy(desc(worktrees.id))
      .limit(1);
    return row && row.instanceId !== this.#deps.instanceId ? row : undefined;
  }

  /**
   * A line of the server's own in the run's log (disk file and database), where people
   * following the run see it between sessions.
   */
  async #logNote(paths: RunPaths, text: string): Promise<void> {
    const line = `\n=== formula-runner: ${text} ===\n`;
    this.#log.warn(text);
    await appendFile(paths.log, line, { mode: 0o600 }).catch((error: unknown) =>
      this.#log.warn({ err: error }, `could not write to the run's log file: ${errorMessage(error)}`),
    );
    this.#deps.runLog?.append(this.run.id, line);
  }

  async #escalate(formula: Formula, session: Session | undefined, question: string): Promise<void> {
    const deadline = new Date(this.#deps.now().getTime() + formula.escalationTimeoutMs);
    const escalation = await this.#deps.database.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(escalations)
        .values({
          runId: this.run.id,
          sessionId: session?.id ?? null,
          question: this.#deps.secrets.scrub(question.trim()) || "the agent needs input",
          // Asked on the run's issue, else on the project's escalation_issue.
          issue:
            this.run.issue ??
            this.#deps.config.projects.find((p) => p.name === this.run.project)?.escalationIssue ??
            null,
          deadlineAt: deadline,
        })
        .returning();
      const [run] = await tx
        .update(runs)
        .set({
          status: "escalated",
          detail: "waiting for a reply to the agent's question",
          tokenHash: null,
          updatedAt: sql`now()`,
        })
        .where(eq(runs.id, this.run.id))
        .returning();
      this.run = run as Run;
      return row as Escalation;
    });
    this.#log.info({ escalationId: escalation.id, deadline }, "agent escalated; waiting for a reply");
    await this.#notify("escalated", (o) => o.escalated?.(this.run, escalation));
  }

  /** Final status, the worktree's fate (removed, or preserved per `preserve_on`), observers told. */
  async #finish(status: FinalStatus, detail: string | null, worktree: Worktree | undefined) {
    // Retried while the database is out of reach: a run left `running` holds its key.
    const retry = { log: this.#log, what: `record run ${this.run.id} ${status}` };
    const finalWorktree = await retryWhileUnavailable(
      () => settleWorktree(this.#deps, this.run, status, worktree, this.#log),
      retry,
    );
    const [run] = await retryWhileUnavailable(
      () =>
        this.#deps.database.db
          .update(runs)
          .set({
            status,
            detail: detail === null ? null : this.#deps.secrets.scrub(detail),
            tokenHash: null,
            finishedAt: sql`now()`,
            updatedAt: sql`now()`,
          })
          // Only while the run is still this instance's: one declared dead while it was away
          // must not overwrite what the instance that took the run over records.
          .where(and(eq(runs.id, this.run.id), eq(runs.instanceId, this.#deps.instanceId)))
          .returning(),
      retry,
    );
    if (!run) {
      this.#log.warn({ status, detail }, "the run was taken over by another instance meanwhile; not recording its end");
      return;
    }
    this.run = run;
    this.#log.info({ status, detail }, `run ${status}`);
    await this.#notify("runFinished", (o) => o.runFinished?.(this.run, finalWorktree));
  }

  #notify(what: string, call: (observer: RunObserver) => Promise<void> | void): Promise<void> {
    return notifyObservers(this.#deps.observers, this.#log, what, call);
  }
}

/** Tells every observer, in order; a failing observer is logged and never stops the others or the run. */
export async function notifyObservers(
  observers: readonly RunObserver[],
  log: Logger,
  what: string,
  call: (observer: RunObserver) => Promise<void> | void,
): Promise<void> {
  for (const observer of observers) {
    try {
      await call(observer);
    } catch (error) {
      log.error({ err: error }, `run observer failed on ${what}: ${errorMessage(error)}`);
    }
  }
}

function tailNote(session: Session | undefined): string {
  const tail = session?.outputTail?.trim();
  if (!tail) return "; no output";
  const lines = tail.split("\n").slice(-5).join("\n");
  return `; last output:\n${lines}`;
}

/** The phase the agent last wrote to its phase file, if the file holds one. */
async function readWrittenPhase(file: string): Promise<string | undefined> {
  const text = await readFile(file, "utf8").catch(() => "");
  return parsePhaseFile(text)?.phase;
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
