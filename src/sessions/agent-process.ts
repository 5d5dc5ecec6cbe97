/**
 * One agent session as a child process, and its one owner (STYLE convention 6).
 *
 * The agent is started detached, as the leader of its own process group, so it and every
 * tool subprocess it starts are signalled together. Its stdout and stderr go, in arrival
 * order, to one log file and to a bounded in-memory tail; its exit is classified into
 * {@link AgentExit}. When the leader exits the group is always swept with SIGKILL: a tool
 * subprocess must never outlive its agent (the bash design's orphans held locks).
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  createWriteStream,
  mkdirSync,
  openSync,
  rmSync,
  statSync,
  type WriteStream,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import { execa } from "execa";
import { errorMessage } from "../errors.js";
import { signalGroup, stopGroup } from "./process-group.js";

const DEFAULT_TAIL_BYTES = 16 * 1024;
const DEFAULT_KILL_GRACE_MS = 10_000;
/**
 * How long, after the group is swept, to wait for stdout/stderr to close. Only a process
 * that left the group (setsid) and still holds the pipes keeps them open; past this the
 * pipes are closed from our side so the exit is not held hostage.
 */
const STREAM_CLOSE_MS = 2_000;

export interface AgentProcessOptions {
  /** Program and arguments, placeholders already filled in. Never a shell string. */
  command: readonly string[];
  cwd: string;
  /**
   * The complete environment of the child. Nothing is added from `process.env`: the
   * caller composes it (and passes PATH along if the program is to be found through it).
   */
  env: Readonly<Record<string, string>>;
  /**
   * The agent's stdin, read to its end. It is given as an unlinked regular file, not a
   * pipe: bash takes a socket on stdin for a remote shell and then sources the server
   * user's ~/.bashrc (Debian and Ubuntu build it so), and node's pipes are sockets.
   */
  input: string;
  /** stdout and stderr are appended here (the parent directory is created). */
  logFile: string;
  /** Bytes of combined output kept in memory for {@link AgentProcess.tail}; default 16 KiB. */
  tailBytes?: number;
  /** SIGTERM -> SIGKILL delay of {@link AgentProcess.stop}; default 10 s. */
  killGraceMs?: number;
  /**
   * Every chunk of output, decoded as UTF-8 (a character split across chunks is held back
   * until complete). Called synchronously from the stream: it must not throw.
   */
  onOutput?: (text: string, stream: "stdout" | "stderr") => void;
  /** Writing the log file failed (disk full...): output keeps flowing to the tail and onOutput. */
  onLogError?: (error: Error) => void;
}

/** How a session's process ended. */
export type AgentExit =
  | { kind: "exited"; code: number }
  | { kind: "signaled"; signal: string }
  /** It never ran: missing program, not executable, bad working directory, unwritable log. */
  | { kind: "spawn_failed"; message: string };

export interface AgentProcess {
  /** The child's pid, which is also its process group id; undefined if it never started. */
  readonly pid: number | undefined;
  /** Date.now() at start. */
  readonly startedAt: number;
  /** Date.now() of the last output chunk (startedAt before any). */
  readonly lastOutputAt: number;
  /** Resolves when the process has exited, its group is swept and the log file is flushed and closed. Never rejects. */
  readonly exited: Promise<AgentExit>;
  /**
   * Stops the whole group: SIGTERM, `killGraceMs`, SIGKILL. Idempotent: every call
   * resolves with the same exit. Never rejects (callers fire and forget it); should the
   * group refuse every signal (EPERM: a setuid tool), the leader alone is killed and the
   * exit is whatever it comes to.
   */
  stop(reason: string): Promise<AgentExit>;
  /**
   * The reason given to the first stop() that found the process still running, so a
   * caller can tell "stopped for a timeout" from "exited by itself"; undefined otherwise.
   */
  readonly stopReason: string | undefined;
  /** The last `tailBytes` of combined output, cut on UTF-8 character boundaries. */
  tail(): string;
}

/** Starts an agent process. Never throws for a process that cannot start: its `exited` resolves to `spawn_failed`. */
export function startAgentProcess(options: AgentProcessOptions): AgentProcess {
  return new SupervisedAgent(options);
}

class SupervisedAgent implements AgentProcess {
  readonly pid: number | undefined;
  readonly startedAt = Date.now();
  readonly exited: Promise<AgentExit>;
  #lastOutputAt = this.startedAt;
  #stopReason: string | undefined;
  #stopping: Promise<AgentExit> | undefined;
  #leaderExited = false;
  readonly #tail: OutputTail;
  readonly #killGraceMs: number;

