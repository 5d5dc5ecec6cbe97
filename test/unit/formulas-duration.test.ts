import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DURATION_PATTERN, durationProblem, formatDuration, parseDuration } from "../../src/formulas/duration.js";

describe("parseDuration", () => {
  it.each([
    ["500ms", 500],
    ["30s", 30_000],
    ["20m", 1_200_000],
    ["2h", 7_200_000],
    ["1d", 86_400_000],
    ["1h30m", 5_400_000],
    ["1m1ms", 60_001],
    ["1d2h3m4s5ms", 93_784_005],
    ["0s", 0],
    ["90m", 5_400_000],
    ["1.5h", 5_400_000],
    ["0.5s", 500],
    ["2.25d", 194_400_000],
    ["1h0.5m", 3_630_000],
  ])("reads %s as %d ms", (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    "",
    "30",
    "24",
    "1.5",
    "m",
    ".5h",
    "1.h",
    "1,5h",
    "-5m",
    "+5m",
    "5 m",
    " 5m",
    "5M",
    "30m1h",
    "1m1m",
    "5min",
    "1w",
    "1h 30m",
    "ms5",
  ])("refuses %j", (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });

  it("refuses values beyond safe integers", () => {
    expect(parseDuration("99999999999999999999d")).toBeUndefined();
  });
});

describe("durationProblem", () => {
  it("says the syntax, and what a bare number lacks", () => {
    expect(durationProblem("soon")).toBe(
      '"soon" is not a duration: write a number and a unit, like 90s, 20m, 1.5h, 2d or 1h30m',
    );
    expect(durationProblem("24")).toBe(
      '"24" is not a duration: write a number and a unit, like 90s, 20m, 1.5h, 2d or 1h30m (a bare number has no unit: write 24s, 24m or 24h)',
    );
  });
});

describe("formatDuration", () => {
  it.each([
    [0, "0s"],
    [500, "500ms"],
    [30_000, "30s"],
    [5_400_000, "1h30m"],
    [86_400_000, "1d"],
    [93_784_005, "1d2h3m4s5ms"],
    [-60_000, "-1m"],
    [1.4, "1ms"],
  ])("writes %d ms as %s", (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it("round-trips whole seconds through parseDuration", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10 ** 12 }), (seconds) => {
        expect(parseDuration(formatDuration(seconds * 1000))).toBe(seconds * 1000);
      }),
    );
  });

  it("round-trips whole milliseconds too", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (ms) => {
        expect(parseDuration(formatDuration(ms))).toBe(ms);
      }),
    );
  });
});

describe("DURATION_PATTERN", () => {
  const pattern = new RegExp(DURATION_PATTERN);

  it("matches exactly what parseDuration accepts", () => {
    const text = fc.string({ unit: fc.constantFrom("1", "0", "9", "d", "h", "m", "s", " ", "."), maxLength: 10 });
    fc.assert(
      fc.property(text, (candidate) => {
        expect(pattern.test(candidate)).toBe(parseDuration(candidate) !== undefined);
      }),
      { numRuns: 2000 },
    );
  });

  it("uses no look-around, which some editor regex engines lack", () => {
    expect(DURATION_PATTERN).not.toMatch(/\(\?[=!<]/);
  });
});
