/**
 * What the chaos run sends and how each answer is counted. Every request belongs to a
 * kind; a 503 that carries Retry-After is the documented answer while the database is cut
 * off and is counted apart from any other 5xx, which is a failure whatever the request.
 */

/** Answers of one kind of request. */
export interface RequestTally {
  sent: number;
  ok2xx: number;
  client4xx: number;
  /** 503 with Retry-After: allowed while the database (or the forge) is out of reach. */
  unavailable503: number;
  /** Any other 5xx, 503 without Retry-After included: a failure. */
  server5xx: number;
  /** Connection refused or reset, or no answer within the client timeout: a failure. */
  noAnswer: number;
  statuses: Record<string, number>;
}

export const REQUEST_KINDS = [
  "webhook valid",
  "webhook redelivery",
  "webhook fuzzed",
  "dispatch",
  "api read",
  "api fuzzed",
  "purge",
] as const;
export type RequestKind = (typeof REQUEST_KINDS)[number];

/** The only requests whose answers are not "well-formed": everything else must never see a 5xx. */
export const FUZZED_KINDS: readonly RequestKind[] = ["webhook fuzzed", "api fuzzed"];

export interface Answer {
  status: number;
  retryAfter: string | null;
  body: unknown;
}

/** Sends requests with a timeout and tallies every answer by kind. */
export class Traffic {
  readonly tallies = Object.fromEntries(
    REQUEST_KINDS.map((k) => [
      k,
      { sent: 0, ok2xx: 0, client4xx: 0, unavailable503: 0, server5xx: 0, noAnswer: 0, statuses: {} },
    ]),
  ) as Record<RequestKind, RequestTally>;
  /** Milliseconds to each answer, by kind (the first 50,000 of each). */
  readonly latencies = Object.fromEntries(REQUEST_KINDS.map((k) => [k, [] as number[]])) as Record<
    RequestKind,
    number[]
  >;
  /** A few examples of each failure, for the report. */
  readonly failures: string[] = [];
  inFlight = 0;

  constructor(
    readonly baseUrl: string,
    private readonly timeoutMs = 60_000,
  ) {}

  async send(
    kind: RequestKind,
    method: string,
    route: string,
    init: { headers?: Record<string, string>; body?: string } = {},
  ): Promise<Answer | undefined> {
    const tally = this.tallies[kind];
    tally.sent++;
    this.inFlight++;
    const started = performance.now();
    try {
      const res = await fetch(`${this.baseUrl}${route}`, {
        method,
        headers: init.headers,
        body: init.body,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON: keep the text
      }
      const retryAfter = res.headers.get("retry-after");
      if (this.latencies[kind].length < 50_000) this.latencies[kind].push(performance.now() - started);
      tally.statuses[res.status] = (tally.statuses[res.status] ?? 0) + 1;
      if (res.status < 300) tally.ok2xx++;
      else if (res.status < 500) tally.client4xx++;
      else if (res.status === 503 && retryAfter !== null) tally.unavailable503++;
      else {
        tally.server5xx++;
        this.note(`${kind}: ${method} ${route.slice(0, 80)} -> ${res.status} ${text.slice(0, 200)}`);
      }
      return { status: res.status, retryAfter, body };
    } catch (error) {
      tally.noAnswer++;
      this.note(`${kind}: ${method} ${route.slice(0, 80)} -> no answer: ${(error as Error).message}`);
      return undefined;
    } finally {
      this.inFlight--;
    }
  }

  private note(line: string): void {
    if (this.failures.length < 30) this.failures.push(line);
  }
}

/**
 * Calls `tick` every `intervalMs` until `signal` aborts, without waiting for it (ticks
 * overlap, like independent clients) unless `maxInFlight` ticks are still running, in
 * which case the tick is skipped and counted.
 */
export function every(
  intervalMs: number,
  signal: AbortSignal,
  tick: (n: number) => Promise<unknown>,
  maxInFlight = 400,
): { done: Promise<void>; skipped: () => number } {
  let n = 0;
  let inFlight = 0;
  let skipped = 0;
  const pending = new Set<Promise<unknown>>();
  const done = (async () => {
    const started = performance.now();
    while (!signal.aborted) {
      if (inFlight >= maxInFlight) skipped++;
      else {
        inFlight++;
        const p = tick(n++)
          .catch(() => {})
          .finally(() => {
            inFlight--;
            pending.delete(p);
          });
        pending.add(p);
      }
      // Paced on the start time, so a slow event loop sends in bursts rather than less.
      const next = started + n * intervalMs + skipped * intervalMs;
      await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
    }
    await Promise.all(pending);
  })();
  return { done, skipped: () => skipped };
}

/** A small seeded PRNG (mulberry32): the same seed gives the same run of choices. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