  constructor(options: AgentProcessOptions) {
    this.#tail = new OutputTail(options.tailBytes ?? DEFAULT_TAIL_BYTES);
    this.#killGraceMs = options.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    const [program, ...args] = options.command;
    if (program === undefined || program === "") {
      this.exited = Promise.resolve(spawnFailed("cannot start the agent: the command is empty"));
      return;
    }

    let log: WriteStream;
    try {
      mkdirSync(dirname(options.logFile), { recursive: true, mode: 0o700 });
      // Opened synchronously so an unwritable log stops the start instead of surfacing later.
      log = createWriteStream("", { fd: openSync(options.logFile, "a", 0o600) });
    } catch (error) {
      this.exited = Promise.resolve(
        spawnFailed(
          `cannot start ${JSON.stringify(program)}: cannot open log file ${options.logFile}: ${errorMessage(error)}`,
        ),
      );
      return;
    }

    let stdin: number;
    try {
      stdin = openInputFile(dirname(options.logFile), options.input);
    } catch (error) {
      log.end();
      this.exited = Promise.resolve(
        spawnFailed(`cannot start ${JSON.stringify(program)}: cannot write its input: ${errorMessage(error)}`),
      );
      return;
    }

    let subprocess: ReturnType<typeof spawnAgent>;
    try {
      subprocess = spawnAgent(program, args, stdin, options);
    } catch (error) {
      // execa validates its options synchronously; anything it refuses is a start failure too.
      log.end();
      this.exited = Promise.resolve(spawnFailed(describeSpawnFailure(program, options.cwd, error)));
      return;
    } finally {
      // spawn() returns after the child has its own copy of the descriptor.
      closeSync(stdin);
    }
    this.pid = subprocess.pid;
    this.exited = this.#supervise(subprocess, log, program, options);
  }

  get lastOutputAt(): number {
    return this.#lastOutputAt;
  }

  get stopReason(): string | undefined {
    return this.#stopReason;
  }

  tail(): string {
    return this.#tail.text();
  }

  stop(reason: string): Promise<AgentExit> {
    if (this.#stopping) return this.#stopping;
    const pid = this.pid;
    if (pid === undefined || this.#leaderExited) {
      this.#stopping = this.exited;
    } else {
      this.#stopReason = reason;
      this.#stopping = stopGroup(pid, this.#killGraceMs).then(
        () => this.exited,
        () => {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // Already gone, or not ours either: `exited` tells which way it ended.
          }
          return this.exited;
        },
      );
    }
    return this.#stopping;
  }

  /** Follows the child until it has exited, its group is gone and its output is on disk. */
  async #supervise(
    subprocess: ReturnType<typeof spawnAgent>,
    log: WriteStream,
    program: string,
    options: AgentProcessOptions,
  ): Promise<AgentExit> {
    const pid = subprocess.pid;
    if (pid === undefined) {
      // Node sets the pid only on a successful spawn; execa turns the failure into a result.
      const result = await subprocess;
      await closeLog(log);
      return spawnFailed(
        describeSpawnFailure(program, options.cwd, result.cause ?? new Error(result.originalMessage ?? result.message)),
      );
    }

    // Listen before the first await: the exit can come in the same tick as the spawn.
    const leaderExit = new Promise<AgentExit>((resolve) => {
      subprocess.once("exit", (code, signal) => {
        resolve(code !== null ? { kind: "exited", code } : { kind: "signaled", signal: signal ?? "unknown" });
      });
    });
    const streams = this.#followOutput(subprocess.stdout, subprocess.stderr, log, options);

    const exit = await leaderExit;
    this.#leaderExited = true;
    try {
      signalGroup(pid, "SIGKILL");
    } catch {
      // EPERM: what is left of the group is not ours to signal, so there is nothing more to do here.
    }
    await waitForClose(streams, STREAM_CLOSE_MS);
    await closeLog(log);
    // reject: false, so the execa result only settles; its content adds nothing to `exit`.
    await subprocess.catch(() => undefined);
    return exit;
  }

  /** Copies both output streams to the log, the tail and onOutput in arrival order; returns the streams. */
  #followOutput(stdout: Readable, stderr: Readable, log: WriteStream, options: AgentProcessOptions): Readable[] {
    const streams = [stdout, stderr];
    let logBroken = false;
    let waitingForDrain = false;
    log.on("error", (error) => {
      logBroken = true;
      if (waitingForDrain) for (const stream of streams) stream.resume();
      options.onLogError?.(error);
    });

    const follow = (stream: Readable, name: "stdout" | "stderr") => {
      const decoder = new StringDecoder("utf8");
      stream.on("data", (chunk: Buffer | string) => {
        const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
        this.#lastOutputAt = Date.now();
        this.#tail.push(bytes);
        // Backpressure: a slow disk pauses the agent's pipes rather than filling memory.
        if (!logBroken && !log.write(bytes) && !waitingForDrain) {
          waitingForDrain = true;
          for (const s of streams) s.pause();
          log.once("drain", () => {
            waitingForDrain = false;
            for (const s of streams) s.resume();
          });
        }
        if (options.onOutput) {
          const text = decoder.write(bytes);
          if (text.length > 0) options.onOutput(text, name);
        }
      });
      stream.once("end", () => {
        const rest = decoder.end();
        if (rest.length > 0) options.onOutput?.(rest, name);
      });
    };
    follow(stdout, "stdout");
    follow(stderr, "stderr");
    return streams;
  }
}

