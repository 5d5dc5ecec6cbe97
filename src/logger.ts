import pino, { type DestinationStream, type Logger } from "pino";
import { formatLogLine, type LogFormat } from "./log-format.js";
import type { SecretRegistry } from "./secrets.js";

export type { Logger } from "pino";

export interface LoggerOptions {
  level?: string;
  /** Values scrubbed from every line, whatever field they end up in. */
  secrets?: SecretRegistry;
  /** Where lines go; stdout by default. Tests pass a collector. */
  destination?: { write(line: string): unknown; isTTY?: boolean };
  /** `json` (the default) or `pretty`: one readable line per entry (log-format.ts). */
  format?: LogFormat;
  /** Pretty lines with ANSI colours (a terminal without NO_COLOR). */
  color?: boolean;
}

/** Field paths that never reach a log line, even when a value is not a known secret. */
const REDACT_PATHS = [
  "token",
  "apiToken",
  "secret",
  "password",
  "authorization",
  "*.token",
  "*.apiToken",
  "*.secret",
  "*.password",
  "*.authorization",
  "headers.authorization",
  "req.headers.authorization",
  'headers["x-hub-signature-256"]',
  'headers["x-gitea-signature"]',
  'headers["x-forgejo-signature"]',
];

/**
 * The process logger: pino JSON lines, secret fields redacted by path and known secret
 * values scrubbed from the whole line (a token pasted into an error message included).
 * The pretty format is made from the scrubbed JSON line, so it hides the same secrets.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const out = options.destination ?? process.stdout;
  const secrets = options.secrets;
  const pretty = options.format === "pretty";
  const color = options.color === true;
  const destination: DestinationStream = {
    write(line: string) {
      const scrubbed = secrets && secrets.size > 0 ? secrets.scrub(line) : line;
      out.write(pretty ? formatLogLine(scrubbed, { color }) : scrubbed);
    },
  };
  return pino(
    {
      level: options.level ?? "info",
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      serializers: { err: pino.stdSerializers.err },
    },
    destination,
  );
}

/** A logger that drops everything (for tools and tests that don't care). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
