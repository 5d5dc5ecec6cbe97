import { readFile } from "node:fs/promises";
import { apiTokenPath } from "../api-token.js";
import type { Settings } from "../config.js";

/** A failed API call: the server's error envelope, or why the server could not be reached. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
    readonly code: string | undefined,
    /** The rest of the server's error envelope (validation problems, the record concerned). */
    readonly details: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/**
 * The REST API as the CLI uses it. The CLI talks to a running server rather than to the
 * database, so it works with the embedded database (which one process at a time may open)
 * and against a remote instance alike.
 */
export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string,
  ) {}

  /** FORMULA_RUNNER_URL, else the HOST/PORT the local server listens on; API_TOKEN, else `$DATA_DIR/api-token`. */
  static async fromEnvironment(
    settings: Settings,
    env: Readonly<Record<string, string | undefined>>,
  ): Promise<ApiClient> {
    const host = settings.host === "0.0.0.0" || settings.host === "::" ? "127.0.0.1" : settings.host;
    const baseUrl = (
      env.FORMULA_RUNNER_URL?.trim() || `http://${host.includes(":") ? `[${host}]` : host}:${settings.port}`
    ).replace(/\/+$/, "");
    let token = settings.apiToken?.reveal();
    if (!token) {
      const file = apiTokenPath(settings.dataDir);
      token = (await readFile(file, "utf8").catch(() => "")).trim();
      if (!token) {
        throw new ApiError(
          `no API token: set API_TOKEN, or run this where the server's DATA_DIR (${settings.dataDir}) is`,
          undefined,
          undefined,
        );
      }
    }
    return new ApiClient(baseUrl, token);
  }

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    const res = await this.#send(method, route, body, AbortSignal.timeout(60_000));
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!res.ok) throw errorOf(res.status, route, parsed);
    return parsed as T;
  }

  /** A response whose body the caller reads (plain text, a server-sent event stream); no time limit. */
  async open(route: string): Promise<Response> {
    const res = await this.#send("GET", route, undefined, undefined);
    if (!res.ok) {
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      throw errorOf(res.status, route, parsed);
    }
    return res;
  }

  async #send(method: string, route: string, body: unknown, signal: AbortSignal | undefined): Promise<Response> {
    try {
      return await fetch(`${this.baseUrl}${route}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          accept: "application/json",
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        ...(signal && { signal }),
      });
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
      throw new ApiError(
        `cannot reach the server at ${this.baseUrl} (${cause}); is \`formula-runner serve\` running? (FORMULA_RUNNER_URL sets where)`,
        undefined,
        undefined,
      );
    }
  }
}

/** The server's error envelope as an ApiError. */
function errorOf(status: number, route: string, parsed: unknown): ApiError {
  const envelope = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
  const { code, message, ...details } = envelope ?? {};
  return new ApiError(message ?? `HTTP ${status} from ${route}`, status, code, details);
}
