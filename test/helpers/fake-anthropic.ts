/**
 * A scripted fake of the Anthropic Messages API, for driving the real Claude Code CLI
 * offline (give `url` to it as ANTHROPIC_BASE_URL, with any ANTHROPIC_API_KEY).
 *
 * Each main-conversation `POST /v1/messages` consumes the next scripted turn and is
 * answered with server-sent events shaped like the real API's (or a JSON body when the
 * request does not stream). Requests that are not the conversation do not consume the
 * script; they are answered harmlessly and recorded in `sideRequests`:
 * - the session-title request Claude Code 2.1.197 sends at start unless
 *   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1: no tools, a system prompt "Generate a
 *   concise, sentence-case title ..." and `output_config.format` a JSON schema with a
 *   `title` string; answered `{"title":"Scripted fake session"}`;
 * - any other tool-less request that asks for structured output, a title or a summary;
 * - `POST /v1/messages/count_tokens`; `HEAD /` (the CLI's warm-up, answered 200) and
 *   unknown paths (404 with an API-style error body).
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type FakeTurn =
  /** Assistant text, stop_reason end_turn. */
  | { text: string }
  /** A tool_use of the Bash tool with {command, description}; stop_reason tool_use. */
  | { bash: string; description?: string }
  /** Answer with this HTTP error (e.g. 529 overloaded_error, 401 authentication_error). */
  | { error: { status: number; type: string; message: string; headers?: Record<string, string> } };

export interface FakeRequest {
  method: string;
  /** Path with query, e.g. `/v1/messages?beta=true`. */
  path: string;
  /** The parsed JSON body; the raw text if it was not JSON; undefined if empty. */
  body: any;
  headers: Record<string, string>;
  at: Date;
}

export interface FakeSideRequest extends FakeRequest {
  kind: "title" | "side" | "count_tokens" | "other";
}

export interface FakeAnthropic {
  /** Give to the CLI as ANTHROPIC_BASE_URL. */
  url: string;
  /** Scripts the next conversation turns: each POST /v1/messages consumes the next turn. Appends to what is left. */
  script(turns: FakeTurn[]): void;
  /** Turns scripted and not consumed yet. */
  readonly remaining: number;
  /** Every main-conversation /v1/messages request (parsed), in order, for assertions (e.g. that a reply reached the model). */
  readonly requests: FakeRequest[];
  /** Everything else: title/summary requests, count_tokens, HEAD /, unknown paths. */
  readonly sideRequests: FakeSideRequest[];
  close(): Promise<void>;
}

/** Answer of a conversation request when the script is used up: plain text, end_turn, so the CLI ends. */
export const NO_MORE_SCRIPT = "(no more script)";
const TITLE = "Scripted fake session";
const MAX_BODY = 64 * 1024 * 1024;
/** Fixed token counts, so a cost comes out (> 0) and is the same every time. */
const INPUT_TOKENS = 100;
const OUTPUT_TOKENS = 20;

type Block =
  | { type: "text"; text: string }
  | { type: "tool_use"; id: string; name: string; input: Record<string, unknown> };

/** Every text of a recorded request's messages, in order (strings and text/tool_use/tool_result blocks), for assertions. */
export function messageTexts(body: any): string[] {
  const out: string[] = [];
  for (const message of body.messages as { role: string; content: unknown }[]) {
    if (typeof message.content === "string") out.push(`${message.role}: ${message.content}`);
    else if (Array.isArray(message.content)) {
      for (const block of message.content) {
        if (block.type === "text") out.push(`${message.role}: ${block.text}`);
        else if (block.type === "tool_use") out.push(`${message.role}: tool_use ${JSON.stringify(block.input)}`);
        else if (block.type === "tool_result")
          out.push(`${message.role}: tool_result ${JSON.stringify(block.content)}`);
      }
    }
  }
  return out;
}

/**
 * Listens on 127.0.0.2, not 127.0.0.1: a sandboxed agent reaches other hosts through the
 * sandbox's proxy, but its NO_PROXY sends 127.0.0.1 around the proxy, into the sandbox's own
 * network namespace, where nothing listens.
 */
export async function startFakeAnthropic(host = "127.0.0.2"): Promise<FakeAnthropic> {
  const queue: FakeTurn[] = [];
  const requests: FakeRequest[] = [];
  const sideRequests: FakeSideRequest[] = [];
  let counter = 0;

  const server = createServer((req, res) => {
    readBody(req).then(
      (text) => {
        try {
          handle(req, res, text);
        } catch (error) {
          sendError(res, 500, "api_error", `fake-anthropic: ${error instanceof Error ? error.message : String(error)}`);
        }
      },
      (error: Error) => sendError(res, 413, "request_too_large", error.message),
    );
  });

  function handle(req: IncomingMessage, res: ServerResponse, text: string): void {
    const path = req.url ?? "/";
    const pathname = path.split("?")[0] ?? "/";
    const method = req.method ?? "GET";
    const record: FakeRequest = { method, path, body: parseBody(text), headers: flatHeaders(req), at: new Date() };

    if (method === "POST" && pathname === "/v1/messages/count_tokens") {
      sideRequests.push({ ...record, kind: "count_tokens" });
      sendJson(res, 200, { input_tokens: INPUT_TOKENS });
      return;
    }
    if (method === "POST" && pathname === "/v1/messages") {
      const body = record.body;
      if (typeof body !== "object" || body === null || !Array.isArray(body.messages)) {
        sideRequests.push({ ...record, kind: "other" });
        sendError(res, 400, "invalid_request_error", "messages: field required");
        return;
      }
      const side = sideKind(body);
      if (side !== undefined) {
        sideRequests.push({ ...record, kind: side });
        sendMessage(res, body, [{ type: "text", text: sideAnswer(body) }], "end_turn");
        return;
      }
      requests.push(record);
      counter++;
      const turn = queue.shift() ?? { text: NO_MORE_SCRIPT };
      if ("error" in turn) {
        sendError(res, turn.error.status, turn.error.type, turn.error.message, turn.error.headers);
      } else if ("bash" in turn) {
        const input = { command: turn.bash, description: turn.description ?? "Run a scripted command" };
        sendMessage(
          res,
          body,
          [
            {
              type: "tool_use",
              id: `toolu_fake${String(counter).padStart(4, "0")}${randomId(8)}`,
              name: "Bash",
              input,
            },
          ],
          "tool_use",
        );
      } else {
        sendMessage(res, body, [{ type: "text", text: turn.text }], "end_turn");
      }
      return;
    }
    sideRequests.push({ ...record, kind: "other" });
    if (method === "HEAD" && pathname === "/") {
      res.writeHead(200).end();
      return;
    }
    sendError(res, 404, "not_found_error", `fake-anthropic: no route for ${method} ${pathname}`);
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://${host}:${port}`,
    script(turns) {
      queue.push(...turns);
    },
    get remaining() {
      return queue.length;
    },
    requests,
    sideRequests,
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        // The CLI keeps its connections alive; they must not hold the close up.
        server.closeAllConnections();
      });
    },
  };
}

