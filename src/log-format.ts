/**
 * The human-readable log format: one pino JSON line in, one readable line out
 * (`12:04:05.123 INFO  message  key=value ...`, an error's stack indented below). A few
 * lines of code instead of pino-pretty keep `serve` from loading a second formatter stack.
 */

/** Which format the server's log lines take; `auto`: pretty on a terminal, JSON elsewhere. */
export const LOG_FORMATS = ["json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

const LEVELS: Record<number, { name: string; colour: string }> = {
  10: { name: "TRACE", colour: "2" },
  20: { name: "DEBUG", colour: "2" },
  30: { name: "INFO", colour: "32" },
  40: { name: "WARN", colour: "33" },
  50: { name: "ERROR", colour: "31" },
  60: { name: "FATAL", colour: "1;31" },
};

/** Fields the line's head already shows, or that repeat on every line of a process. */
const HEAD_FIELDS = new Set(["level", "time", "msg", "pid", "hostname", "v"]);

/**
 * Formats one pino JSON line (with or without its newline); anything that is not a JSON
 * object comes back unchanged. With `color`, the level is coloured and fields are dim.
 */
export function formatLogLine(line: string, options: { color: boolean }): string {
  const text = line.endsWith("\n") ? line.slice(0, -1) : line;
  let record: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return line;
    record = parsed as Record<string, unknown>;
  } catch {
    return line;
  }
  const paint = (code: string, value: string) => (options.color ? `\x1b[${code}m${value}\x1b[0m` : value);
  const level = LEVELS[Number(record.level)] ?? { name: String(record.level ?? "?").toUpperCase(), colour: "0" };
  const time = typeof record.time === "number" ? new Date(record.time).toISOString().slice(11, 23) : "--:--:--.---";
  const fields: string[] = [];
  let stack: string | undefined;
  for (const [key, value] of Object.entries(record)) {
    if (HEAD_FIELDS.has(key) || value === undefined) continue;
    if (key === "err" && value !== null && typeof value === "object") {
      const err = value as { message?: unknown; stack?: unknown };
      stack = typeof err.stack === "string" ? err.stack : typeof err.message === "string" ? err.message : undefined;
      continue;
    }
    fields.push(`${key}=${fieldValue(value)}`);
  }
  const head = `${paint("2", time)} ${paint(level.colour, level.name.padEnd(5))} ${String(record.msg ?? "")}`;
  const tail = fields.length > 0 ? `  ${paint("2", fields.join(" "))}` : "";
  const below = stack === undefined ? "" : `\n${stack.replace(/^/gm, "    ")}`;
  return `${head}${tail}${below}\n`;
}

/** A field's value as one token: bare when it has no spaces or quotes, JSON otherwise. */
function fieldValue(value: unknown): string {
  if (typeof value === "string") return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

/**
 * The format and colouring of a log going to `destination`: LOG_FORMAT when set, else
 * pretty on a terminal and JSON elsewhere (files, pipes, log collectors). Colours only
 * for pretty lines on a terminal, and never with NO_COLOR.
 */
export function chooseLogFormat(
  setting: LogFormat | undefined,
  destination: { isTTY?: boolean },
  noColor: boolean,
): { format: LogFormat; color: boolean } {
  const tty = destination.isTTY === true;
  const format = setting ?? (tty ? "pretty" : "json");
  return { format, color: format === "pretty" && tty && !noColor };
}
