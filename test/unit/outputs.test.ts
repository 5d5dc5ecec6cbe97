import { describe, expect, it } from "vitest";
import { parseFormula } from "../../src/formulas/load.js";
import type { FormulaOutputs } from "../../src/formulas/schema.js";
import { refusalOf } from "../../src/outputs/output-policy.js";
import { MAX_BODY_BYTES, parseOutputLine } from "../../src/outputs/output-schema.js";
import { SecretRegistry, scrubCredentialPatterns } from "../../src/secrets.js";

function formulaWith(outputs: string) {
  const text = [
    'name = "out"',
    'description = "A test formula"',
    "[on]",
    "dispatch = true",
    outputs,
    "[[steps]]",
    'id = "only"',
    'title = "Do it"',
    'description = "Do the thing."',
  ].join("\n");
  return parseFormula("out.toml", text);
}

const DEFAULTS: FormulaOutputs = { comment: true, labels: [], pullRequest: false, issues: false, max: 5 };

describe("[outputs] in a formula", () => {
  it("defaults to comments on the run's issue and nothing else", () => {
    const { formula, problems } = formulaWith("");
    expect(problems).toEqual([]);
    expect(formula?.outputs).toEqual(DEFAULTS);
  });

  it("reads every key, camel-cased", () => {
    const { formula, problems } = formulaWith(
      '[outputs]\ncomment = false\nlabels = ["triaged", "bug"]\npull_request = { base = "dev", draft = true }\nissues = true\nmax = 12',
    );
    expect(problems).toEqual([]);
    expect(formula?.outputs).toEqual({
      comment: false,
      labels: ["triaged", "bug"],
      pullRequest: { base: "dev", draft: true },
      issues: true,
      max: 12,
    });
    expect(formulaWith("[outputs]\npull_request = {}").formula?.outputs.pullRequest).toEqual({ draft: false });
  });

  it("refuses a bad max, a repeated label, pull_request = true and unknown keys, naming the field", () => {
    for (const [toml, field] of [
      ["max = 0", "outputs.max"],
      ["max = 101", "outputs.max"],
      ['labels = ["a", "a"]', "outputs.labels[1]"],
      ["pull_request = true", "outputs.pull_request"],
      ['pull_request = { base = "main", auto_merge = true }', "outputs.pull_request"],
      ["comments = true", "outputs"],
    ] as const) {
      const { formula, problems } = formulaWith(`[outputs]\n${toml}`);
      expect(formula, toml).toBeUndefined();
      expect(
        problems.some((p) => p.field.startsWith(field)),
        `${toml}: ${JSON.stringify(problems)}`,
      ).toBe(true);
    }
  });
});

describe("an outputs line", () => {
  it("parses each type", () => {
    expect(parseOutputLine('{"type":"comment","body":"hi"}')).toEqual({
      ok: true,
      output: { type: "comment", body: "hi" },
    });
    expect(parseOutputLine('{"type":"label","add":["x"]}')).toEqual({
      ok: true,
      output: { type: "label", add: ["x"], remove: [] },
    });
    expect(parseOutputLine('{"type":"pull_request","title":"T","body":"B"}')).toMatchObject({ ok: true });
    expect(parseOutputLine('{"type":"issue","title":"T","body":"B"}')).toMatchObject({ ok: true });
  });

  it("says why a line is not a request, without repeating the line", () => {
    const secretish = "not json ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const bad = parseOutputLine(secretish);
    expect(bad).toEqual({ ok: false, type: "(none)", reason: "not valid JSON" });
    expect(parseOutputLine("[1]")).toMatchObject({ ok: false, reason: "not a JSON object" });
    expect(parseOutputLine('{"body":"x"}')).toMatchObject({ ok: false, type: "(none)", reason: /no "type"/ });
    expect(parseOutputLine('{"type":"merge","ref":"main"}')).toMatchObject({
      ok: false,
      type: "merge",
      reason: /unknown type "merge"/,
    });
    expect(parseOutputLine('{"type":"comment"}')).toMatchObject({ ok: false, type: "comment", reason: /body/ });
    expect(parseOutputLine('{"type":"comment","body":"x","issue":7}')).toMatchObject({
      ok: false,
      reason: /unknown key\(s\) issue/,
    });
    expect(parseOutputLine('{"type":"label"}')).toMatchObject({ ok: false, reason: /no label/ });
    expect(parseOutputLine('{"type":"label","add":["x"],"remove":["x"]}')).toMatchObject({
      ok: false,
      reason: /same label/,
    });
  });

  it("caps sizes: body 60 KiB, title 256 characters, 20 labels", () => {
    const line = (o: object) => JSON.stringify(o);
    expect(parseOutputLine(line({ type: "comment", body: "x".repeat(MAX_BODY_BYTES) })).ok).toBe(true);
    expect(parseOutputLine(line({ type: "comment", body: "x".repeat(MAX_BODY_BYTES + 1) }))).toMatchObject({
      ok: false,
      reason: /60 KiB/,
    });
    // Bytes, not characters: 30 Ki three-byte characters are 90 KiB.
    expect(parseOutputLine(line({ type: "comment", body: "€".repeat(30 * 1024) })).ok).toBe(false);
    expect(parseOutputLine(line({ type: "issue", title: "t".repeat(256), body: "b" })).ok).toBe(true);
    expect(parseOutputLine(line({ type: "issue", title: "t".repeat(257), body: "b" }))).toMatchObject({
      ok: false,
      reason: /256/,
    });
    expect(parseOutputLine(line({ type: "issue", title: "two\nlines", body: "b" })).ok).toBe(false);
    const labels = Array.from({ length: 21 }, (_, i) => `l${i}`);
    expect(parseOutputLine(line({ type: "label", add: labels.slice(0, 20) })).ok).toBe(true);
    expect(parseOutputLine(line({ type: "label", add: labels.slice(0, 11), remove: labels.slice(11) }))).toMatchObject({
      ok: false,
      reason: /more than 20/,
    });
  });
});

