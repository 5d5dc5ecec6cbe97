/**
 * The real Claude Code CLI (the pinned devDependency) against the scripted fake API:
 * a Bash tool call that writes the phase file, --resume in a second process, and what
 * 529 / 401 look like to StreamJsonReader. Findings are written up in docs/agents.md.
 */
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { startAgentProcess } from "../../src/sessions/agent-process.js";
import { StreamJsonReader, type StreamSummary } from "../../src/sessions/stream-json.js";
import {
  type FakeAnthropic,
  NO_MORE_SCRIPT,
  startFakeAnthropic,
  messageTexts as texts,
} from "../helpers/fake-anthropic.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const CLAUDE = fileURLToPath(new URL("../../node_modules/.bin/claude", import.meta.url));
const ARGS = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"];
/** A CLI run that takes longer than this is stuck (a normal one takes 1.5-3 s). */
const RUN_TIMEOUT_MS = 20_000;
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Sandbox {
  /** The session's working directory (a worktree in production). */
  cwd: string;
  home: string;
  tmp: string;
  phaseFile: string;
}

let fake: FakeAnthropic;
let box: Sandbox;

beforeEach(async () => {
  fake = await startFakeAnthropic();
  const root = await makeTempDir("fr-claude-");
  box = {
    cwd: join(root, "work"),
    home: join(root, "home"),
    tmp: join(root, "tmp"),
    phaseFile: join(root, "run", "phase"),
  };
  await Promise.all([box.cwd, box.home, box.tmp, join(root, "run")].map((dir) => mkdir(dir)));
});

afterEach(async () => {
  await fake.close();
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

/**
 * The environment the CLI needs to run offline against the fake, and nothing from ours:
 * HOME and TMPDIR in the sandbox (it writes ~/.claude.json, ~/.claude/projects/<cwd>/<session>.jsonl
 * and $TMPDIR/claude-<uid>/), no non-essential traffic (no title request, no telemetry,
 * no DNS lookups), IS_SANDBOX=1 when root, and no retries unless a test asks for them.
 */
function claudeEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: box.home,
    TMPDIR: box.tmp,
    ANTHROPIC_BASE_URL: fake.url,
    ANTHROPIC_API_KEY: "dummy",
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_AUTOUPDATER: "1",
    CLAUDE_CODE_MAX_RETRIES: "0",
    ...(process.getuid?.() === 0 ? { IS_SANDBOX: "1" } : {}),
    PHASE_FILE: box.phaseFile,
    ...extra,
  };
}

interface CliRun {
  exitCode: number | undefined;
  summary: StreamSummary;
  stdout: string;
  stderr: string;
  elapsedMs: number;
  /** How many times onResult fired. */
  resultCalls: number;
}

async function runClaude(
  prompt: string,
  options: { args?: string[]; env?: Record<string, string> } = {},
): Promise<CliRun> {
  const reader = new StreamJsonReader();
  let resultCalls = 0;
  reader.onResult = () => {
    resultCalls++;
  };
  let stdout = "";
  const started = Date.now();
  const subprocess = execa(CLAUDE, [...ARGS, ...(options.args ?? [])], {
    cwd: box.cwd,
    env: claudeEnv(options.env),
    extendEnv: false,
    input: prompt,
    timeout: RUN_TIMEOUT_MS,
    forceKillAfterDelay: 1_000,
    reject: false,
    stripFinalNewline: false,
  });
  subprocess.stdout.setEncoding("utf8");
  subprocess.stdout.on("data", (chunk: string) => {
    stdout += chunk;
    reader.push(chunk);
  });
  const result = await subprocess;
  reader.end();
  const run = {
    exitCode: result.exitCode,
    summary: reader.summary,
    stdout,
    stderr: String(result.stderr),
    elapsedMs: Date.now() - started,
    resultCalls,
  };
  if (result.timedOut) throw new Error(`claude did not finish in ${RUN_TIMEOUT_MS} ms\n${show(run)}`);
  return run;
}

/** What a failed assertion shows of a run. */
function show(run: CliRun): string {
  return `exit ${run.exitCode} after ${run.elapsedMs} ms\nstdout:\n${run.stdout.slice(-4000)}\nstderr:\n${run.stderr.slice(-2000)}`;
}

