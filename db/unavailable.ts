/**
 * Tells a database that cannot be reached (refused, cut, timed out, shutting down) from a
 * query that failed on its own merits. The first is worth a 503 and a retry; the second
 * is a bug or a bad request. drizzle wraps driver errors ("Failed query: ..."), so the
 * whole `cause` chain is looked at.
 */

/** postgres.js's own connection error codes. */
const DRIVER_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * SQLSTATEs of a server that is going away or not there yet: class 08 (connection
 * exception), 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now), 53300
 * (too many connections).
 */
function unavailableState(state: string): boolean {
  return state.startsWith("08") || state === "57P01" || state === "57P02" || state === "57P03" || state === "53300";
}

export function isDatabaseUnavailable(error: unknown): boolean {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (current !== null && typeof current === "object" && !seen.has(current)) {
    seen.add(current);
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && (DRIVER_CODES.has(code) || (/^[0-9A-Z]{5}$/.test(code) && unavailableState(code))))
      return true;
    if (current instanceof AggregateError && current.errors.some((e) => isDatabaseUnavailable(e))) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}
