import { inspect } from "node:util";

const REDACTED = "[redacted]";

/**
 * A secret value read from the environment. It prints as `[redacted]` in logs, JSON and
 * `console.log`; only `reveal()` gives the value, at the one place that needs it.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}

/** Shortest value treated as a secret to scrub from text; shorter ones would match too much. */
const MIN_SECRET_LENGTH = 6;

/**
 * Every secret value the process knows (API token, forge tokens, webhook secrets), so
 * any text leaving the process (log lines, comments, API answers) can be scrubbed.
 */
export class SecretRegistry {
  readonly #values = new Set<string>();

  add(value: string | Secret | undefined): void {
    const text = value instanceof Secret ? value.reveal() : value;
    if (text && text.length >= MIN_SECRET_LENGTH) this.#values.add(text);
  }

  get size(): number {
    return this.#values.size;
  }

  /** `text` with every known secret value replaced by `[redacted]`. */
  scrub(text: string): string {
    let out = text;
    for (const value of this.#values) {
      if (out.includes(value)) out = out.split(value).join(REDACTED);
    }
    return out;
  }
}
