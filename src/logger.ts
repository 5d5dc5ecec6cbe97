import pino, { type DestinationStream, type Logger } from "pino";
import type { SecretRegistry } from "./secrets.js";

export type { Logger } from "pino";

export interface LoggerOptions {
  level?: string;
  /** Values scrubbed from every line, whatever field they end up in. */
  secrets?: SecretRegistry;
  /** Where lines go; stdout by default. Tests pass a collector. */
  destination?: { write(line: string): unknown };
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
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const out = options.destination ?? process.stdout;
  const secrets = options.secrets;
  const destination: DestinationStream = {
    write(line: string) {
      out.write(secrets && secrets.size > 0 ? secrets.scrub(line) : line);
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
