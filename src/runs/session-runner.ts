import { appendFile, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type Phase, phases, runs, type Session, type SessionKind, sessions } from "../../db/schema/index.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { SecretRegistry } from "../secrets.js";
import { type AgentExit, type AgentProcess, startAgentProcess } from "../sessions/agent-process.js";
import { isTerminalPhase, type PhaseSignal, type TerminalPhase } from "../sessions/phase-file.js";
import { PhaseWatcher } from "../sessions/phase-watcher.js";

/** How a session ended, as the run lifecycle needs to know it. */
export type SessionOutcome =
  | { kind: "phase"; phase: TerminalPhase; detail: string | undefined; body: string }
  | { kind: "no_phase" }
  | { kind: "crash"; exit: AgentExit }
  | { kind: "spawn_failed"; message: string }
  | { kind: "timed_out"; why: string }
  | { kind: "cancelled"; why: string }
  | { kind: "interrupted" };

/** Why the server stopped a session, when it did. */
export type StopCause = { kind: "timed_out"; why: string } | { kind: "cancelled"; why: string } | { kind: "interrupted" };

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
}

export interface SessionDeps {
  database: Database;
  instanceId: string;
  log: Logger;
  secrets: SecretRegistry;
  /** Called after each new phase is stored (status comments hang off this). */
  onPhase?: (phase: Phase) => Promise<void> | void;
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

  async run(hooks: { onStarted?: (session: Session) => Promise<void> } = {}): Promise<{ outcome: SessionOutcome; session: Session; lastPhase: string | undefined }> {
    const spec = this.#spec;
    const log = this.#deps.log.child({ session: spec.seq });
    await mkdir(spec.runDir, { recursive: true });
    // A fresh phase file per session: a phase left by the previous session is not news.
    await writeFile(spec.phaseFile, "");
    await writeFile(path.join(spec.runDir, "prompt.md"), spec.prompt);
    const logFile = path.join(spec.runDir, "log");
    await appendFile(logFile, `\n=== formula-runner: session ${spec.seq} (${spec.kind}) started ${new Date().toISOString()} ===\n`);

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
              log.warn({ phase: signal.phase }, `agent still running ${spec.terminalLingerMs} ms after PHASE:${signal.phase}; stopping it`);
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

    this.#lastActivity = Date.now();
    const agent = startAgentProcess({
      command: spec.command,
      cwd: spec.cwd,
      env: spec.env,
      input: spec.prompt,
      logFile,
      tailBytes: TAIL_BYTES,
      killGraceMs: spec.killGraceMs,
      onOutput: () => {
        this.#lastActivity = Date.now();
      },
    });
    this.#process = agent;
    if (this.#stopCause) void agent.stop("stopped before it started");
    if (agent.pid !== undefined) {
      await this.#deps.database.db.update(sessions).set({ pid: agent.pid }).where(eq(sessions.id, this.#session.id));
    }
    log.info({ pid: agent.pid, kind: spec.kind }, `session ${spec.seq} started`);

    const maxTimer = setTimeout(() => {
      this.stop({ kind: "timed_out", why: `max_duration of ${spec.maxDurationMs} ms reached` });
    }, spec.maxDurationMs);
    const idleEvery = Math.min(1000, Math.max(50, Math.floor(spec.timeoutMs / 10)));
    const idleTimer = setInterval(() => {
      if (Date.now() - Math.max(this.#lastActivity, agent.lastOutputAt) >= spec.timeoutMs) {
        this.stop({ kind: "timed_out", why: `no phase change and no output for ${spec.timeoutMs} ms` });
      }
    }, idleEvery);

    const exit = await agent.exited;
    exited = true;
    clearTimeout(maxTimer);
    clearInterval(idleTimer);
    clearTimeout(lingerTimer);
    // One last look: a phase written just before exit must not be missed.
    await watcher.stop();
    await this.#phaseWrites;

    const outcome = this.#classify(exit);
    const tail = this.#deps.secrets.scrub(agent.tail());
    const detail = ((d) => (d === null ? null : this.#deps.secrets.scrub(d)))(outcomeDetail(outcome, exit));
    await appendFile(logFile, `\n=== formula-runner: session ${spec.seq} ended: ${describeExit(exit)}; ${outcome.kind}${detail ? `: ${detail}` : ""} ===\n`);
    const [ended] = await this.#deps.database.db
      .update(sessions)
      .set({
        endedAt: sql`now()`,
        exitCode: exit.kind === "exited" ? exit.code : null,
        signal: exit.kind === "signaled" ? exit.signal : null,
        outcome: outcomeName(outcome),
        detail,
        outputTail: tail,
      })
      .where(eq(sessions.id, this.#session.id))
      .returning();
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
        .values({ runId: this.#spec.runId, sessionId: this.#session?.id ?? null, phase: signal.phase, detail, at: signal.at })
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

  #classify(exit: AgentExit): SessionOutcome {
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
    if (exit.kind === "exited" && exit.code === 0) return { kind: "no_phase" };
    return { kind: "crash", exit };
  }
}

function outcomeName(outcome: SessionOutcome): string {
  switch (outcome.kind) {
    case "phase":
      return outcome.phase === "merged" ? "done" : outcome.phase === "escalate" ? "escalated" : outcome.phase;
    case "no_phase":
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
export function outcomeDetail(outcome: SessionOutcome, exit: AgentExit): string | null {
  switch (outcome.kind) {
    case "phase":
      return outcome.phase === "failed" ? (outcome.detail ?? "the agent wrote PHASE:failed") : null;
    case "no_phase":
      return "the agent exited 0 without writing a phase";
    case "crash":
      return `the agent ended abnormally (${describeExit(exit)}) without a terminal phase`;
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
