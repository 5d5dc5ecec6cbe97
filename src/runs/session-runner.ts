import { appendFile, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Phase, phases, runs, type Session, type SessionKind, sessions } from "../../db/schema/index.js";
import type { AgentOutput } from "../config.js";
import { errorMessage } from "../errors.js";
import { formatDuration } from "../formulas/duration.js";
import type { Logger } from "../logger.js";
import type { SecretRegistry } from "../secrets.js";
import { type AgentExit, type AgentProcess, startAgentProcess } from "../sessions/agent-process.js";
import { isTerminalPhase, type PhaseSignal, type TerminalPhase } from "../sessions/phase-file.js";
import { PhaseWatcher } from "../sessions/phase-watcher.js";
import { type AgentResult, type ApiError, StreamJsonReader, type StreamSummary } from "../sessions/stream-json.js";
import { retryWhileUnavailable } from "./retry-database.js";
import type { RunLogSink } from "./run-log.js";

/** How a session ended, as the run lifecycle needs to know it. */
export type SessionOutcome =
  | { kind: "phase"; phase: TerminalPhase; detail: string | undefined; body: string }
  /** Exit 0 (or stopped while lingering after its final result) without a terminal phase. */
  | { kind: "no_phase"; lingered?: boolean }
  /** The agent's model API failed for good (rate limit, authentication, overload, billing...). */
  | { kind: "api_error"; error: ApiError }
  /** `--resume` named a conversation the agent does not have (its history is gone). */
  | { kind: "resume_not_found"; message: string }
  | { kind: "crash"; exit: AgentExit }
  | { kind: "spawn_failed"; message: string }
  | { kind: "timed_out"; why: string }
  | { kind: "cancelled"; why: string }
  | { kind: "interrupted" };

/** Why the server stopped a session, when it did. */
export type StopCause =
  | { kind: "timed_out"; why: string }
  | { kind: "cancelled"; why: string }
  | { kind: "interrupted" };

export interface SessionSpec {
  runId: number;
  seq: number;
  kind: SessionKind;
  command: readonly string[];
  cwd: string;
  env: Readonly<Record<string, string>>;
  prompt: string;
  runDir: string;
  phaseFile: string;
  /** Idle timeout: no phase change and no output for this long. */
  timeoutMs: number;
  /** Hard cap for the session. */
  maxDurationMs: number;
  killGraceMs: number;
  /** After a terminal phase, how long the agent may take to exit before it is stopped. */
  terminalLingerMs: number;
  /** `stream-json`: stdout is Claude Code's JSON lines (session id, turns, cost, result). */
  output: AgentOutput;
  /** After the final result object of a stream-json agent, how long it may take to exit (30 s). */
  resultLingerMs: number;
  /** The session was started with `--resume` (a missing conversation is then its own outcome). */
  resumed: boolean;
}

export interface SessionDeps {
  database: Database;
  instanceId: string;
  log: Logger;
  secrets: SecretRegistry;
  /** Called after each new phase is stored (status comments hang off this). */
  onPhase?: (phase: Phase) => Promise<void> | void;
  /** The run's log in the database (every instance serves it); the disk file is written as well. */
  runLog?: RunLogSink;
}

const TAIL_BYTES = 16 * 1024;

function describeExit(exit: AgentExit): string {
  switch (exit.kind) {
    case "exited":
      return `exit code ${exit.code}`;
    case "signaled":
      return `killed by ${exit.signal}`;
    case "spawn_failed":
      return `could not start: ${exit.message}`;
  }
}

/** One agent session from start to classified end; the owner of its process. */
export class SessionRunner {
  #process: AgentProcess | undefined;
  #stopCause: StopCause | undefined;
  #terminal: (PhaseSignal & { at: Date }) | undefined;
  #lastActivity = Date.now();
  #session: Session | undefined;
  readonly #spec: SessionSpec;
  readonly #deps: SessionDeps;
  #phaseWrites: Promise<void> = Promise.resolve();
  /** Writes of what the agent's stream reported (session id, result), in order. */
  #streamWrites: Promise<void> = Promise.resolve();
  /** The server stopped the agent because it lingered after its final result. */
  #resultLingered = false;

  constructor(spec: SessionSpec, deps: SessionDeps) {
    this.#spec = spec;
    this.#deps = deps;
  }

  get session(): Session | undefined {
    return this.#session;
  }

  /** Asks the session to stop (timeout, cancel, shutdown); the first cause wins. */
  stop(cause: StopCause): void {
    this.#stopCause ??= cause;
    void this.#process?.stop(cause.kind === "interrupted" ? "server shutting down" : cause.why);
  }

