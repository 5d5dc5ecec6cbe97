/**
 * An incremental reader of Claude Code's `-p --output-format stream-json --verbose` stdout.
 *
 * The CLI prints one JSON object per line (measured on 2.1.197, see docs/agents.md):
 * `{"type":"system","subtype":"init",session_id,...}` first, then one `assistant` line per
 * content block (text or tool_use; the blocks of one API message share `message.id`), one
 * `user` line per tool result, `{"type":"system","subtype":"api_retry",...}` while it
 * retries a failed API call, and last `{"type":"result",...}`. When an API call finally
 * fails it prints a synthetic assistant message (`model: "<synthetic>"`) with a top-level
 * `error` code, then a result with `is_error: true`, `api_error_status` (the HTTP status,
 * null for a connection failure) and the same text in `result`.
 *
 * The reader keeps counters only, never the lines: memory stays bounded whatever the
 * session prints. A line longer than the cap is dropped (counted, and reported through
 * {@link StreamJsonReader.onNote}); text that is not a JSON object is counted and skipped.
 */

export interface AgentResult {
  /** `success`, `error_max_turns`, `error_during_execution`, ... (an API error still says `success`: check isError). */
  subtype: string;
  isError: boolean;
  /** Turns of THIS process (a resumed session counts from zero again). */
  numTurns: number | undefined;
  /** Cost of THIS process. */
  totalCostUsd: number | undefined;
  durationMs: number | undefined;
  /** The id to give to `--resume` (it stays the same across resumes). */
  sessionId: string | undefined;
  usage: unknown;
  /** The final text of the agent, or the API error text; absent for `error_during_execution`. */
  result: string | undefined;
  /** `api_error_status`: the HTTP status of a failed API call (null in the output for a connection failure). */
  apiErrorStatus: number | undefined;
  /** `errors`: what went wrong for the error subtypes (e.g. "No conversation found with session ID: ..."). */
  errors: string[];
  raw: Record<string, unknown>;
}

export type ApiErrorKind = "rate_limit" | "overloaded" | "authentication" | "server_error" | "billing" | "other";

export interface ApiError {
  kind: ApiErrorKind;
  /** Short reason, as the CLI worded it (at most 500 characters). */
  message: string;
  /** The HTTP status when the CLI reported one. */
  status?: number | undefined;
}

export interface ApiRetry {
  attempt: number | undefined;
  maxRetries: number | undefined;
  /** HTTP status of the failed call; undefined for a connection failure. */
  status: number | undefined;
  /** The CLI's code: "overloaded", "rate_limit", "authentication_failed", "server_error", ... */
  error: string | undefined;
  delayMs: number | undefined;
}

export interface StreamSummary {
  sessionId: string | undefined;
  /** result.num_turns when the result came, else the assistant messages seen (sub-agents' not counted). */
  turns: number;
  /** tool_use content blocks in assistant messages (sub-agents' included). */
  toolCalls: number;
  result: AgentResult | undefined;
  /** an API error the CLI reported (rate limit 429/529 overloaded, 401 authentication, 5xx server error, billing/credit), with a short reason */
  apiError: ApiError | undefined;
  /** `system/api_retry` lines seen: the CLI is retrying a failed API call (it may still succeed). */
  apiRetries: number;
  lastApiRetry: ApiRetry | undefined;
  /** Lines that were not a JSON object (blank lines are not counted). */
  invalidLines: number;
  /** Lines dropped for being longer than the cap. */
  droppedLines: number;
}

export interface StreamJsonReaderOptions {
  /** Longest line kept, in UTF-16 code units; longer ones are dropped. Default 1 MiB. */
  maxLineLength?: number;
}

export const DEFAULT_MAX_LINE_LENGTH = 1024 * 1024;
const MESSAGE_LIMIT = 500;

export class StreamJsonReader {
  /** Called once, when the first `{"type":"result"}` object arrives. Must not throw (it is called from push()). */
  onResult?: (result: AgentResult) => void;
  /**
   * Called when the agent's session id is first known (the `init` line, else the result),
   * and again if it changes, so it can be recorded before the session ends: a crashed
   * session can then still be resumed. Must not throw.
   */
  onSessionId?: (sessionId: string) => void;
  /** A line was dropped (too long) or skipped (not JSON): a short note for the log. */
  onNote?: (note: string) => void;

