import { readdirSync, readFileSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AgentResult,
  type ApiErrorKind,
  classifyApiError,
  DEFAULT_MAX_LINE_LENGTH,
  StreamJsonReader,
  type StreamSummary,
} from "../../src/sessions/stream-json.js";

/** Real stdout of `claude -p --output-format stream-json --verbose` 2.1.197 against test/helpers/fake-anthropic (see docs/agents.md). */
const FIXTURES = new URL("../fixtures/claude/", import.meta.url);
const fixture = (name: string) => readFileSync(new URL(name, FIXTURES), "utf8");
const FIXTURE_NAMES = readdirSync(FIXTURES).filter((name) => name.endsWith(".jsonl"));

function read(
  chunks: Iterable<string>,
  options?: ConstructorParameters<typeof StreamJsonReader>[0],
): { summary: StreamSummary; results: AgentResult[]; notes: string[] } {
  const reader = new StreamJsonReader(options);
  const results: AgentResult[] = [];
  const notes: string[] = [];
  reader.onResult = (result) => results.push(result);
  reader.onNote = (note) => notes.push(note);
  for (const chunk of chunks) reader.push(chunk);
  reader.end();
  return { summary: reader.summary, results, notes };
}

const summaryOf = (text: string) => read([text]).summary;

interface Expected {
  /** Default: the one the init line printed. */
  sessionId?: string;
  turns: number;
  toolCalls: number;
  subtype: string;
  isError: boolean;
  apiError?: { kind: ApiErrorKind; status?: number; message: RegExp | string };
  apiRetries?: number;
}

const EXPECTED: Record<string, Expected> = {
  "bash-tool-success.jsonl": {
    sessionId: "3a88cfba-9d0c-4062-816e-63430ac0d2c4",
    turns: 2,
    toolCalls: 1,
    subtype: "success",
    isError: false,
  },
  "resume.jsonl": {
    sessionId: "3a88cfba-9d0c-4062-816e-63430ac0d2c4",
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: false,
  },
  "multi-block-turn.jsonl": {
    sessionId: "d407b52f-05c3-4c3a-b8a4-9984dc81b725",
    turns: 3,
    toolCalls: 2,
    subtype: "success",
    isError: false,
  },
  "rate-limit-429-recovered.jsonl": {
    sessionId: "92fa7364-60a8-4e0f-abba-73cea2da70ec",
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: false,
    apiRetries: 1,
  },
  "overloaded-529-retried.jsonl": {
    sessionId: "90c04188-9fc0-4d57-8ff1-0e0d529894ec",
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "overloaded", status: 529, message: /^API Error: 529 Overloaded\. This is a server-side issue/ },
    apiRetries: 2,
  },
  "auth-401.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "authentication", status: 401, message: "Invalid API key · Fix external API key" },
  },
  "auth-401-default-retries.jsonl": {
    sessionId: "5ba7cfa9-5192-4c80-9534-df11f6a2d7a2",
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "authentication", status: 401, message: "Invalid API key · Fix external API key" },
    apiRetries: 10,
  },
  "permission-403.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "authentication", status: 403, message: /^Failed to authenticate\. API Error: 403/ },
  },
  "rate-limit-429.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "rate_limit", status: 429, message: /^API Error: Request rejected \(429\)/ },
  },
  "server-error-500.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "server_error", status: 500, message: /^API Error: 500 Internal server error/ },
  },
  "credit-balance-low.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "billing", status: 400, message: "Credit balance is too low" },
  },
  "billing-402.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "billing", status: 402, message: "API Error: 402 Billing issue" },
  },
  "connection-refused.jsonl": {
    turns: 1,
    toolCalls: 0,
    subtype: "success",
    isError: true,
    apiError: { kind: "server_error", message: "API Error: Unable to connect to API (ConnectionRefused)" },
  },
  "resume-not-found.jsonl": {
    sessionId: "00000000-0000-4000-8000-000000000000",
    turns: 0,
    toolCalls: 0,
    subtype: "error_during_execution",
    isError: true,
  },
};