/**
 * Writes `input` to a file in `dir`, opens it and unlinks it at once: the open descriptor
 * is all that is left, and it goes when the agent and we have closed it.
 */
function openInputFile(dir: string, input: string): number {
  const file = join(dir, `.stdin-${process.pid}-${randomBytes(6).toString("hex")}`);
  try {
    writeFileSync(file, input, { mode: 0o600, flag: "wx" });
    return openSync(file, "r");
  } finally {
    rmSync(file, { force: true });
  }
}

function spawnAgent(program: string, args: string[], stdin: number, options: AgentProcessOptions) {
  return execa(program, args, {
    cwd: options.cwd,
    env: options.env,
    extendEnv: false,
    // A file descriptor handed to the child as is (execa's lib/stdio/native.js); the
    // typings only list 3-9 for a lone number, hence the cast.
    stdin: stdin as 3,
    stdout: "pipe",
    stderr: "pipe",
    // Output is consumed as it comes; nothing is accumulated by execa.
    buffer: false,
    // Own process group: signals reach the agent and every tool it started.
    detached: true,
    // This module is the owner and stops the group itself; no execa kill logic in between.
    cleanup: false,
    forceKillAfterDelay: false,
    reject: false,
  });
}

function spawnFailed(message: string): AgentExit {
  return { kind: "spawn_failed", message };
}

/**
 * Node reports a missing working directory as `spawn bash ENOENT`, the same as a missing
 * program, so the working directory is checked first to say which one it was.
 */
function describeSpawnFailure(program: string, cwd: string, error: unknown): string {
  const prefix = `cannot start ${JSON.stringify(program)}`;
  try {
    if (!statSync(cwd).isDirectory()) return `${prefix}: working directory ${cwd} is not a directory`;
  } catch (statError) {
    return `${prefix}: working directory ${cwd} is not usable: ${errorMessage(statError)}`;
  }
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "ENOENT":
      return program.includes("/")
        ? `${prefix}: no such file, or its interpreter (#! line) is missing (ENOENT)`
        : `${prefix}: program not found on the PATH given to the agent (ENOENT)`;
    case "EACCES":
      return `${prefix}: permission denied: not executable, or the working directory ${cwd} is not accessible (EACCES)`;
    default:
      return `${prefix}: ${errorMessage(error)}`;
  }
}

/**
 * Waits until every stream has closed, at most `ms`; then closes the ones still open
 * (held by a process that escaped the group) so nothing waits on them forever.
 */
async function waitForClose(streams: readonly Readable[], ms: number): Promise<void> {
  const open = streams.filter((stream) => !stream.closed);
  if (open.length === 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all(open.map((stream) => new Promise<void>((resolve) => stream.once("close", () => resolve())))),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
  for (const stream of open) if (!stream.closed) stream.destroy();
}

function closeLog(log: WriteStream): Promise<void> {
  if (log.closed) return Promise.resolve();
  return new Promise((resolve) => {
    log.once("close", () => resolve());
    log.end();
  });
}

/** The last `limit` bytes of output, kept in chunks and compacted when twice the limit is held. */
export class OutputTail {
  #chunks: Buffer[] = [];
  #size = 0;

  constructor(readonly limit: number) {
    if (!Number.isSafeInteger(limit) || limit < 0)
      throw new RangeError(`tail size must be a whole number of bytes: ${limit}`);
  }

  push(chunk: Buffer): void {
    if (this.limit === 0 || chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    if (this.#size > 2 * this.limit) {
      // Copy, so the kept slice does not pin a large buffer.
      const kept = Buffer.from(this.#bytes());
      this.#chunks = [kept];
      this.#size = kept.length;
    }
  }

  /** The tail as text: a character cut at either end is left out rather than garbled. */
  text(): string {
    return utf8Whole(this.#bytes()).toString("utf8");
  }

  #bytes(): Buffer {
    const all = this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks, this.#size);
    return all.length > this.limit ? all.subarray(all.length - this.limit) : all;
  }
}

/** `bytes` without a partial UTF-8 sequence at its start (continuation bytes) or its end (a lead byte missing its continuation). */
function utf8Whole(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length && start < 3 && isContinuation(bytes[start] as number)) start++;
  let end = bytes.length;
  // Find the last lead byte among the final four bytes and check its sequence is complete.
  for (let i = end - 1; i >= Math.max(start, end - 4); i--) {
    const byte = bytes[i] as number;
    if (isContinuation(byte)) continue;
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    if (i + length > end) end = i;
    break;
  }
  return bytes.subarray(start, end);
}

function isContinuation(byte: number): boolean {
  return (byte & 0xc0) === 0x80;
}