describe("Claude Code CLI against the fake API", () => {
  it("is installed (the pinned devDependency): these tests never skip", () => {
    expect(existsSync(CLAUDE), `${CLAUDE} is missing: run npm ci`).toBe(true);
  });

  it("runs a scripted Bash tool call that writes the phase file, and reports it in stream-json", async () => {
    fake.script([
      { bash: 'printf "PHASE:done\\n" > "$PHASE_FILE"', description: "Write the phase file" },
      { text: "Wrote PHASE:done." },
    ]);

    const run = await runClaude("Write PHASE:done to the phase file.\n");

    expect(run.exitCode, show(run)).toBe(0);
    expect(await readFile(box.phaseFile, "utf8")).toBe("PHASE:done\n");
    const { summary } = run;
    expect(summary.sessionId).toMatch(SESSION_ID);
    expect(summary.result).toMatchObject({
      subtype: "success",
      isError: false,
      sessionId: summary.sessionId,
      result: "Wrote PHASE:done.",
      numTurns: 2,
    });
    expect(summary.turns).toBe(2);
    expect(summary.toolCalls).toBe(1);
    expect(summary.result?.totalCostUsd).toBeGreaterThan(0);
    expect(summary.result?.durationMs).toBeGreaterThan(0);
    expect(summary.apiError).toBeUndefined();
    expect(summary.invalidLines).toBe(0);
    expect(run.resultCalls).toBe(1);

    // Two conversation requests: the prompt, then the prompt + tool call + its result.
    expect(fake.requests).toHaveLength(2);
    expect(fake.remaining).toBe(0);
    const [first, second] = fake.requests.map((r) => r.body);
    expect(first.stream).toBe(true);
    expect(first.tools.map((t: { name: string }) => t.name)).toContain("Bash");
    expect(texts(first)).toContain("user: Write PHASE:done to the phase file.\n");
    expect(texts(second).slice(-2)).toEqual([
      `assistant: tool_use ${JSON.stringify({ command: 'printf "PHASE:done\\n" > "$PHASE_FILE"', description: "Write the phase file" })}`,
      `user: tool_result "(Bash completed with no output)"`,
    ]);
    // With CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 the CLI asks for no title: only its warm-up HEAD /.
    expect(fake.sideRequests.map((r) => `${r.kind} ${r.method} ${r.path}`)).toEqual(["other HEAD /"]);
  });

  it("continues a session with --resume in a second process, sending the whole history", async () => {
    fake.script([{ text: "Which colour should the button be?" }]);
    const first = await runClaude("Paint the button. Ask me the colour first.");
    expect(first.exitCode, show(first)).toBe(0);
    const sessionId = first.summary.sessionId;
    expect(sessionId).toMatch(SESSION_ID);

    fake.script([{ text: "Painting it blue." }]);
    const second = await runClaude("The reply: blue.", { args: ["--resume", sessionId as string] });

    expect(second.exitCode, show(second)).toBe(0);
    // The same id again: a resume continues the session rather than forking it.
    expect(second.summary.sessionId).toBe(sessionId);
    expect(second.summary.result).toMatchObject({ isError: false, result: "Painting it blue.", numTurns: 1 });
    expect(fake.requests).toHaveLength(2);
    // The CLI adds a <system-reminder> user block and a mid-conversation "system" message (agent types, skills).
    const history = texts(fake.requests[1]?.body).filter(
      (t) => /^(user|assistant): /.test(t) && !t.includes("<system-reminder>"),
    );
    expect(history).toEqual([
      "user: Paint the button. Ask me the colour first.",
      "assistant: Which colour should the button be?",
      "user: The reply: blue.",
    ]);
  });

  it("reports a 529 as overloaded after the retries CLAUDE_CODE_MAX_RETRIES allows, and exits 1", async () => {
    const overloaded = { error: { status: 529, type: "overloaded_error", message: "Overloaded" } };
    fake.script([overloaded, overloaded]);

    const run = await runClaude("Say hello.", { env: { CLAUDE_CODE_MAX_RETRIES: "1" } });

    expect(run.exitCode, show(run)).toBe(1);
    expect(fake.requests).toHaveLength(2);
    expect(run.summary.apiRetries).toBe(1);
    expect(run.summary.lastApiRetry).toMatchObject({ attempt: 1, maxRetries: 1, status: 529, error: "overloaded" });
    expect(run.summary.apiError).toMatchObject({ kind: "overloaded", status: 529 });
    expect(run.summary.apiError?.message).toMatch(/^API Error: 529 Overloaded/);
    expect(run.summary.result).toMatchObject({
      subtype: "success",
      isError: true,
      apiErrorStatus: 529,
      totalCostUsd: 0,
    });
    // One retry backs off about 0.5-0.63 s; the default (10 retries) takes about 3 minutes.
    expect(run.elapsedMs).toBeLessThan(15_000);
  });

  it("reports a 401 as an authentication error and exits 1", async () => {
    fake.script([{ error: { status: 401, type: "authentication_error", message: "invalid x-api-key" } }]);

    const run = await runClaude("Say hello.");

    expect(run.exitCode, show(run)).toBe(1);
    expect(fake.requests).toHaveLength(1);
    expect(run.summary.apiRetries).toBe(0);
    expect(run.summary.apiError).toEqual({
      kind: "authentication",
      status: 401,
      message: "Invalid API key · Fix external API key",
    });
    expect(run.summary.result).toMatchObject({ isError: true, apiErrorStatus: 401 });
    expect(run.summary.sessionId).toMatch(SESSION_ID);
    expect(run.elapsedMs).toBeLessThan(15_000);
  });

  it("runs under startAgentProcess: prompt from a file on stdin, output chunks into the reader", async () => {
    fake.script([{ bash: 'echo "PHASE:done" > "$PHASE_FILE"' }, { text: "Done." }]);
    const reader = new StreamJsonReader();
    const results: string[] = [];
    reader.onResult = (result) => results.push(result.subtype);
    let stderr = "";

    const agent = startAgentProcess({
      command: [CLAUDE, ...ARGS],
      cwd: box.cwd,
      env: claudeEnv(),
      input: "Write PHASE:done to the phase file.\n",
      logFile: join(box.tmp, "session.log"),
      onOutput: (text, stream) => {
        if (stream === "stdout") reader.push(text);
        else stderr += text;
      },
    });
    const timer = setTimeout(() => void agent.stop("test timeout"), RUN_TIMEOUT_MS);
    const exit = await agent.exited;
    clearTimeout(timer);
    reader.end();

    expect(exit, `${stderr}\n${agent.tail()}`).toEqual({ kind: "exited", code: 0 });
    expect(await readFile(box.phaseFile, "utf8")).toBe("PHASE:done\n");
    expect(results).toEqual(["success"]);
    expect(reader.summary).toMatchObject({ toolCalls: 1, turns: 2, apiError: undefined });
    expect(reader.summary.sessionId).toMatch(SESSION_ID);
    // The log holds the same stream-json lines.
    const log = await readFile(join(box.tmp, "session.log"), "utf8");
    expect(log.trimEnd().split("\n").at(-1)).toContain('"type":"result"');
  });
});

