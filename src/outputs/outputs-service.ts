/**
 * Safe outputs: the agent holds no forge token; it asks for forge writes by appending JSON
 * lines to its outputs file, and the server decides each line once. A line is refused
 * (malformed, not allowed by the formula's `[outputs]`, over `max`) with a reason, or
 * scrubbed of secrets and queued in the outbox. The outbox row and the output's record are
 * written in one transaction, and a line's number (`seq`) is unique per run, so a restart
 * or a second collector never sends a line twice.
 */
import { constants } from "node:fs";
import { mkdir, open } from "node:fs/promises";
import path from "node:path";
import { and, asc, desc, eq, inArray, max, sql } from "drizzle-orm";
import type { Database } from "../../db/client.js";
import {
  type NewOutboxEntry,
  type OutputStatus,
  outbox,
  outputs,
  type Run,
  runs,
  worktrees,
} from "../../db/schema/index.js";
import type { Config, ProjectConfig } from "../config.js";
import { AppError } from "../errors.js";
import type { OutboxPayload } from "../forge/outbox.js";
import type { Formula } from "../formulas/schema.js";
import type { FormulaStore } from "../formulas/store.js";
import type { Logger } from "../logger.js";
import { type RunPaths, runPaths } from "../runs/run-paths.js";
import { type SecretRegistry, scrubCredentialPatterns } from "../secrets.js";
import { pushRunHead } from "./branch-push.js";
import { refusalOf } from "./output-policy.js";
import { type OutputRequest, parseOutputLine } from "./output-schema.js";

export { outputBranch } from "./branch-push.js";

/** The part of the outputs file read at all; lines past it are never decided. */
export const MAX_OUTPUTS_FILE_BYTES = 1024 * 1024;
/** Lines decided per run at most (refused ones included), so a flood of bad lines stays small in the database. */
export const MAX_OUTPUT_LINES = 500;
/** Outputs one API request may carry. */
export const MAX_OUTPUTS_PER_REQUEST = 20;
/** Statuses of runs that may still ask for outputs through the API. */
const ACTIVE_STATUSES = ["running", "escalated"] as const;

/** The hidden marker in the body of an issue an output opened, so a retry finds it instead of opening another. */
export const outputMarker = (runId: number, seq: number) => `<!-- formula-runner:output:${runId}:${seq} -->`;

/** What was decided about one line. */
export interface OutputDecision {
  seq: number;
  type: string;
  status: OutputStatus;
  reason: string | null;
}

export interface CollectRequest {
  run: Pick<Run, "id" | "issue" | "project">;
  formula: Formula;
  project: ProjectConfig;
  paths: RunPaths;
  /** The run's worktree, whose HEAD a `pull_request` proposes; undefined when it has none. */
  worktreePath: string | undefined;
}

export interface OutputsServiceDeps {
  database: Database;
  secrets: SecretRegistry;
  log: Logger;
  /** The server's environment: the push runs with the server's git credentials. */
  env: Readonly<Record<string, string | undefined>>;
  /** Wakes the outbox after rows were queued. */
  onOutbox: () => void;
  /** For {@link OutputsService.collectForRun}: projects, data dir. */
  config: Pick<Config, "projects" | "settings">;
  formulas: Pick<FormulaStore, "get">;
}

/** A line's fate before it is recorded. */
type Decided =
  | { status: "refused" | "failed"; type: string; reason: string; payload: unknown }
  | { status: "queued"; type: string; payload: unknown; outbox: NewOutboxEntry };

export class OutputsService {
  readonly #deps: OutputsServiceDeps;
  /** One collect at a time per run in this process (the database keeps instances apart). */
  readonly #chains = new Map<number, Promise<unknown>>();

  constructor(deps: OutputsServiceDeps) {
    this.#deps = deps;
  }

