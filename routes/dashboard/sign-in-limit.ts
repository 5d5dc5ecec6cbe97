import { getConnInfo } from "@hono/node-server/conninfo";
import type { Context } from "hono";

/** Wrong tokens a client address may send in one window before the form refuses it. */
export const MAX_FAILED_SIGN_INS = 10;
export const SIGN_IN_WINDOW_MS = 15 * 60_000;
/** Addresses remembered at most: a flood of addresses evicts the oldest, never grows memory. */
const MAX_CLIENTS = 10_000;

/**
 * Failed sign-ins per client address. After MAX_FAILED_SIGN_INS wrong tokens within
 * SIGN_IN_WINDOW_MS of the first, the sign-in form answers 429 with Retry-After until the
 * window has passed, so the API token cannot be guessed through the form at speed. A right
 * token clears the address's count. Kept in memory per instance (a restart forgets it).
 */
export class SignInLimit {
  readonly #failures = new Map<string, { count: number; since: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Seconds the address must wait before it may try again, or undefined when it may now. */
  retryAfterS(client: string): number | undefined {
    const entry = this.#current(client);
    if (!entry || entry.count < MAX_FAILED_SIGN_INS) return undefined;
    return Math.max(1, Math.ceil((entry.since + SIGN_IN_WINDOW_MS - this.now()) / 1000));
  }

  failed(client: string): void {
    const entry = this.#current(client);
    if (entry) {
      entry.count += 1;
      return;
    }
    if (this.#failures.size >= MAX_CLIENTS) {
      const oldest = this.#failures.keys().next().value;
      if (oldest !== undefined) this.#failures.delete(oldest);
    }
    this.#failures.set(client, { count: 1, since: this.now() });
  }

  succeeded(client: string): void {
    this.#failures.delete(client);
  }

  #current(client: string) {
    const entry = this.#failures.get(client);
    if (entry && this.now() - entry.since >= SIGN_IN_WINDOW_MS) {
      this.#failures.delete(client);
      return undefined;
    }
    return entry;
  }
}

/**
 * The address the request came from: the TCP peer (a reverse proxy in front shares one
 * address among all its clients; X-Forwarded-For is not trusted, as anyone can send it).
 */
export function clientAddress(c: Context): string {
  try {
    return getConnInfo(c).remote.address ?? "unknown";
  } catch {
    // No socket (a request made in-process, as tests do).
    return "unknown";
  }
}