/** The session id of a fixture, as the CLI printed it in the init line (or the result, when there is none). */
function printedSessionId(text: string): string {
  const lines = text
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line));
  return (lines.find((l) => l.type === "system" && l.subtype === "init") ?? lines.at(-1)).session_id;
}

describe("StreamJsonReader on recorded Claude Code 2.1.197 output", () => {
  it("has an expectation for every fixture", () => {
    expect(FIXTURE_NAMES.sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  it.each(Object.entries(EXPECTED))("%s", (name, expected) => {
    const text = fixture(name);
    const { summary, results, notes } = read([text]);
    const sessionId = expected.sessionId ?? printedSessionId(text);

    expect(summary.sessionId).toBe(sessionId);
    expect(summary.turns).toBe(expected.turns);
    expect(summary.toolCalls).toBe(expected.toolCalls);
    expect(summary.result).toMatchObject({ subtype: expected.subtype, isError: expected.isError, sessionId });
    expect(summary.apiRetries).toBe(expected.apiRetries ?? 0);
    expect(summary.invalidLines).toBe(0);
    expect(summary.droppedLines).toBe(0);
    expect(notes).toEqual([]);
    expect(results).toHaveLength(1);
    expect(results[0]).toBe(summary.result);
    if (expected.apiError) {
      expect(summary.apiError?.kind).toBe(expected.apiError.kind);
      expect(summary.apiError?.status).toBe(expected.apiError.status);
      expect(summary.apiError?.message).toMatch(expected.apiError.message);
      expect(summary.result?.totalCostUsd).toBe(0);
    } else {
      expect(summary.apiError).toBeUndefined();
    }
  });

  it("reads the success result's fields", () => {
    const result = summaryOf(fixture("bash-tool-success.jsonl")).result;
    expect(result).toMatchObject({
      subtype: "success",
      isError: false,
      numTurns: 2,
      totalCostUsd: 0.00035,
      durationMs: 392,
      sessionId: "3a88cfba-9d0c-4062-816e-63430ac0d2c4",
      result: "All done.",
      apiErrorStatus: undefined,
      errors: [],
      usage: { input_tokens: 20, output_tokens: 10 },
    });
    expect(result?.raw).toMatchObject({
      type: "result",
      stop_reason: "end_turn",
      terminal_reason: "completed",
      permission_denials: [],
    });
  });

  it("reads an error_during_execution result (resume of an unknown session): not an API error", () => {
    const summary = summaryOf(fixture("resume-not-found.jsonl"));
    expect(summary.result).toMatchObject({
      numTurns: 0,
      result: undefined,
      errors: ["No conversation found with session ID: 00000000-0000-4000-8000-000000000000"],
    });
    expect(summary.apiError).toBeUndefined();
  });

  it("records the last api_retry line", () => {
    expect(summaryOf(fixture("auth-401-default-retries.jsonl")).lastApiRetry).toEqual({
      attempt: 10,
      maxRetries: 10,
      status: 401,
      error: "authentication_failed",
      delayMs: 36998.07272598109,
    });
  });

  describe("without the result line (the process died first)", () => {
    const withoutResult = (name: string) => fixture(name).trimEnd().split("\n").slice(0, -1).join("\n");

    it("counts turns as assistant messages (the blocks of one message are one turn) and keeps the init session id", () => {
      const multi = summaryOf(withoutResult("multi-block-turn.jsonl"));
      expect(multi).toMatchObject({
        sessionId: "d407b52f-05c3-4c3a-b8a4-9984dc81b725",
        turns: 2,
        toolCalls: 2,
        result: undefined,
      });
      expect(summaryOf(withoutResult("bash-tool-success.jsonl"))).toMatchObject({
        turns: 2,
        toolCalls: 1,
        result: undefined,
      });
    });

    it.each<[string, ApiErrorKind]>([
      ["overloaded-529-retried.jsonl", "overloaded"],
      ["auth-401.jsonl", "authentication"],
      ["rate-limit-429.jsonl", "rate_limit"],
      ["server-error-500.jsonl", "server_error"],
      ["credit-balance-low.jsonl", "billing"],
      ["permission-403.jsonl", "authentication"],
      ["connection-refused.jsonl", "server_error"],
    ])("classifies %s from the synthetic assistant message alone", (name, kind) => {
      const summary = summaryOf(withoutResult(name));
      expect(summary.apiError?.kind).toBe(kind);
      expect(summary.apiError?.status).toBeUndefined();
    });

    it("reads nothing of a retry in progress as a final error", () => {
      const lines = fixture("auth-401-default-retries.jsonl").split("\n").slice(0, 4).join("\n");
      expect(summaryOf(lines)).toMatchObject({ apiError: undefined, apiRetries: 3, result: undefined });
    });
  });
});

describe("StreamJsonReader chunking", () => {
  it.each(FIXTURE_NAMES)("gives the same summary for %s split in two at every offset", (name) => {
    const text = fixture(name);
    const whole = summaryOf(text);
    for (let i = 0; i <= text.length; i++) {
      const { summary, results } = read([text.slice(0, i), text.slice(i)]);
      if (results.length !== 1) throw new Error(`split at ${i}: ${results.length} results`);
      expect(summary).toEqual(whole);
    }
  });

  it("gives the same summary whatever the byte chunks, decoded as agent-process does (fast-check)", () => {
    // All fixtures end to end, with a character split across chunks now and then ("·", "—").
    const text = FIXTURE_NAMES.filter((n) => !n.includes("not-found"))
      .map(fixture)
      .join("");
    const bytes = Buffer.from(text);
    const whole = read([text]);
    // onResult fires for the first result only; the summary keeps the last one.
    expect(whole.results).toHaveLength(1);
    expect(whole.summary.apiRetries).toBeGreaterThan(10);
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 60 }), (cuts) => {
        const decoder = new StringDecoder("utf8");
        const offsets = [0, ...cuts.sort((a, b) => a - b), bytes.length];
        const chunks: string[] = [];
        for (let i = 1; i < offsets.length; i++) chunks.push(decoder.write(bytes.subarray(offsets[i - 1], offsets[i])));
        chunks.push(decoder.end());
        const { summary, results } = read(chunks);
        expect(summary).toEqual(whole.summary);
        expect(results).toEqual(whole.results);
      }),
      { numRuns: 300 },
    );
  });

  it("processes a last line without a newline only at end()", () => {
    const text = fixture("bash-tool-success.jsonl").trimEnd();
    const reader = new StreamJsonReader();
    let calls = 0;
    reader.onResult = () => calls++;
    reader.push(text);
    expect(reader.summary.result).toBeUndefined();
    reader.end();
    expect(calls).toBe(1);
    expect(reader.summary.result?.subtype).toBe("success");
  });

  it("calls onResult synchronously, as soon as the result line is complete, and once only", () => {
    const result = fixture("resume.jsonl").trimEnd().split("\n").at(-1) as string;
    const reader = new StreamJsonReader();
    const seen: string[] = [];
    reader.onResult = (r) => seen.push(r.result ?? "");
    reader.push(result.slice(0, 10));
    expect(seen).toEqual([]);
    reader.push(`${result.slice(10)}\n`);
    expect(seen).toEqual(["Resumed fine."]);
    reader.push(`${result.replace("Resumed fine.", "Second result")}\n`);
    reader.end();
    expect(seen).toEqual(["Resumed fine."]);
    // The summary holds the latest result.
    expect(reader.summary.result?.result).toBe("Second result");
  });

  it("reports the session id from the init line, before any result, and again only if it changes", () => {
    const lines = fixture("bash-tool-success.jsonl").trimEnd().split("\n");
    const reader = new StreamJsonReader();
    const ids: string[] = [];
    reader.onSessionId = (id) => ids.push(id);
    reader.push(`${lines[0]}\n`);
    expect(ids).toHaveLength(1);
    expect(ids[0]).toBe(JSON.parse(lines[0] as string).session_id);
    for (const line of lines.slice(1)) reader.push(`${line}\n`);
    reader.end();
    expect(ids).toEqual([reader.summary.sessionId]);
    // A result naming another id (a forked conversation) is reported too; a throwing callback changes nothing.
    const other = (lines.at(-1) as string).replace(
      /"session_id":"[^"]+"/,
      '"session_id":"11111111-2222-4333-8444-555555555555"',
    );
    reader.onSessionId = (id) => {
      ids.push(id);
      throw new Error("recording failed");
    };
    reader.push(`${other}\n`);
    expect(ids.at(-1)).toBe("11111111-2222-4333-8444-555555555555");
    expect(reader.summary.sessionId).toBe("11111111-2222-4333-8444-555555555555");
  });

  it("tolerates CRLF line ends", () => {
    const text = fixture("multi-block-turn.jsonl");
    expect(summaryOf(text.replaceAll("\n", "\r\n"))).toEqual(summaryOf(text));
  });
});

