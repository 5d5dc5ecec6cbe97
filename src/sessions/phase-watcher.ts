/**
 * Follows one phase file and reports each new phase as soon as it is written.
 *
 * fs.watch is set on the file's DIRECTORY, not the file: an agent may create the file
 * after the watch starts, or replace it with a rename (`printf > f.tmp && mv f.tmp f`),
 * and a watch on the file would follow the old inode. A stat poll (inode, size, mtime)
 * runs alongside as the fallback for file systems where watch events do not arrive
 * (network mounts, some container volumes), and re-establishes the watch if it was lost.
 */
import { type FSWatcher, watch } from "node:fs";
import { open, stat } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { type PhaseSignal, parsePhaseFile } from "./phase-file.js";

/** Reads coalesce within this window, so a write in two chunks is read once; never longer. */
const DEBOUNCE_MS = 5;
const DEFAULT_POLL_MS = 1_000;
/** A phase file is a line or two, an escalation a few paragraphs; anything beyond this is not read. */
const MAX_READ_BYTES = 64 * 1024;

export type TimedPhaseSignal = PhaseSignal & { at: Date };

export interface PhaseWatcherOptions {
  file: string;
  /** Interval of the stat fallback; default 1000 ms. */
  pollMs?: number;
  /** Use fs.watch (default true). False leaves the stat poll alone, for tests and odd file systems. */
  useFsWatch?: boolean;
  /** A new phase: (phase, detail, body) differ from the last one emitted or primed. */
  onPhase: (signal: TimedPhaseSignal) => void;
  /**
   * A read or watch failed (other than the file not existing yet), or onPhase threw.
   * The watcher keeps going; the same failure is reported once until a read succeeds.
   */
  onError?: (error: Error) => void;
}

/**
 * Emits when the parsed (phase, detail, body) differs from the last emitted one: the same
 * phase written again with the same detail is not a new phase. An empty, missing or
 * half-written file (first line not a phase) emits nothing and leaves the baseline as it
 * was; to start afresh (a new session), clear the file and call {@link prime}.
 */
export class PhaseWatcher {
  readonly #file: string;
  readonly #dir: string;
  readonly #name: string;
  readonly #pollMs: number;
  readonly #useFsWatch: boolean;
  readonly #onPhase: (signal: TimedPhaseSignal) => void;
  readonly #onError: ((error: Error) => void) | undefined;

  #running = false;
  /** stop() has begun: no new watch, poll or debounced read; the final read still emits. */
  #closing = false;
  #stopping: Promise<void> | undefined;
  #watcher: FSWatcher | undefined;
  #pollTimer: NodeJS.Timeout | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  /** The read in progress; reads never overlap. */
  #reading: Promise<void> | undefined;
  /** A change was seen while a read was in progress: read again when it ends. */
  #readAgain = false;
  #polling: Promise<void> | undefined;
  /** inode/size/mtime of the file as last seen by a read or the poll, `missing` if absent. */
  #lastStat: string | undefined;
  #lastKey: string | undefined;
  #last: TimedPhaseSignal | undefined;
  #lastErrorMessage: string | undefined;

