import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { isTerminalPhase, type PhaseSignal, parsePhaseFile, TERMINAL_PHASES } from "../../src/sessions/phase-file.js";

describe("parsePhaseFile", () => {
  it.each<[string, PhaseSignal]>([
    ["PHASE:done", { phase: "done", detail: undefined, body: "" }],
    ["PHASE:done\n", { phase: "done", detail: undefined, body: "" }],
    ["PHASE: done\n", { phase: "done", detail: undefined, body: "" }],
    ["  PHASE:done  \n", { phase: "done", detail: undefined, body: "" }],
    ["PHASE:done  \r\nReason: with CRLF  \r\n", { phase: "done", detail: "with CRLF", body: "Reason: with CRLF" }],
    ["PHASE:failed\nReason: x", { phase: "failed", detail: "x", body: "Reason: x" }],
    [
      "PHASE:failed\nreason:   tests are red  \n",
      { phase: "failed", detail: "tests are red", body: "reason:   tests are red" },
    ],
    ["PHASE:failed\nthe build broke\n", { phase: "failed", detail: "the build broke", body: "the build broke" }],
    [
      "PHASE:failed\n\nReason: after a blank line\n",
      { phase: "failed", detail: "after a blank line", body: "Reason: after a blank line" },
    ],
    ["PHASE:failed\nReason:\n", { phase: "failed", detail: undefined, body: "Reason:" }],
    ["PHASE:DONE", { phase: "done", detail: undefined, body: "" }],
    ["phase:Merged", { phase: "merged", detail: undefined, body: "" }],
    ["PHASE:awaiting_ci-2", { phase: "awaiting_ci-2", detail: undefined, body: "" }],
    ["\uFEFFPHASE:working\n", { phase: "working", detail: undefined, body: "" }],
    ["\tPHASE:working\r\n", { phase: "working", detail: undefined, body: "" }],
    [
      "PHASE:escalate\nShould I drop the legacy API?\r\nIt has no callers left.\n\n",
      {
        phase: "escalate",
        detail: "Should I drop the legacy API?",
        body: "Should I drop the legacy API?\nIt has no callers left.",
      },
    ],
  ])("reads %j", (text, expected) => {
    expect(parsePhaseFile(text)).toEqual(expected);
  });

  it.each([
    "",
    "\n",
    "   \r\n",
    "done",
    "PHASE:",
    "PHASE: ",
    "PHASE:do ne",
    "PHASE:done!",
    "PHASE:done.",
    "PHASE :done",
    "PHASE:done extra words",
    "the agent says\nPHASE:done",
    "\nPHASE:done",
    "PHASE=done",
    `PHASE:${"a".repeat(65)}`,
    "PHASE:dône",
  ])("finds no phase in %j", (text) => {
    expect(parsePhaseFile(text)).toBeUndefined();
  });

  it("accepts names up to 64 characters", () => {
    expect(parsePhaseFile(`PHASE:${"a".repeat(64)}`)?.phase).toBe("a".repeat(64));
  });

  it("never throws, and a phase name is never empty and never holds whitespace or capitals", () => {
    const text = fc.oneof(
      fc.string({ unit: "binary" }),
      fc
        .tuple(
          fc.constantFrom("PHASE:", "phase:", "PHASE: ", " PHASE:", "PHASE:\t"),
          fc.string({ unit: "grapheme-ascii" }),
          fc.constantFrom("", "\n", "\r\n", " \r\n"),
          fc.string({ unit: "binary" }),
        )
        .map((parts) => parts.join("")),
    );
    fc.assert(
      fc.property(text, (input) => {
        const signal = parsePhaseFile(input);
        if (signal === undefined) return;
        expect(signal.phase).toMatch(/^[a-z0-9_-]{1,64}$/);
        expect(signal.body).toBe(signal.body.trim());
        expect(signal.body).not.toContain("\r\n");
        if (signal.detail !== undefined) {
          expect(signal.detail.length).toBeGreaterThan(0);
          expect(signal.detail).toBe(signal.detail.trim());
          expect(signal.detail).not.toContain("\n");
        }
      }),
      { numRuns: 2_000 },
    );
  });

  it("reads the same phase whatever the line ends and surrounding whitespace", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...TERMINAL_PHASES, "working", "planning"),
        fc.constantFrom("\n", "\r\n"),
        fc.stringMatching(/^[ \t]*$/),
        fc.stringMatching(/^[ \t]*$/),
        (phase, eol, before, after) => {
          expect(parsePhaseFile(`${before}PHASE:${phase}${after}${eol}Reason: why${after}${eol}`)).toEqual({
            phase,
            detail: "why",
            body: "Reason: why",
          });
        },
      ),
    );
  });
});

describe("TERMINAL_PHASES", () => {
  it("are done, merged, failed and escalate", () => {
    expect([...TERMINAL_PHASES]).toEqual(["done", "merged", "failed", "escalate"]);
    for (const phase of TERMINAL_PHASES) expect(isTerminalPhase(phase)).toBe(true);
    for (const phase of ["working", "planning", "DONE", ""]) expect(isTerminalPhase(phase)).toBe(false);
  });
});