/** Which kind of side request this is, or undefined for the main conversation. */
function sideKind(body: any): FakeSideRequest["kind"] | undefined {
  const hasTools = Array.isArray(body.tools) && body.tools.length > 0;
  if (hasTools) return undefined;
  const format = body.output_config?.format;
  if (format?.schema?.properties?.title !== undefined) return "title";
  const system = systemText(body.system);
  if (/\btitle\b/i.test(system)) return "title";
  if (format !== undefined || /summar/i.test(system)) return "side";
  return undefined;
}

function systemText(system: unknown): string {
  if (typeof system === "string") return system;
  if (!Array.isArray(system)) return "";
  return system.map((block) => (typeof block?.text === "string" ? block.text : "")).join("\n");
}

/** A short answer for a side request: JSON matching its schema's string fields when it asks for JSON. */
function sideAnswer(body: any): string {
  const properties = body.output_config?.format?.schema?.properties;
  if (properties && typeof properties === "object") {
    const answer: Record<string, unknown> = {};
    for (const [name, schema] of Object.entries(properties as Record<string, { type?: string }>)) {
      answer[name] =
        name === "title"
          ? TITLE
          : schema?.type === "string"
            ? "fake"
            : schema?.type === "boolean"
              ? false
              : schema?.type === "number" || schema?.type === "integer"
                ? 0
                : null;
    }
    return JSON.stringify(answer);
  }
  return /\btitle\b/i.test(systemText(body.system)) ? TITLE : "Fake summary.";
}

function sendMessage(res: ServerResponse, request: any, blocks: Block[], stopReason: "end_turn" | "tool_use"): void {
  const id = `msg_fake${randomId(20)}`;
  const model = typeof request.model === "string" ? request.model : "claude-fake";
  const headers = { "request-id": `req_fake${randomId(20)}` };
  if (request.stream !== true) {
    sendJson(
      res,
      200,
      {
        id,
        type: "message",
        role: "assistant",
        model,
        content: blocks,
        stop_reason: stopReason,
        stop_sequence: null,
        usage: {
          input_tokens: INPUT_TOKENS,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: OUTPUT_TOKENS,
        },
      },
      headers,
    );
    return;
  }
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    ...headers,
  });
  const event = (type: string, data: Record<string, unknown>) => {
    res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  };
  event("message_start", {
    message: {
      id,
      type: "message",
      role: "assistant",
      model,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: {
        input_tokens: INPUT_TOKENS,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        output_tokens: 1,
      },
    },
  });
  blocks.forEach((block, index) => {
    if (block.type === "text") {
      event("content_block_start", { index, content_block: { type: "text", text: "" } });
      if (index === 0) event("ping", {});
      for (const piece of pieces(block.text, 24))
        event("content_block_delta", { index, delta: { type: "text_delta", text: piece } });
    } else {
      event("content_block_start", {
        index,
        content_block: { type: "tool_use", id: block.id, name: block.name, input: {} },
      });
      if (index === 0) event("ping", {});
      // The real API starts with an empty partial_json, then sends the JSON in pieces.
      event("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: "" } });
      for (const piece of pieces(JSON.stringify(block.input), 16))
        event("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: piece } });
    }
    event("content_block_stop", { index });
  });
  event("message_delta", {
    delta: { stop_reason: stopReason, stop_sequence: null },
    usage: { output_tokens: OUTPUT_TOKENS },
  });
  event("message_stop", {});
  res.end();
}

function sendError(
  res: ServerResponse,
  status: number,
  type: string,
  message: string,
  headers: Record<string, string> = {},
): void {
  const requestId = `req_fake${randomId(20)}`;
  sendJson(
    res,
    status,
    { type: "error", error: { type, message }, request_id: requestId },
    { "request-id": requestId, ...headers },
  );
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** `text` in pieces of about `size` characters (at least one piece, possibly empty). */
function pieces(text: string, size: number): string[] {
  const chars = Array.from(text);
  if (chars.length === 0) return [""];
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(""));
  return out;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error(`request body over ${MAX_BODY} bytes`));
        req.resume();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function parseBody(text: string): any {
  if (text.length === 0) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function flatHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return out;
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

function randomId(length: number): string {
  const bytes = randomBytes(length);
  let out = "";
  for (const byte of bytes) out += ALPHABET[byte % ALPHABET.length];
  return out;
}