describe("fake Anthropic API", () => {
  async function post(path: string, body: unknown): Promise<{ status: number; type: string | null; text: string }> {
    const response = await fetch(`${fake.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: response.status, type: response.headers.get("content-type"), text: await response.text() };
  }
  const tools = [{ name: "Bash", description: "run", input_schema: { type: "object" } }];

  it("answers the CLI's title request (recorded from 2.1.197) without consuming the script", async () => {
    const titleRequest = JSON.parse(
      await readFile(fileURLToPath(new URL("../fixtures/claude/title-request.json", import.meta.url)), "utf8"),
    );
    fake.script([{ text: "main answer" }]);

    const title = await post("/v1/messages?beta=true", { ...titleRequest, stream: false });

    expect(title.status).toBe(200);
    const message = JSON.parse(title.text);
    expect(JSON.parse(message.content[0].text)).toEqual({ title: "Scripted fake session" });
    expect(fake.remaining).toBe(1);
    expect(fake.requests).toHaveLength(0);
    expect(fake.sideRequests.map((r) => r.kind)).toEqual(["title"]);
  });

  it("streams scripted turns as server-sent events and falls back to a plain end_turn when the script is used up", async () => {
    fake.script([{ bash: "ls", description: "List" }]);

    const tool = await post("/v1/messages", {
      model: "m",
      stream: true,
      tools,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(tool.type).toMatch(/^text\/event-stream/);
    const events = [...tool.text.matchAll(/^event: (\S+)\ndata: (.*)$/gm)].map(
      (m) => [m[1], JSON.parse(m[2] as string)] as const,
    );
    // Consecutive deltas folded into one.
    expect(events.map(([name]) => name).filter((name, i, all) => name !== all[i - 1])).toEqual([
      "message_start",
      "content_block_start",
      "ping",
      "content_block_delta",
      "content_block_stop",
      "message_delta",
      "message_stop",
    ]);
    const json = events
      .filter(([name, data]) => name === "content_block_delta" && data.delta.type === "input_json_delta")
      .map(([, data]) => data.delta.partial_json as string);
    expect(JSON.parse(json.join(""))).toEqual({ command: "ls", description: "List" });
    expect(events.find(([name]) => name === "message_delta")?.[1].delta.stop_reason).toBe("tool_use");

    const rest = await post("/v1/messages", {
      model: "m",
      stream: false,
      tools,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(JSON.parse(rest.text)).toMatchObject({
      type: "message",
      content: [{ type: "text", text: NO_MORE_SCRIPT }],
      stop_reason: "end_turn",
    });
    expect(fake.requests).toHaveLength(2);
  });

  it("answers scripted errors, count_tokens and unknown paths", async () => {
    fake.script([
      { error: { status: 429, type: "rate_limit_error", message: "slow down", headers: { "retry-after": "7" } } },
    ]);
    const response = await fetch(`${fake.url}/v1/messages`, {
      method: "POST",
      body: JSON.stringify({ model: "m", tools, messages: [] }),
    });
    expect(response.status).toBe(429);
    expect(response.headers.get("retry-after")).toBe("7");
    expect(await response.json()).toMatchObject({
      type: "error",
      error: { type: "rate_limit_error", message: "slow down" },
    });

    expect(JSON.parse((await post("/v1/messages/count_tokens", { model: "m", messages: [] })).text)).toEqual({
      input_tokens: 100,
    });
    expect((await post("/v1/nothing", {})).status).toBe(404);
    expect((await fetch(fake.url, { method: "HEAD" })).status).toBe(200);
    expect(fake.sideRequests.map((r) => r.kind)).toEqual(["count_tokens", "other", "other"]);
  });
});