  async run(
    hooks: { onStarted?: (session: Session) => Promise<void> } = {},
  ): Promise<{ outcome: SessionOutcome; session: Session; lastPhase: string | undefined }> {
    const spec = this.#spec;
    const log = this.#deps.log.child({ session: spec.seq });
    await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
    // A fresh phase file per session: a phase left by the previous session is not news.
    // Private (0600): prompts and raw output carry what people and agents wrote.
    await writeFile(spec.phaseFile, "", { mode: 0o600 });
    await writeFile(path.join(spec.runDir, "prompt.md"), spec.prompt, { mode: 0o600 });
    const logFile = path.join(spec.runDir, "log");
    const header = `\n=== formula-runner: session ${spec.seq} (${spec.kind}) started ${new Date().toISOString()} ===\n`;
    await appendFile(logFile, header, { mode: 0o600 });
    this.#deps.runLog?.append(spec.runId, header);

    const [session] = await this.#deps.database.db
      .insert(sessions)
      .values({ runId: spec.runId, seq: spec.seq, kind: spec.kind, instanceId: this.#deps.instanceId })
      .returning();
    this.#session = session as Session;
    await this.#deps.database.db
      .update(runs)
      .set({ attempt: spec.seq, updatedAt: sql`now()` })
      .where(eq(runs.id, spec.runId));
    await hooks.onStarted?.(this.#session);

    let lastPhase: string | undefined;
    let lingerTimer: NodeJS.Timeout | undefined;
    let exited = false;
    const watcher = new PhaseWatcher({
      file: spec.phaseFile,
      onPhase: (signal) => {
        lastPhase = signal.phase;
        this.#lastActivity = Date.now();
        if (isTerminalPhase(signal.phase) && !this.#terminal) {
          this.#terminal = signal;
          // The watcher's last read comes after the exit: then there is no process to wait for.
          if (!exited) {
            lingerTimer = setTimeout(() => {
              log.warn(
                { phase: signal.phase },
                `agent still running ${formatDuration(spec.terminalLingerMs)} after PHASE:${signal.phase}; stopping it`,
              );
              void this.#process?.stop(`lingered after PHASE:${signal.phase}`);
            }, spec.terminalLingerMs);
          }
        }
        this.#phaseWrites = this.#phaseWrites.then(() => this.#recordPhase(signal, log));
      },
      onError: (error) => log.warn({ err: error }, `phase watcher: ${error.message}`),
    });
    await watcher.prime();
    await watcher.start();

    let resultTimer: NodeJS.Timeout | undefined;
    const reader = spec.output === "stream-json" ? new StreamJsonReader() : undefined;
    if (reader) {
      reader.onNote = (note) => log.debug(note);
      reader.onSessionId = (agentSessionId) => this.#recordStream(log, { agentSessionId });
      reader.onResult = (result) => {
        this.#recordStream(log, resultColumns(result, this.#deps.secrets));
        log.info(
          { subtype: result.subtype, isError: result.isError, turns: result.numTurns, costUsd: result.totalCostUsd },
          "agent reported its result",
        );
        // The result means the agent has finished; a process still there later is stuck.
        if (exited || this.#terminal) return;
        resultTimer = setTimeout(() => {
          this.#resultLingered = true;
          log.warn(`agent still running ${formatDuration(spec.resultLingerMs)} after its final result; stopping it`);
          void this.#process?.stop(`lingered ${formatDuration(spec.resultLingerMs)} after its final result`);
        }, spec.resultLingerMs);
      };
    }

    this.#lastActivity = Date.now();
    const agent = startAgentProcess({
      command: spec.command,
      cwd: spec.cwd,
      env: spec.env,
      input: spec.prompt,
      logFile,
      tailBytes: TAIL_BYTES,
      killGraceMs: spec.killGraceMs,
      onOutput: (text, stream) => {
        this.#lastActivity = Date.now();
        this.#deps.runLog?.append(spec.runId, text);
        if (stream === "stdout") reader?.push(text);
      },
    });
    this.#process = agent;
    if (this.#stopCause) void agent.stop("stopped before it started");
    if (agent.pid !== undefined) {
      const { pid } = agent;
      const id = this.#session.id;
      // The agent runs already: a cut here must not end the execution, or the run sweep
      // would stop a live agent and take its run over as a crash (seen in the chaos run).
      await retryWhileUnavailable(
        () => this.#deps.database.db.update(sessions).set({ pid }).where(eq(sessions.id, id)),
        {
          log,
          what: `record the pid of session ${spec.seq}`,
        },
      );
    }
    log.info({ pid: agent.pid, kind: spec.kind }, `session ${spec.seq} started`);

    const maxTimer = setTimeout(() => {
      this.stop({ kind: "timed_out", why: `max_duration of ${formatDuration(spec.maxDurationMs)} reached` });
    }, spec.maxDurationMs);
    const idleEvery = Math.min(1000, Math.max(50, Math.floor(spec.timeoutMs / 10)));
    const idleTimer = setInterval(() => {
      if (Date.now() - Math.max(this.#lastActivity, agent.lastOutputAt) >= spec.timeoutMs) {
        this.stop({
          kind: "timed_out",
          why: `no phase change and no output for ${formatDuration(spec.timeoutMs)} (timeout)`,
        });
      }
    }, idleEvery);

    const exit = await agent.exited;
    exited = true;
    clearTimeout(maxTimer);
    clearInterval(idleTimer);
    clearTimeout(lingerTimer);
    clearTimeout(resultTimer);
    reader?.end();
    // One last look: a phase written just before exit must not be missed.
    await watcher.stop();
    await this.#phaseWrites;
    await this.#streamWrites;

    const summary = reader?.summary;
    const outcome = this.#classify(exit, summary);
    // The tail was cut from the whole output: a secret cut in half at its start is caught too.
    const tail = this.#deps.secrets.scrubTail(agent.tail());
    const plainDetail = outcomeDetail(outcome);
    const detail = plainDetail === null ? null : this.#deps.secrets.scrub(plainDetail);
    const footer = `\n=== formula-runner: session ${spec.seq} ended: ${describeExit(exit)}; ${closingWords(outcome)}${detail ? `: ${detail}` : ""} ===\n`;
    await appendFile(logFile, footer);
    this.#deps.runLog?.append(spec.runId, footer);
    // Stored before the run's status changes: a follower that sees the status final has every line.
    await this.#deps.runLog?.flush(spec.runId);
    // The outcome stays in memory (and the phase file and log on disk) until this is recorded.
    const sessionId = this.#session.id;
    const [ended] = await retryWhileUnavailable(
      () =>
        this.#deps.database.db
          .update(sessions)
          .set({
            endedAt: sql`now()`,
            exitCode: exit.kind === "exited" ? exit.code : null,
            signal: exit.kind === "signaled" ? exit.signal : null,
            outcome: outcomeName(outcome),
            detail,
            outputTail: tail,
            ...(summary ? summaryColumns(summary, this.#deps.secrets) : {}),
          })
          .where(eq(sessions.id, sessionId))
          .returning(),
      { log, what: `record the end of session ${spec.seq}` },
    );
    log.info({ exit, outcome: outcome.kind, detail }, `session ${spec.seq} ended: ${outcome.kind}`);
    return { outcome, session: ended as Session, lastPhase };
  }

  async #recordPhase(signal: PhaseSignal & { at: Date }, log: Logger): Promise<void> {
    try {
      // Agents print what they see, tokens included: nothing secret is stored.
      const raw = signal.phase === "escalate" ? signal.body || null : (signal.detail ?? null);
      const detail = raw === null ? null : this.#deps.secrets.scrub(raw);
      const [row] = await this.#deps.database.db
        .insert(phases)
        .values({
          runId: this.#spec.runId,
          sessionId: this.#session?.id ?? null,
          phase: signal.phase,
          detail,
          at: signal.at,
        })
        .returning();
      await this.#deps.database.db
        .update(runs)
        .set({ phase: signal.phase, updatedAt: sql`now()` })
        .where(eq(runs.id, this.#spec.runId));
      log.info({ phase: signal.phase, detail: signal.detail }, `phase ${signal.phase}`);
      if (row) await this.#deps.onPhase?.(row);
    } catch (error) {
      log.error({ err: error }, `could not record phase ${signal.phase}: ${errorMessage(error)}`);
    }
  }

  /** Records what the agent's stream reported, as it comes (never throws: a failure is logged). */
  #recordStream(log: Logger, columns: Partial<typeof sessions.$inferInsert>): void {
    const id = this.#session?.id;
    if (id === undefined) return;
    this.#streamWrites = this.#streamWrites.then(async () => {
      try {
        await this.#deps.database.db.update(sessions).set(columns).where(eq(sessions.id, id));
      } catch (error) {
        log.error({ err: error }, `could not record the agent's report: ${errorMessage(error)}`);
      }
    });
  }

  #classify(exit: AgentExit, summary: StreamSummary | undefined): SessionOutcome {
    // A terminal phase is what the agent meant, whatever happened to the process after.
    if (this.#terminal) {
      return {
        kind: "phase",
        phase: this.#terminal.phase as TerminalPhase,
        detail: this.#terminal.detail,
        body: this.#terminal.body,
      };
    }
    if (exit.kind === "spawn_failed") return { kind: "spawn_failed", message: exit.message };
    if (this.#stopCause) {
      return this.#stopCause.kind === "interrupted" ? { kind: "interrupted" } : this.#stopCause;
    }
    // The API failed for good (the CLI already retried): another session would fail the same way.
    if (summary?.apiError && (summary.result?.isError ?? true)) return { kind: "api_error", error: summary.apiError };
    const missing = this.#spec.resumed
      ? summary?.result?.errors.find((e) => /no conversation found/i.test(e))
      : undefined;
    if (missing) return { kind: "resume_not_found", message: missing };
    if (this.#resultLingered) return { kind: "no_phase", lingered: true };
    if (exit.kind === "exited" && exit.code === 0) return { kind: "no_phase" };
    return { kind: "crash", exit };
  }
}

/** The log's closing line names the phase the agent wrote (`phase done`), not the outcome's kind. */
function closingWords(outcome: SessionOutcome): string {
  return outcome.kind === "phase" ? `phase ${outcome.phase}` : outcome.kind.replaceAll("_", " ");
}

function outcomeName(outcome: SessionOutcome): string {
  switch (outcome.kind) {
    case "phase":
      return outcome.phase === "merged" ? "done" : outcome.phase === "escalate" ? "escalated" : outcome.phase;
    case "no_phase":
    case "api_error":
    case "resume_not_found":
      return "failed";
    case "crash":
      return "crashed";
    case "spawn_failed":
      return "failed";
    default:
      return outcome.kind;
  }
}

/** Why the session ended, in words for `detail` columns and comments. */
export function outcomeDetail(outcome: SessionOutcome): string | null {
  switch (outcome.kind) {
    case "phase":
      return outcome.phase === "failed" ? (outcome.detail ?? "the agent wrote PHASE:failed") : null;
    case "no_phase":
      return outcome.lingered
        ? "the agent reported its final result without writing a phase, then did not exit; it was stopped"
        : "the agent exited 0 without writing a phase";
    case "api_error": {
      const status = outcome.error.status === undefined ? "" : `, HTTP ${outcome.error.status}`;
      return `the agent's model API failed (${outcome.error.kind.replace("_", " ")}${status}): ${outcome.error.message}`;
    }
    case "resume_not_found":
      return `the agent could not resume its conversation: ${outcome.message}`;
    case "crash":
      return `the agent ended abnormally (${describeExit(outcome.exit)}) without a terminal phase`;
    case "spawn_failed":
      return `could not start the agent: ${outcome.message}`;
    case "timed_out":
    case "cancelled":
      return outcome.why;
    case "interrupted":
      return "the server stopped the session while shutting down";
  }
}

export { describeExit };

/** Longest final text of an agent kept in the session record. */
const RESULT_TEXT_LIMIT = 4_000;

/** The session columns a result object fills (the text scrubbed of secrets and shortened). */
function resultColumns(result: AgentResult, secrets: SecretRegistry): Partial<typeof sessions.$inferInsert> {
  const text = result.result === undefined ? undefined : secrets.scrub(result.result);
  return {
    ...(result.sessionId !== undefined ? { agentSessionId: result.sessionId } : {}),
    ...(result.numTurns !== undefined ? { numTurns: result.numTurns } : {}),
    ...(result.totalCostUsd !== undefined ? { costUsd: result.totalCostUsd } : {}),
    result: {
      subtype: result.subtype,
      is_error: result.isError,
      num_turns: result.numTurns ?? null,
      total_cost_usd: result.totalCostUsd ?? null,
      duration_ms: result.durationMs ?? null,
      api_error_status: result.apiErrorStatus ?? null,
      usage: result.usage ?? null,
      errors: result.errors.map((e) => secrets.scrub(e)),
      text:
        text === undefined ? null : text.length > RESULT_TEXT_LIMIT ? `${text.slice(0, RESULT_TEXT_LIMIT - 1)}…` : text,
    },
  };
}

/** The session columns the whole stream fills at the end (turns and tool calls even without a result). */
function summaryColumns(summary: StreamSummary, secrets: SecretRegistry): Partial<typeof sessions.$inferInsert> {
  return {
    ...(summary.result ? resultColumns(summary.result, secrets) : {}),
    ...(summary.sessionId !== undefined ? { agentSessionId: summary.sessionId } : {}),
    numTurns: summary.turns,
    toolCalls: summary.toolCalls,
  };
}