describe("StreamJsonReader on bad input", () => {
  it("skips and counts lines that are not JSON objects, and parses the rest", () => {
    const good = fixture("bash-tool-success.jsonl").trimEnd().split("\n");
    const garbage = [
      "Error: something on stdout",
      "{not json",
      "[1,2,3]",
      "null",
      '"a string"',
      "42",
      "{}}",
      "\u0000\u0001binary",
      '{"type":',
    ];
    const mixed = [
      garbage[0],
      good[0],
      garbage[1],
      garbage[2],
      good[1],
      "",
      "   ",
      good[2],
      garbage[3],
      garbage[4],
      garbage[5],
      good[3],
      garbage[6],
      garbage[7],
      garbage[8],
      good[4],
    ].join("\n");
    const { summary, notes } = read([mixed]);
    expect(summary).toEqual({ ...summaryOf(good.join("\n")), invalidLines: garbage.length });
    expect(notes).toHaveLength(garbage.length);
    expect(notes[0]).toBe('stream-json: skipped a line that is not a JSON object: "Error: something on stdout"');
  });

  it("ignores objects of unknown types and odd field types", () => {
    const lines = [
      { type: "stream_event", event: {} },
      { type: "future_thing", session_id: "x" },
      { no_type: true },
      { type: "system", subtype: "init", session_id: 42 },
      { type: "assistant", message: "not an object" },
      {
        type: "assistant",
        message: { id: "m1", content: [null, 7, { type: "tool_use" }, { type: "text", text: "hi" }] },
      },
      { type: "system", subtype: "api_retry", attempt: "one", error_status: null },
      {
        type: "result",
        subtype: 3,
        is_error: "yes",
        num_turns: "2",
        total_cost_usd: Number.NaN,
        session_id: "s1",
        errors: ["e", 5],
      },
    ];
    const { summary } = read([`${lines.map((l) => JSON.stringify(l)).join("\n")}\n`]);
    expect(summary).toMatchObject({
      sessionId: "s1",
      turns: 1,
      toolCalls: 1,
      apiRetries: 1,
      apiError: undefined,
      invalidLines: 0,
    });
    expect(summary.lastApiRetry).toEqual({
      attempt: undefined,
      maxRetries: undefined,
      status: undefined,
      error: undefined,
      delayMs: undefined,
    });
    expect(summary.result).toMatchObject({
      subtype: "unknown",
      isError: false,
      numTurns: undefined,
      totalCostUsd: undefined,
      errors: ["e"],
    });
  });

  it("takes the session id of the result over the init line's", () => {
    const text = [
      { type: "system", subtype: "init", session_id: "from-init" },
      { type: "result", subtype: "success", is_error: false, session_id: "from-result" },
    ]
      .map((l) => JSON.stringify(l))
      .join("\n");
    expect(summaryOf(text).sessionId).toBe("from-result");
    expect(summaryOf(text.split("\n")[0] as string).sessionId).toBe("from-init");
  });

  it("drops a line longer than the cap with a note, and reads the lines after it", () => {
    const good = fixture("bash-tool-success.jsonl");
    const huge = `{"type":"user","message":{"content":"${"x".repeat(DEFAULT_MAX_LINE_LENGTH + 10)}"}}`;
    // Fed in 64 KiB chunks, as a pipe gives them.
    const text = `${huge}\n${good}`;
    const chunks: string[] = [];
    for (let i = 0; i < text.length; i += 65_536) chunks.push(text.slice(i, i + 65_536));
    const { summary, notes } = read(chunks);
    expect(summary).toEqual({ ...summaryOf(good), droppedLines: 1 });
    expect(notes).toHaveLength(1);
    expect(notes[0]).toMatch(
      /^stream-json: dropped a line longer than 1048576 characters \(\d+\+ so far, starting "\{\\"type\\":\\"user\\"/,
    );
  });

  it("drops an oversized line that arrives in one chunk, and one cut off at the end", () => {
    const line = JSON.stringify({ type: "result", subtype: "success", session_id: "s" });
    const { summary } = read([`${"y".repeat(200)}\n${line}\n${"z".repeat(150)}`], { maxLineLength: 100 });
    expect(summary).toMatchObject({ droppedLines: 2, invalidLines: 0, sessionId: "s" });
  });

  it("keeps a line exactly at the cap and drops one a character longer, however it is chunked", () => {
    const line = JSON.stringify({ type: "system", subtype: "init", session_id: "abc" });
    const max = line.length;
    for (const pad of [0, 1]) {
      const text = `${" ".repeat(pad)}${line}\n`;
      for (let i = 0; i <= text.length; i++) {
        const { summary } = read([text.slice(0, i), text.slice(i)], { maxLineLength: max });
        expect(summary.sessionId).toBe(pad === 0 ? "abc" : undefined);
        expect(summary.droppedLines).toBe(pad);
      }
    }
  });

  it("never holds more than the cap of an endless line", () => {
    const reader = new StreamJsonReader({ maxLineLength: 1000 });
    const notes: string[] = [];
    reader.onNote = (note) => notes.push(note);
    for (let i = 0; i < 10_000; i++) reader.push("x".repeat(997));
    reader.push('\n{"type":"system","subtype":"init","session_id":"after"}\n');
    expect(reader.summary).toMatchObject({ droppedLines: 1, sessionId: "after" });
    expect(notes).toHaveLength(1);
  });

  it("survives an onNote that throws", () => {
    const reader = new StreamJsonReader();
    reader.onNote = () => {
      throw new Error("logger down");
    };
    reader.push("garbage\n");
    reader.push(fixture("resume.jsonl"));
    expect(reader.summary).toMatchObject({ invalidLines: 1, turns: 1 });
  });

  it("refuses a cap that is not a positive whole number", () => {
    expect(() => new StreamJsonReader({ maxLineLength: 0 })).toThrow(RangeError);
    expect(() => new StreamJsonReader({ maxLineLength: 1.5 })).toThrow(RangeError);
  });
});

describe("classifyApiError", () => {
  it.each<[Parameters<typeof classifyApiError>[0], ApiErrorKind]>([
    [{ status: 429 }, "rate_limit"],
    [
      { status: 529, code: "server_error", text: "API Error: 529 Overloaded. This is a server-side issue" },
      "overloaded",
    ],
    [{ status: 401 }, "authentication"],
    [{ status: 403 }, "authentication"],
    [{ status: 402, code: "unknown" }, "billing"],
    [{ status: 400, code: "billing_error", text: "Credit balance is too low" }, "billing"],
    [{ status: 500 }, "server_error"],
    [{ status: 503, text: "Service Unavailable" }, "server_error"],
    [{ status: 400, text: "API Error: 400 prompt is too long" }, "other"],
    [{ code: "rate_limit" }, "rate_limit"],
    [{ code: "authentication_failed" }, "authentication"],
    [{ code: "server_error", text: "API Error: 529 Overloaded." }, "overloaded"],
    [{ code: "server_error", text: "API Error: Unable to connect to API (ConnectionRefused)" }, "server_error"],
    [{ text: "Invalid API key · Fix external API key" }, "authentication"],
    [{ text: "Your credit balance is too low to access the Anthropic API" }, "billing"],
    [{ text: "API Error: 502 Bad Gateway" }, "server_error"],
    [{ text: "API Error: Request rejected (429) · slow down" }, "rate_limit"],
    [{ code: "unknown", text: "API Error: 418 teapot" }, "other"],
    [{}, "other"],
  ])("%j -> %s", (report, kind) => {
    expect(classifyApiError(report)).toBe(kind);
  });
});
