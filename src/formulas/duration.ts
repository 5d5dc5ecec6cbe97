/**
 * The one duration syntax of formula-runner, in formula files, environment variables,
 * CLI flags (`--older-than`) and the REST API (`older_than`): numbers with a unit,
 * largest unit first, each unit at most once: `500ms`, `90s`, `20m`, `1.5h`, `2d`,
 * `1h30m`, `1d2h3m4s5ms`. A number may have a decimal part (`1.5h`); the result is
 * rounded to whole milliseconds.
 *
 * Deliberately narrower than libraries like `ms`: no spaces, no words, no bare numbers
 * (is `24` hours or seconds?), so a duration reads the same to people, to the server and
 * to the JSON Schema pattern.
 */

/** Units from largest to smallest with their length in milliseconds. */
const UNITS = [
  ["d", 86_400_000],
  ["h", 3_600_000],
  ["m", 60_000],
  ["s", 1_000],
  ["ms", 1],
] as const;

type Unit = (typeof UNITS)[number][0];

/** A number as a duration writes it: digits, optionally a decimal point and more digits. */
const NUMBER = "\\d+(?:\\.\\d+)?";

/**
 * A regular expression source (anchored) that matches exactly the strings
 * {@link parseDuration} accepts. It avoids look-around so that editor schema validators
 * whose regex engines lack it (Taplo's, for one) can still use it.
 */
export const DURATION_PATTERN: string = (() => {
  // One alternative per leading unit: that unit is required, every smaller one optional.
  // This keeps the empty string out without a look-ahead.
  const alternatives = UNITS.map(([unit], i) => {
    const optional = UNITS.slice(i + 1)
      .map(([smaller]) => `(?:${NUMBER}${smaller})?`)
      .join("");
    return `${NUMBER}${unit}${optional}`;
  });
  return `^(?:${alternatives.join("|")})$`;
})();

/** One `<digits><unit>` token; `ms` is tried before `m` so `5ms` is not read as `5m` + `s`. */
const TOKEN = /(\d+(?:\.\d+)?)(ms|d|h|m|s)/y;

/**
 * Parses a duration such as `1h30m` into milliseconds.
 * Returns `undefined` for anything else (empty, a bare number, unknown unit, units out of
 * order or repeated, signs, spaces, or a value beyond `Number.MAX_SAFE_INTEGER`).
 */
export function parseDuration(text: string): number | undefined {
  if (typeof text !== "string" || text.length === 0) return undefined;
  let total = 0;
  let position = 0;
  let lastUnitIndex = -1;
  while (position < text.length) {
    TOKEN.lastIndex = position;
    const match = TOKEN.exec(text);
    if (match === null) return undefined;
    const [token, digits, unit] = match as unknown as [string, string, Unit];
    const unitIndex = UNITS.findIndex(([name]) => name === unit);
    // Largest unit first and each unit once, so `30m1h` and `1m1m` are refused.
    if (unitIndex <= lastUnitIndex) return undefined;
    lastUnitIndex = unitIndex;
    const [, unitMs] = UNITS[unitIndex] as (typeof UNITS)[number];
    total += Number(digits) * unitMs;
    position += token.length;
  }
  const rounded = Math.round(total);
  return Number.isSafeInteger(rounded) ? rounded : undefined;
}

/**
 * Formats milliseconds in the same notation, largest units first: `5400000` -> `1h30m`,
 * `0` -> `0s`. Fractions of a millisecond are rounded; a negative value gets a leading
 * `-` (which {@link parseDuration} does not accept, as no formula field may be negative).
 */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  let rest = Math.round(Math.abs(ms));
  if (rest === 0) return "0s";
  let text = "";
  for (const [unit, unitMs] of UNITS) {
    const count = Math.floor(rest / unitMs);
    if (count > 0) {
      text += `${count}${unit}`;
      rest -= count * unitMs;
    }
  }
  return ms < 0 ? `-${text}` : text;
}

/** What to tell someone whose duration did not parse: the syntax, with examples. */
export function durationProblem(text: string): string {
  const hint = /^\d+(?:\.\d+)?$/.test(text.trim())
    ? ` (a bare number has no unit: write ${text.trim()}s, ${text.trim()}m or ${text.trim()}h)`
    : "";
  return `${JSON.stringify(text)} is not a duration: write a number and a unit, like 90s, 20m, 1.5h, 2d or 1h30m${hint}`;
}
