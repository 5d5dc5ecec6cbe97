/** Plain-text output helpers for the CLI: aligned tables, ages, sizes, colours. */

/** Where CLI commands write; `isTTY` turns on live progress lines, `color` ANSI colours. */
export interface Output {
  write(text: string): unknown;
  isTTY?: boolean;
  /** Set by the CLI from `useColor`; absent means no colours. */
  color?: boolean;
}

/**
 * Colours only for a terminal, and never when `NO_COLOR` is set to anything but the empty
 * string (https://no-color.org). Piped output, files and tests get plain text.
 */
export function useColor(out: { isTTY?: boolean }, env: Readonly<Record<string, string | undefined>>): boolean {
  const noColor = env.NO_COLOR;
  return out.isTTY === true && (noColor === undefined || noColor === "");
}

/** `out` with its `color` decided once (`useColor`), for the commands to read. */
export function withColor(out: Output, env: Readonly<Record<string, string | undefined>>): Output {
  return { write: (text) => out.write(text), isTTY: out.isTTY === true, color: useColor(out, env) };
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI colour codes start with ESC
const ANSI = /\x1b\[[0-9;]*m/g;

/** The length a terminal shows: ANSI colour codes take no room. */
export function visibleLength(text: string): number {
  return text.replace(ANSI, "").length;
}

export type Colour = "red" | "green" | "yellow" | "cyan" | "dim" | "bold";
const CODES: Record<Colour, [number, number]> = {
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  cyan: [36, 39],
  dim: [2, 22],
  bold: [1, 22],
};

/** Paints `text` when `out` takes colours, else returns it unchanged. */
export function paint(out: Pick<Output, "color">, colour: Colour, text: string): string {
  if (out.color !== true || text === "") return text;
  const [on, off] = CODES[colour];
  return `\x1b[${on}m${text}\x1b[${off}m`;
}

/** The colour of a run status, worktree state or delivery outcome: green good, red bad, yellow waiting. */
export function statusColour(status: string): Colour | undefined {
  if (["done", "ok", "queued", "answered"].includes(status)) return status === "queued" ? "cyan" : "green";
  if (["failed", "crashed", "timed_out", "FAIL"].includes(status)) return "red";
  if (["escalated", "preserved", "warn", "skipped"].includes(status)) return "yellow";
  if (["cancelled", "removed", "ignored"].includes(status)) return "dim";
  if (["running", "active"].includes(status)) return "cyan";
  return undefined;
}

/** A status word painted with its colour (`statusColour`). */
export function paintStatus(out: Pick<Output, "color">, status: string, text = status): string {
  const colour = statusColour(status);
  return colour === undefined ? text : paint(out, colour, text);
}

/** Columns padded to their widest cell (as shown: colour codes take no room); the last column is not padded. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => visibleLength(r[i] ?? ""))));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) =>
        i === cells.length - 1 ? cell : cell + " ".repeat(Math.max(0, (widths[i] ?? 0) - visibleLength(cell))),
      )
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** `1h 5m`, `42s`, `3d 2h`: the two largest units. */
export function duration(ms: number): string {
  if (!Number.isFinite(ms)) return "-";
  const sign = ms < 0 ? "-" : "";
  let rest = Math.abs(Math.round(ms / 1000));
  const parts: string[] = [];
  for (const [unit, size] of [
    ["d", 86_400],
    ["h", 3_600],
    ["m", 60],
    ["s", 1],
  ] as const) {
    if (rest >= size || (unit === "s" && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return sign + parts.slice(0, 2).join(" ");
}

/** Time from `iso` to `now` ("5m ago"), or to come ("in 3h"). */
export function relative(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "-";
  const ms = now - Date.parse(iso);
  return ms >= 0 ? `${duration(ms)} ago` : `in ${duration(-ms)}`;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}