describe("the policy", () => {
  const parse = (o: object) => {
    const parsed = parseOutputLine(JSON.stringify(o));
    if (!parsed.ok) throw new Error(parsed.reason);
    return parsed.output;
  };
  const comment = parse({ type: "comment", body: "hi" });
  const label = parse({ type: "label", add: ["triaged"], remove: ["needs-info"] });
  const pr = parse({ type: "pull_request", title: "T", body: "B" });
  const issue = parse({ type: "issue", title: "T", body: "B" });

  it("allows a comment on the run's issue by default, nothing else", () => {
    const context = { outputs: DEFAULTS, issue: 7, accepted: 0 };
    expect(refusalOf(comment, context)).toBeUndefined();
    expect(refusalOf(label, context)).toMatch(/not allowed by the formula: triaged, needs-info \(none are allowed/);
    expect(refusalOf(pr, context)).toMatch(/does not allow pull requests/);
    expect(refusalOf(issue, context)).toMatch(/does not allow opening issues/);
  });

  it("refuses a comment or label without an issue, and comments when comment = false", () => {
    const outputs = { ...DEFAULTS, labels: ["triaged", "needs-info"] };
    expect(refusalOf(comment, { outputs, issue: null, accepted: 0 })).toBe("the run has no issue to comment on");
    expect(refusalOf(label, { outputs, issue: null, accepted: 0 })).toBe("the run has no issue to label");
    expect(refusalOf(label, { outputs, issue: 3, accepted: 0 })).toBeUndefined();
    expect(refusalOf(comment, { outputs: { ...outputs, comment: false }, issue: 3, accepted: 0 })).toMatch(
      /comment = false/,
    );
  });

  it("refuses only the labels outside the list, by name", () => {
    const outputs = { ...DEFAULTS, labels: ["triaged"] };
    expect(refusalOf(label, { outputs, issue: 3, accepted: 0 })).toBe(
      "label(s) not allowed by the formula: needs-info (allowed: triaged; [outputs] labels)",
    );
  });

  it("allows pull requests and issues when the formula does, up to max", () => {
    const outputs: FormulaOutputs = { ...DEFAULTS, pullRequest: { draft: false }, issues: true, max: 2 };
    expect(refusalOf(pr, { outputs, issue: null, accepted: 0 })).toBeUndefined();
    expect(refusalOf(issue, { outputs, issue: null, accepted: 1 })).toBeUndefined();
    expect(refusalOf(issue, { outputs, issue: null, accepted: 2 })).toMatch(/allows 2 output\(s\) per run/);
    // A type refusal says what is wrong with the request, not that the limit is reached.
    expect(refusalOf(comment, { outputs, issue: null, accepted: 2 })).toMatch(/no issue/);
  });
});

describe("scrubbing credentials", () => {
  it("redacts known token shapes, bearer credentials, private keys", () => {
    const cases = [
      "ghp_0123456789abcdefghijABCDEFGHIJ0123",
      "gho_0123456789abcdefghijABCDEFGHIJ0123",
      "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
      "glpat-abcdefghij0123456789",
      "sk-ant-api03-abcdefghijklmnop-0123456789",
      "xoxb-123456789012-abcdefghij",
      "AKIAIOSFODNN7EXAMPLE",
    ];
    for (const token of cases) {
      const out = scrubCredentialPatterns(`token: ${token} end`);
      expect(out, token).toBe("token: [redacted] end");
    }
    expect(scrubCredentialPatterns("curl -H 'Authorization: Bearer abc.def-ghi_jkl' x")).toBe(
      "curl -H 'Authorization: Bearer [redacted]' x",
    );
    expect(scrubCredentialPatterns("Authorization: token s3cr3tvalue")).toBe("Authorization: token [redacted]");
    const pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----";
    expect(scrubCredentialPatterns(`key:\n${pem}\ndone`)).toBe("key:\n[redacted]\ndone");
  });

  it("redacts long hex and random-looking base64, keeps prose, paths, short shas and identifiers", () => {
    const hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b";
    expect(scrubCredentialPatterns(`gitea token ${hex}.`)).toBe("gitea token [redacted].");
    const b64 = "Z/vDvAnrryAd3RMOPhy1eflQTtOW9E/fKntFgiRP";
    expect(scrubCredentialPatterns(`secret=${b64}==`)).toBe("secret=[redacted]");
    const keep = [
      "Fixes the crash in src/runs/run-executor.ts (commit 9f86d08) when the worktree is gone.",
      "See https://github.com/acme/widgets/pull/123 and formula-runner/12345.",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "some_very_long_snake_case_identifier_name_that_goes_on_and_on",
      "A sha256 prefix 9f86d081884c7d65 is short.",
    ];
    for (const text of keep) expect(scrubCredentialPatterns(text)).toBe(text);
  });

  it("adds to the registry's scrub of known values", () => {
    const secrets = new SecretRegistry();
    secrets.add("plain-known-secret");
    const text = "the token is plain-known-secret and ghp_0123456789abcdefghijABCDEFGHIJ0123";
    expect(scrubCredentialPatterns(secrets.scrub(text))).toBe("the token is [redacted] and [redacted]");
  });
});