  /**
   * Decides every line of the run's outputs file not decided yet, in order; a last line
   * without its newline is left for a later call. Returns what it decided now.
   * The executor calls it after each session ends, before the worktree is settled.
   */
  collect(request: CollectRequest): Promise<OutputDecision[]> {
    const runId = request.run.id;
    const previous = this.#chains.get(runId) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(() => this.#collect(request));
    this.#chains.set(runId, next);
    void next
      .catch(() => {})
      .finally(() => {
        if (this.#chains.get(runId) === next) this.#chains.delete(runId);
      });
    return next;
  }

  /**
   * For the API: appends `items` to the run's outputs file (one JSON line each) and
   * collects. Only while the run is active.
   */
  async append(runId: number, items: readonly unknown[]): Promise<OutputDecision[]> {
    const request = await this.requestFor(runId);
    const status = (await this.#run(runId)).status;
    if (!(ACTIVE_STATUSES as readonly string[]).includes(status)) {
      throw new AppError({ code: "conflict", message: `run ${runId} is ${status}; outputs are taken while it runs` });
    }
    const file = request.paths.outputsFile;
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    // The agent owns this directory: never follow a link it put there, never block on a FIFO.
    const handle = await open(
      file,
      constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK,
      0o600,
    );
    try {
      const info = await handle.stat();
      if (!info.isFile()) {
        throw new AppError({ code: "conflict", message: `run ${runId}'s outputs file is not a regular file` });
      }
      // A last line the agent has not finished is closed first, so ours stays a line of its own.
      const last = Buffer.alloc(1);
      if (info.size > 0) await handle.read(last, 0, 1, info.size - 1);
      const lead = info.size > 0 && last[0] !== 0x0a ? "\n" : "";
      await handle.write(lead + items.map((item) => `${JSON.stringify(item)}\n`).join(""));
    } finally {
      await handle.close();
    }
    return this.collect(request);
  }

  /** Collects a run's outputs by id: its formula, project, paths and active worktree looked up. */
  async collectForRun(runId: number): Promise<OutputDecision[]> {
    return this.collect(await this.requestFor(runId));
  }

  /** Everything {@link collect} needs for a run, from the database and the configuration. */
  async requestFor(runId: number): Promise<CollectRequest> {
    const run = await this.#run(runId);
    const formula = this.#deps.formulas.get(run.formula);
    if (!formula) throw new AppError({ code: "conflict", message: `formula "${run.formula}" is not loaded` });
    const project = this.#deps.config.projects.find((p) => p.name === run.project);
    if (!project) throw new AppError({ code: "conflict", message: `project "${run.project}" is not configured` });
    const [worktree] = await this.#deps.database.db
      .select({ path: worktrees.path })
      .from(worktrees)
      .where(and(eq(worktrees.runId, runId), inArray(worktrees.state, ["active", "preserved"])))
      .orderBy(desc(worktrees.id))
      .limit(1);
    return {
      run,
      formula,
      project,
      paths: runPaths(this.#deps.config.settings.dataDir, runId),
      worktreePath: worktree?.path,
    };
  }

  /** The run's outputs as the API shows them. */
  async list(runId: number): Promise<Array<OutputDecision & { created_at: string }>> {
    const rows = await this.#deps.database.db
      .select()
      .from(outputs)
      .where(eq(outputs.runId, runId))
      .orderBy(asc(outputs.seq));
    return rows.map((r) => ({
      seq: r.seq,
      type: r.type,
      status: r.status,
      reason: r.reason,
      created_at: r.createdAt.toISOString(),
    }));
  }

  async #run(runId: number): Promise<Run> {
    const [run] = await this.#deps.database.db.select().from(runs).where(eq(runs.id, runId));
    if (!run) throw new AppError({ code: "not_found", message: `no run ${runId}` });
    return run;
  }

  async #collect(request: CollectRequest): Promise<OutputDecision[]> {
    const { database, log } = this.#deps;
    const runId = request.run.id;
    const lines = await readCompleteLines(request.paths.outputsFile);
    if (lines.truncated) {
      log.warn({ runId }, `outputs file of run ${runId} is over ${MAX_OUTPUTS_FILE_BYTES} bytes; the rest is ignored`);
    }
    const [last] = await database.db
      .select({ seq: max(outputs.seq) })
      .from(outputs)
      .where(eq(outputs.runId, runId));
    const decidedUpTo = last?.seq ?? 0;
    const decisions: OutputDecision[] = [];
    for (let index = decidedUpTo; index < lines.lines.length; index++) {
      const seq = index + 1;
      const line = (lines.lines[index] as string).trim();
      if (line === "") continue;
      if (seq > MAX_OUTPUT_LINES) {
        log.warn({ runId }, `run ${runId} wrote more than ${MAX_OUTPUT_LINES} output lines; the rest is ignored`);
        break;
      }
      const decision = await this.#decideAndRecord(request, seq, line);
      if (decision) decisions.push(decision);
    }
    if (decisions.some((d) => d.status === "queued")) this.#deps.onOutbox();
    for (const d of decisions) {
      log.info(
        { runId, seq: d.seq, type: d.type, status: d.status, reason: d.reason },
        `output ${d.seq} of run ${runId} (${d.type}): ${d.status}${d.reason ? `: ${d.reason}` : ""}`,
      );
    }
    return decisions;
  }

  /** Decides one line and records it; undefined when another collector recorded it first. */
  async #decideAndRecord(request: CollectRequest, seq: number, line: string): Promise<OutputDecision | undefined> {
    const { run, formula } = request;
    const parsed = parseOutputLine(line);
    let decided: Decided;
    if (!parsed.ok) {
      decided = { status: "refused", type: parsed.type, reason: parsed.reason, payload: null };
    } else {
      const output = this.#scrubbed(parsed.output);
      // Checked before the push (cheap, and a refused pull request pushes nothing) and
      // again under the run's lock below (another collector may have queued meanwhile).
      const refusal = refusalOf(output, {
        outputs: formula.outputs,
        issue: run.issue,
        accepted: await this.#accepted(run.id),
      });
      decided = refusal
        ? { status: "refused", type: output.type, reason: refusal, payload: output }
        : await this.#prepare(request, seq, output);
    }

    const scrub = (text: string) => this.#scrub(text);
    try {
      return await this.#deps.database.db.transaction(async (tx) => {
        // Serialises the decisions of one run across instances, so `max` holds.
        await tx.execute(sql`select id from runs where id = ${run.id} for update`);
        if (decided.status === "queued" && parsed.ok) {
          const [{ count } = { count: 0 }] = await tx
            .select({ count: sql<number>`count(*)::int` })
            .from(outputs)
            .where(and(eq(outputs.runId, run.id), inArray(outputs.status, ["queued", "sent", "failed"])));
          const refusal = refusalOf(decided.payload as OutputRequest, {
            outputs: formula.outputs,
            issue: run.issue,
            accepted: count,
          });
          if (refusal) decided = { status: "refused", type: decided.type, reason: refusal, payload: decided.payload };
        }
        let outboxId: number | null = null;
        if (decided.status === "queued") {
          const [row] = await tx.insert(outbox).values(decided.outbox).returning({ id: outbox.id });
          outboxId = row?.id ?? null;
        }
        const reason = decided.status === "queued" ? null : scrub(decided.reason);
        const type = scrub(decided.type);
        await tx.insert(outputs).values({
          runId: run.id,
          seq,
          type,
          status: decided.status,
          reason,
          payload: decided.payload ?? null,
          outboxId,
        });
        return { seq, type, status: decided.status, reason };
      });
    } catch (error) {
      if (isUniqueViolation(error)) return undefined;
      throw error;
    }
  }

  /** Outputs of the run that were not refused (they count toward `max`). */
  async #accepted(runId: number): Promise<number> {
    const [row] = await this.#deps.database.db
      .select({ count: sql<number>`count(*)::int` })
      .from(outputs)
      .where(and(eq(outputs.runId, runId), inArray(outputs.status, ["queued", "sent", "failed"])));
    return row?.count ?? 0;
  }

  /** An allowed output made ready for the outbox; a pull request's commits are pushed first. */
  async #prepare(request: CollectRequest, seq: number, output: OutputRequest): Promise<Decided> {
    const { run, project } = request;
    const row = (payload: OutboxPayload): NewOutboxEntry => ({
      project: project.name,
      runId: run.id,
      kind: payload.kind,
      // Pull requests and issues belong to no issue of the run's; 0 keeps them in one queue.
      issue: run.issue ?? 0,
      payload,
    });
    switch (output.type) {
      case "comment":
        return {
          status: "queued",
          type: output.type,
          payload: output,
          outbox: row({ kind: "comment", body: output.body }),
        };
      case "label":
        return {
          status: "queued",
          type: output.type,
          payload: output,
          outbox: row({ kind: "label", labels: output.add, remove: output.remove }),
        };
      case "issue":
        return {
          status: "queued",
          type: output.type,
          payload: output,
          outbox: row({ kind: "issue", title: output.title, body: output.body, marker: outputMarker(run.id, seq) }),
        };
      case "pull_request": {
        const settings = request.formula.outputs.pullRequest;
        const base = (settings !== false && settings.base) || project.primaryBranch;
        const pushed = await pushRunHead({
          runId: run.id,
          project,
          paths: request.paths,
          worktreePath: request.worktreePath,
          base,
          env: this.#deps.env,
        });
        if (!pushed.ok) return { ...pushed.refusal, type: output.type, payload: output };
        return {
          status: "queued",
          type: output.type,
          payload: { ...output, head: pushed.branch, sha: pushed.sha, base },
          outbox: row({
            kind: "pull_request",
            head: pushed.branch,
            base,
            title: output.title,
            body: output.body,
            draft: settings !== false && settings.draft,
          }),
        };
      }
    }
  }

  #scrub(text: string): string {
    return scrubCredentialPatterns(this.#deps.secrets.scrub(text));
  }

  /** The request with every text the forge would show, or the record would keep, scrubbed. */
  #scrubbed(output: OutputRequest): OutputRequest {
    switch (output.type) {
      case "comment":
        return { ...output, body: this.#scrub(output.body) };
      case "label":
        // Names outside the formula's list are refused, but still kept on the record: scrubbed.
        return {
          ...output,
          add: output.add.map((n) => this.#scrub(n)),
          remove: output.remove.map((n) => this.#scrub(n)),
        };
      case "pull_request":
      case "issue":
        return { ...output, title: this.#scrub(output.title), body: this.#scrub(output.body) };
    }
  }
}

/** The file's complete lines within the first {@link MAX_OUTPUTS_FILE_BYTES}; a missing file has none. */
async function readCompleteLines(file: string): Promise<{ lines: string[]; truncated: boolean }> {
  let buffer: Buffer;
  let size: number;
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    // The agent owns this file: a link is not followed, a FIFO does not block.
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { lines: [], truncated: false };
    if (code === "ELOOP") throw new Error(`the outputs file ${file} is a symbolic link; it is not read`);
    throw error;
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new Error(`the outputs file ${file} is not a regular file; it is not read`);
    size = info.size;
    buffer = Buffer.alloc(Math.min(size, MAX_OUTPUTS_FILE_BYTES));
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    buffer = buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
  const end = buffer.lastIndexOf(0x0a);
  if (end === -1) return { lines: [], truncated: size > MAX_OUTPUTS_FILE_BYTES };
  const lines = buffer.subarray(0, end).toString("utf8").split("\n");
  return { lines, truncated: size > MAX_OUTPUTS_FILE_BYTES };
}

/** A unique-constraint violation (another collector recorded the line first), from either driver. */
function isUniqueViolation(error: unknown): boolean {
  for (let e: unknown = error; e; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: unknown }).code === "23505") return true;
  }
  return false;
}