  constructor(options: PhaseWatcherOptions) {
    this.#file = options.file;
    this.#dir = dirname(options.file);
    this.#name = basename(options.file);
    this.#pollMs = options.pollMs ?? DEFAULT_POLL_MS;
    if (!(this.#pollMs > 0)) throw new RangeError(`pollMs must be positive: ${this.#pollMs}`);
    this.#useFsWatch = options.useFsWatch ?? true;
    this.#onPhase = options.onPhase;
    this.#onError = options.onError;
  }

  /** The phase last emitted or taken as baseline by {@link prime}. */
  get last(): TimedPhaseSignal | undefined {
    return this.#last;
  }

  /**
   * Starts watching and reads the file once: content already there that differs from the
   * baseline is emitted (an agent may write before the watch is up). Call prime() first
   * to take existing content as the baseline instead. Idempotent.
   */
  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#closing = false;
    this.#stopping = undefined;
    this.#openWatch();
    this.#pollTimer = setInterval(() => this.#poll(), this.#pollMs);
    await this.#read();
  }

  /**
   * Takes the file's current content as the baseline without emitting it: a missing,
   * empty or phase-less file sets no baseline, so the next phase written is emitted
   * whatever it is. Waits for a read in progress first, so that read cannot emit after.
   */
  async prime(): Promise<void> {
    while (this.#reading) await this.#reading;
    const content = await this.#readFile();
    if (content === "error") return;
    const signal = content === undefined ? undefined : parsePhaseFile(content);
    this.#lastKey = signal ? signalKey(signal) : undefined;
    this.#last = signal ? { ...signal, at: new Date() } : undefined;
  }

  /**
   * Stops watching. First it waits for a read in progress and reads the file one last
   * time, so a phase written just before the agent exited (its event still in the
   * debounce window, or not yet delivered) is emitted rather than lost. Leaves no watcher
   * or timer. Idempotent; start() may be called again afterwards.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#shutdown();
    return this.#stopping;
  }

  async #shutdown(): Promise<void> {
    if (!this.#running) return;
    this.#closing = true;
    this.#watcher?.close();
    this.#watcher = undefined;
    clearInterval(this.#pollTimer);
    this.#pollTimer = undefined;
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = undefined;
    while (this.#reading || this.#polling) await Promise.all([this.#reading, this.#polling]);
    await this.#read();
    this.#running = false;
  }

  #openWatch(): void {
    if (!this.#useFsWatch || this.#watcher || !this.#running || this.#closing) return;
    let watcher: FSWatcher;
    try {
      watcher = watch(this.#dir, { persistent: true }, (_event, filename) => {
        // filename can be missing on some platforms: then any change in the directory counts.
        if (filename === null || filename === this.#name) this.#schedule();
      });
    } catch (error) {
      // The directory does not exist yet: the poll runs on and retries the watch.
      if (errnoCode(error) !== "ENOENT") this.#report(error);
      return;
    }
    watcher.on("error", (error) => {
      // The directory went away or the watch broke: fall back to the poll, which retries.
      watcher.close();
      if (this.#watcher === watcher) this.#watcher = undefined;
      this.#report(error);
    });
    this.#watcher = watcher;
  }

  /** Reads soon, coalescing events that arrive within DEBOUNCE_MS of the first. */
  #schedule(): void {
    if (!this.#running || this.#closing || this.#debounceTimer) return;
    this.#debounceTimer = setTimeout(() => {
      this.#debounceTimer = undefined;
      void this.#read();
    }, DEBOUNCE_MS);
  }

  #poll(): void {
    if (!this.#running || this.#closing || this.#polling) return;
    this.#openWatch();
    this.#polling = (async () => {
      let seen: string;
      try {
        seen = statKey(await stat(this.#file, { bigint: true }));
      } catch (error) {
        if (errnoCode(error) !== "ENOENT") {
          this.#report(error);
          return;
        }
        seen = "missing";
      }
      if (seen !== this.#lastStat && !this.#closing) {
        this.#lastStat = seen;
        void this.#read();
      }
    })().finally(() => {
      this.#polling = undefined;
    });
  }

  /** Reads the file (again if a change arrives meanwhile) and emits a new phase. */
  #read(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    if (this.#reading) {
      this.#readAgain = true;
      return this.#reading;
    }
    this.#reading = (async () => {
      do {
        this.#readAgain = false;
        await this.#readOnce();
      } while (this.#readAgain && this.#running);
    })().finally(() => {
      this.#reading = undefined;
    });
    return this.#reading;
  }

  async #readOnce(): Promise<void> {
    const content = await this.#readFile();
    if (content === undefined || content === "error" || !this.#running) return;
    const signal = parsePhaseFile(content);
    if (!signal) return;
    const key = signalKey(signal);
    if (key === this.#lastKey) return;
    this.#lastKey = key;
    const timed: TimedPhaseSignal = { ...signal, at: new Date() };
    this.#last = timed;
    try {
      this.#onPhase(timed);
    } catch (error) {
      this.#report(error);
    }
  }

  /** The file's text (its first MAX_READ_BYTES), undefined if missing, "error" if reported. */
  async #readFile(): Promise<string | undefined | "error"> {
    let handle: Awaited<ReturnType<typeof open>> | undefined;
    try {
      handle = await open(this.#file, "r");
      const [stats, read] = await Promise.all([
        handle.stat({ bigint: true }),
        handle.read({ buffer: Buffer.allocUnsafe(MAX_READ_BYTES), position: 0 }),
      ]);
      this.#lastStat = statKey(stats);
      this.#lastErrorMessage = undefined;
      return read.buffer.subarray(0, read.bytesRead).toString("utf8");
    } catch (error) {
      if (errnoCode(error) === "ENOENT") {
        this.#lastStat = "missing";
        return undefined;
      }
      this.#report(error);
      return "error";
    } finally {
      await handle?.close().catch((error: unknown) => this.#report(error));
    }
  }

  #report(error: unknown): void {
    const wrapped = error instanceof Error ? error : new Error(String(error));
    if (wrapped.message === this.#lastErrorMessage) return;
    this.#lastErrorMessage = wrapped.message;
    this.#onError?.(new Error(`phase file ${this.#file}: ${wrapped.message}`, { cause: wrapped }));
  }
}

function signalKey(signal: PhaseSignal): string {
  return JSON.stringify([signal.phase, signal.detail ?? null, signal.body]);
}

function statKey(stats: { ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${stats.ino}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}`;
}

function errnoCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
