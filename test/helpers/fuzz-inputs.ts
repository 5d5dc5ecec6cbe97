/**
 * Hostile inputs for the fuzz tests and the chaos run: strings databases and parsers choke
 * on, JSON bodies nested thousands deep, forged cursors, and whole API and webhook requests
 * built from them (fast-check arbitraries).
 */
import fc from "fast-check";

/** Text with what databases and parsers choke on: NUL, lone surrogates, huge numbers, odd escapes. */
export const nasty = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom("\u0000", "a\u0000b", "\uD800", "x\uDC00y", "..", "-1", "0", "2147483648", "9".repeat(30), "1e309"),
  fc.constantFrom("%00", "%C0%80", "%ED%A0%80", "%FF", "%", "%%", "&&", "=", "[]"),
);
export const hugeNumber = fc.oneof(
  fc.integer(),
  fc.constantFrom(2 ** 31, 2 ** 53 + 2, 1e308, -1, 0, 1.5, Number.MAX_SAFE_INTEGER),
);
export const jsonish = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    nasty,
    hugeNumber,
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(nasty, tie("value"), { maxKeys: 4 }),
  ),
})).value;
/** Bodies that are not JSON.stringify of a value: deep nesting, truncated text, raw escapes. */
export const rawBody = fc.oneof(
  fc.integer({ min: 100, max: 6000 }).map((n) => `${"[".repeat(n)}${"]".repeat(n)}`),
  fc.integer({ min: 100, max: 6000 }).map((n) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`),
  fc.constantFrom('{"body":"\\u0000"}', '{"body":"\\ud800"}', '{"issue":1e400}', "{", "", "null", '"x"', "[]"),
  fc.string({ maxLength: 60 }),
);
export const cursor = fc.oneof(
  nasty,
  fc
    .constantFrom("run:99999999999999999999", "run:-1", "run:1.5", "run:0")
    .map((s) => Buffer.from(s).toString("base64url")),
  fc
    .tuple(
      fc.constantFrom("+275760-09-13T00:00:00.000Z", "0001-01-01T00:00:00Z", "not a date", "2026-12-02T00:00:00Z"),
      nasty,
    )
    .map((t) => Buffer.from(JSON.stringify(t)).toString("base64url")),
);
export const query = (keys: string[]) =>
  fc.dictionary(fc.constantFrom(...keys), fc.oneof(nasty, cursor), { maxKeys: keys.length }).map((q) =>
    Object.entries(q)
      .map(([k, v]) => `${k}=${/%/.test(v) ? v : enc(v)}`)
      .join("&"),
  );

export interface ApiRequest {
  method: string;
  path: string;
  body?: string;
}

/** Percent-encodes the UTF-8 bytes of any string (encodeURIComponent throws on a lone surrogate). */
export const enc = (s: string) =>
  [...Buffer.from(s, "utf8")].map((b) => `%${b.toString(16).padStart(2, "0")}`).join("");

export const apiRequest: fc.Arbitrary<ApiRequest> = fc.oneof(
  query(["status", "formula", "project", "limit", "cursor"]).map((q) => ({ method: "GET", path: `/api/runs?${q}` })),
  query(["outcome", "project", "event", "limit", "cursor"]).map((q) => ({
    method: "GET",
    path: `/api/deliveries?${q}`,
  })),
  query(["state", "project", "formula", "run_id", "limit", "cursor"]).map((q) => ({
    method: "GET",
    path: `/api/worktrees?${q}`,
  })),
  fc.record({ formula: nasty, project: nasty, issue: hugeNumber, actor: nasty }, { requiredKeys: [] }).map((b) => ({
    method: "POST",
    path: "/api/runs",
    body: JSON.stringify(b),
  })),
  fc
    .tuple(
      nasty,
      fc.oneof(
        jsonish.map((v) => JSON.stringify({ body: v })),
        rawBody,
      ),
    )
    .map(([id, body]) => ({
      method: "POST",
      path: `/api/runs/${enc(id)}/reply`,
      body,
    })),
  fc
    .oneof(
      jsonish.map((v) => JSON.stringify({ older_than_hours: v, dry_run: true })),
      rawBody,
    )
    .map((body) => ({
      method: "POST",
      path: "/api/worktrees/purge",
      body,
    })),
  nasty.map((id) => ({ method: "GET", path: `/api/runs/${enc(id)}` })),
  nasty.map((id) => ({ method: "DELETE", path: `/api/worktrees/${enc(id)}` })),
);

/** A delivery to sign and send: an event name, a delivery id (maybe hostile) and a body naming `repo`. */
export const webhookRequest = (repo: string) =>
  fc.record({
    event: fc.constantFrom("issues", "issue_comment", "pull_request", "push", "ping", "label"),
    delivery: fc.oneof(fc.uuid(), nasty),
    body: fc.oneof(
      jsonish.map((v) => JSON.stringify({ action: "labeled", repository: { full_name: repo }, sender: v, issue: v })),
      jsonish.map((v) =>
        JSON.stringify({ repository: { full_name: repo }, issue: { number: v }, comment: { body: v } }),
      ),
      rawBody,
    ),
  });