  readonly #maxLineLength: number;
  /** The line being assembled; empty while dropping an oversized one. */
  #partial = "";
  /** Inside an oversized line: everything up to the next newline is discarded. */
  #dropping = false;
  #initSessionId: string | undefined;
  #reportedSessionId: string | undefined;
  #assistantMessages = 0;
  #lastMessageId: string | undefined;
  #toolCalls = 0;
  #result: AgentResult | undefined;
  #resultNotified = false;
  /** The error code and text of the last synthetic API-error assistant message. */
  #assistantError: { code: string; text: string } | undefined;
  #apiError: ApiError | undefined;
  #apiRetries = 0;
  #lastApiRetry: ApiRetry | undefined;
  #invalidLines = 0;
  #droppedLines = 0;

  constructor(options: StreamJsonReaderOptions = {}) {
    const max = options.maxLineLength ?? DEFAULT_MAX_LINE_LENGTH;
    if (!Number.isSafeInteger(max) || max < 1)
      throw new RangeError(`maxLineLength must be a positive whole number: ${max}`);
    this.#maxLineLength = max;
  }

  /** Feed stdout chunks as they come (partial lines, several lines, non-JSON lines — all tolerated). */
  push(chunk: string): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf("\n", start);
      if (newline === -1) {
        this.#append(chunk, start, chunk.length);
        return;
      }
      if (this.#dropping) {
        this.#dropping = false;
      } else if (this.#partial.length + (newline - start) > this.#maxLineLength) {
        this.#drop(this.#partial.length + (newline - start));
      } else {
        const line =
          this.#partial.length === 0 ? chunk.slice(start, newline) : this.#partial + chunk.slice(start, newline);
        this.#partial = "";
        this.#line(line);
      }
      start = newline + 1;
    }
  }

  /** Call at exit: processes a last line without newline. */
  end(): void {
    if (this.#dropping) {
      this.#dropping = false;
      return;
    }
    const line = this.#partial;
    this.#partial = "";
    if (line.length > 0) this.#line(line);
  }

  get summary(): StreamSummary {
    return {
      sessionId: this.#result?.sessionId ?? this.#initSessionId,
      turns: this.#result?.numTurns ?? this.#assistantMessages,
      toolCalls: this.#toolCalls,
      result: this.#result,
      apiError: this.#apiError,
      apiRetries: this.#apiRetries,
      lastApiRetry: this.#lastApiRetry,
      invalidLines: this.#invalidLines,
      droppedLines: this.#droppedLines,
    };
  }

  #append(chunk: string, from: number, to: number): void {
    if (from >= to || this.#dropping) return;
    if (this.#partial.length + (to - from) > this.#maxLineLength) {
      this.#drop(this.#partial.length + (to - from));
      this.#dropping = true;
      return;
    }
    this.#partial += from === 0 && to === chunk.length ? chunk : chunk.slice(from, to);
  }

  #drop(length: number): void {
    const head = this.#partial.slice(0, 40);
    this.#partial = "";
    this.#droppedLines++;
    this.#note(
      `stream-json: dropped a line longer than ${this.#maxLineLength} characters (${length}+ so far${head ? `, starting ${JSON.stringify(head)}` : ""})`,
    );
  }

  #note(text: string): void {
    try {
      this.onNote?.(text);
    } catch {
      // A note is for a log; a failing logger must not stop the parsing.
    }
  }

  #line(text: string): void {
    const line = text.trim();
    if (line.length === 0) return;
    let value: unknown;
    if (line.startsWith("{")) {
      try {
        value = JSON.parse(line);
      } catch {
        value = undefined;
      }
    }
    if (!isRecord(value)) {
      this.#invalidLines++;
      this.#note(`stream-json: skipped a line that is not a JSON object: ${JSON.stringify(line.slice(0, 80))}`);
      return;
    }
    switch (value.type) {
      case "system":
        this.#system(value);
        break;
      case "assistant":
        this.#assistant(value);
        break;
      case "result":
        this.#onResult(value);
        break;
      default:
        // user (tool results), stream_event, ... carry nothing the summary needs.
        break;
    }
  }

  #system(value: Record<string, unknown>): void {
    if (value.subtype === "init") {
      const id = str(value.session_id);
      if (id !== undefined) {
        this.#initSessionId = id;
        this.#reportSessionId(id);
      }
    } else if (value.subtype === "api_retry") {
      this.#apiRetries++;
      this.#lastApiRetry = {
        attempt: num(value.attempt),
        maxRetries: num(value.max_retries),
        status: num(value.error_status),
        error: str(value.error),
        delayMs: num(value.retry_delay_ms),
      };
    }
  }

  #assistant(value: Record<string, unknown>): void {
    const message = value.message;
    if (!isRecord(message)) return;
    const content = Array.isArray(message.content) ? message.content : [];
    for (const block of content) if (isRecord(block) && block.type === "tool_use") this.#toolCalls++;

    // One line per content block: the blocks of one API message share its id.
    const topLevel = value.parent_tool_use_id === null || value.parent_tool_use_id === undefined;
    const id = str(message.id);
    if (topLevel && (id === undefined || id !== this.#lastMessageId)) this.#assistantMessages++;
    if (topLevel) this.#lastMessageId = id;

    // An API call that failed for good: a synthetic message with a top-level error code.
    const code = str(value.error);
    if (code !== undefined) {
      const text = content
        .map((block) => (isRecord(block) && block.type === "text" ? str(block.text) : undefined))
        .filter((t): t is string => t !== undefined)
        .join("\n");
      this.#assistantError = { code, text };
      this.#apiError = { kind: classifyApiError({ code, text }), message: shorten(text || code) };
    }
  }

  #onResult(value: Record<string, unknown>): void {
    const result: AgentResult = {
      subtype: str(value.subtype) ?? "unknown",
      isError: value.is_error === true,
      numTurns: num(value.num_turns),
      totalCostUsd: num(value.total_cost_usd),
      durationMs: num(value.duration_ms),
      sessionId: str(value.session_id),
      usage: value.usage,
      result: str(value.result),
      apiErrorStatus: num(value.api_error_status),
      errors: Array.isArray(value.errors) ? value.errors.filter((e): e is string => typeof e === "string") : [],
      raw: value,
    };
    this.#result = result;
    if (result.sessionId !== undefined) this.#reportSessionId(result.sessionId);
    if (result.isError && this.#isApiError(result)) {
      const text = result.result ?? this.#assistantError?.text ?? "";
      const kind = classifyApiError({ status: result.apiErrorStatus, code: this.#assistantError?.code, text });
      this.#apiError = {
        kind,
        message: shorten(text || `API error ${result.apiErrorStatus ?? ""}`.trim()),
        status: result.apiErrorStatus,
      };
    }
    if (!this.#resultNotified) {
      this.#resultNotified = true;
      this.onResult?.(result);
    }
  }

  #reportSessionId(id: string): void {
    if (id === this.#reportedSessionId) return;
    this.#reportedSessionId = id;
    try {
      this.onSessionId?.(id);
    } catch {
      // A callback for recording; a failure there must not stop the parsing.
    }
  }

  #isApiError(result: AgentResult): boolean {
    if (result.apiErrorStatus !== undefined || this.#assistantError !== undefined) return true;
    return result.result !== undefined && API_ERROR_TEXT.test(result.result);
  }
}

