/**
 * Run logs in the database, so every instance serves every run's log and its live follow.
 * The session's output is buffered per run and written as append-only chunks (whole lines,
 * secrets scrubbed) every `flushDelayMs` or 64 KiB; a run over `maxBytesPerRun` loses its
 * oldest chunks (the tail is what people read). Followers wake on a write: at once on this
 * instance, through LISTEN/NOTIFY from other instances on PostgreSQL, and by polling on
 * PGlite (one process) or when a notification is missed.
 */
import { EventEmitter } from "node:events";
import { and, asc, eq, gt, lte, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import { type RunLogChunk, runLogChunks } from "../../db/schema/index.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import type { SecretRegistry } from "../secrets.js";

/** The NOTIFY channel; the payload is the run id. */
export const RUN_LOG_CHANNEL = "formula_runner_run_log";

/** Where a session's output goes besides the disk file (session-runner writes through this). */
export interface RunLogSink {
  append(runId: number, text: string): void;
  /** Writes everything buffered for the run, a last partial line included. */
  flush(runId: number): Promise<void>;
}

export interface RunLogOptions {
  database: Database;
  secrets: SecretRegistry;
  log: Logger;
  /** Per-run cap; past it the oldest chunks go. Default 8 MiB. */
  maxBytesPerRun?: number;
  /** How long output may wait in memory before it is written. Default 250 ms. */
  flushDelayMs?: number;
}

const FLUSH_AT_BYTES = 64 * 1024;

interface Buffered {
  text: string;
  timer: NodeJS.Timeout | undefined;
  /** Writes of this run, one after another. */
  chain: Promise<void>;
}

export class RunLog implements RunLogSink {
  readonly #database: Database;
  readonly #secrets: SecretRegistry;
  readonly #log: Logger;
  readonly #maxBytes: number;
  readonly #flushDelayMs: number;
  readonly #buffers = new Map<number, Buffered>();
  /** The offset the next chunk of a run starts at, once known. */
  readonly #next = new Map<number, number>();
  readonly #events = new EventEmitter();
  #unlisten: (() => Promise<void>) | undefined;

  constructor(options: RunLogOptions) {
    this.#database = options.database;
    this.#secrets = options.secrets;
    this.#log = options.log.child({ component: "run-log" });
    this.#maxBytes = options.maxBytesPerRun ?? 8 * 1024 * 1024;
    this.#flushDelayMs = options.flushDelayMs ?? 250;
    this.#events.setMaxListeners(0);
  }

  /** Listens for other instances' writes (PostgreSQL). */
  async start(): Promise<void> {
    if (this.#unlisten || !this.#database.listen) return;
    this.#unlisten = await this.#database.listen(RUN_LOG_CHANNEL, (payload) => this.#events.emit(payload));
  }

  /** Writes what is buffered and stops listening. Idempotent. */
  async stop(): Promise<void> {
    await Promise.all([...this.#buffers.keys()].map((runId) => this.flush(runId)));
    const unlisten = this.#unlisten;
    this.#unlisten = undefined;
    await unlisten?.();
  }

  append(runId: number, text: string): void {
    if (text.length === 0) return;
    let buffered = this.#buffers.get(runId);
    if (!buffered) {
      buffered = { text: "", timer: undefined, chain: Promise.resolve() };
      this.#buffers.set(runId, buffered);
    }
    buffered.text += text;
    if (buffered.text.length >= FLUSH_AT_BYTES) {
      // #write never throws: a failed write is logged there.
      void this.#schedule(runId, buffered, false);
    } else if (!buffered.timer) {
      buffered.timer = setTimeout(() => this.#schedule(runId, buffered, false), this.#flushDelayMs);
    }
  }

  flush(runId: number): Promise<void> {
    const buffered = this.#buffers.get(runId);
    if (!buffered) return Promise.resolve();
    const done = this.#schedule(runId, buffered, true);
    return done.then(() => {
      // A session's end: forget the run (a later session asks the database where its log ends).
      if (this.#buffers.get(runId) === buffered && buffered.text === "" && !buffered.timer) {
        this.#buffers.delete(runId);
        this.#next.delete(runId);
      }
    });
  }

  #schedule(runId: number, buffered: Buffered, final: boolean): Promise<void> {
    clearTimeout(buffered.timer);
    buffered.timer = undefined;
    buffered.chain = buffered.chain.then(() => this.#write(runId, buffered, final));
    return buffered.chain;
  }

  /** Writes the buffered whole lines (all of it when `final`) as one chunk. Never throws: the disk file still has it. */
  async #write(runId: number, buffered: Buffered, final: boolean): Promise<void> {
    let text = buffered.text;
    if (!final) {
      // Whole lines only, so a secret is never split across two scrubbed chunks; a very
      // long line goes anyway.
      const cut = text.lastIndexOf("\n");
      if (cut === -1 && text.length < FLUSH_AT_BYTES) {
        if (text.length > 0 && !buffered.timer) {
          buffered.timer = setTimeout(() => this.#schedule(runId, buffered, false), this.#flushDelayMs);
        }
        return;
      }
      if (cut !== -1) text = text.slice(0, cut + 1);
    }
    if (text.length === 0) return;
    buffered.text = buffered.text.slice(text.length);
    const data = this.#secrets.scrub(text);
    const bytes = Buffer.byteLength(data);
    try {
      const offset = this.#next.get(runId) ?? (await this.#end(runId));
      await this.#database.db.insert(runLogChunks).values({ runId, offset, bytes, data });
      const end = offset + bytes;
      this.#next.set(runId, end);
      if (end > this.#maxBytes) {
        await this.#database.db
          .delete(runLogChunks)
          .where(
            and(
              eq(runLogChunks.runId, runId),
              lte(sql`${runLogChunks.offset} + ${runLogChunks.bytes}`, end - this.#maxBytes),
            ),
          );
      }
      if (this.#database.kind === "postgres") {
        await this.#database.db.execute(sql`select pg_notify(${RUN_LOG_CHANNEL}, ${String(runId)})`);
      }
      this.#events.emit(String(runId));
    } catch (error) {
      // Another instance took the run over and wrote meanwhile: learn the end again next time.
      this.#next.delete(runId);
      this.#log.error(
        { err: error, runId },
        `could not store run ${runId}'s log in the database: ${errorMessage(error)}`,
      );
    }
  }

  /** The byte offset just past the run's last chunk. */
  async #end(runId: number): Promise<number> {
    const [row] = await this.#database.rows<{ end: string | number | null }>(
      sql`select max(${runLogChunks.offset} + ${runLogChunks.bytes}) as "end" from ${runLogChunks} where ${runLogChunks.runId} = ${runId}`,
    );
    return Number(row?.end ?? 0);
  }

  /** The run's log as stored: its text and how many bytes at the start were dropped by the cap. */
  async read(runId: number): Promise<{ text: string; droppedBytes: number }> {
    const chunks = await this.chunksAfter(runId, 0, Number.MAX_SAFE_INTEGER);
    return { text: chunks.map((c) => c.data).join(""), droppedBytes: chunks[0]?.offset ?? 0 };
  }

  /** Chunks that end after `offset`, oldest first. */
  async chunksAfter(runId: number, offset: number, limit: number): Promise<RunLogChunk[]> {
    return this.#database.db
      .select()
      .from(runLogChunks)
      .where(and(eq(runLogChunks.runId, runId), gt(sql`${runLogChunks.offset} + ${runLogChunks.bytes}`, offset)))
      .orderBy(asc(runLogChunks.offset))
      .limit(limit);
  }

  /** Resolves when the run's log may have grown (a write here or a notification), or after `timeoutMs`. */
  waitForChange(runId: number, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const key = String(runId);
      const done = () => {
        clearTimeout(timer);
        this.#events.off(key, done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.#events.on(key, done);
      signal?.addEventListener("abort", done);
    });
  }
}