/** Texts of the CLI's API-error results when no status or error code came with them. */
const API_ERROR_TEXT = /^API Error\b|Invalid API key|Credit balance is too low|Failed to authenticate|OAuth token/i;

/**
 * Maps what the CLI reported about a failed API call to a kind: the HTTP status first,
 * then the CLI's error code (`rate_limit`, `authentication_failed`, `billing_error`,
 * `server_error`, `unknown`), then the text.
 */
export function classifyApiError(report: {
  status?: number | undefined;
  code?: string | undefined;
  text?: string | undefined;
}): ApiErrorKind {
  const { status, code } = report;
  const text = report.text ?? "";
  if (status === 429) return "rate_limit";
  if (status === 529) return "overloaded";
  if (status === 401 || status === 403) return "authentication";
  if (status === 402) return "billing";
  if (code === "billing_error" || /credit balance|billing/i.test(text)) return "billing";
  if (status !== undefined && status >= 500) return "server_error";
  if (code === "rate_limit" || /rate.?limit|\(429\)/i.test(text)) return "rate_limit";
  if (code === "overloaded" || /overloaded|\b529\b/i.test(text)) return "overloaded";
  if (code === "authentication_failed" || /invalid api key|authenticat|oauth token/i.test(text))
    return "authentication";
  // The CLI files a connection failure under server_error too ("Unable to connect to API").
  if (code === "server_error" || /API Error: 5\d\d\b|server-side issue|unable to connect/i.test(text))
    return "server_error";
  return "other";
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function str(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function num(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

function shorten(text: string): string {
  const t = text.trim();
  return t.length > MESSAGE_LIMIT ? `${t.slice(0, MESSAGE_LIMIT - 1)}…` : t;
}
