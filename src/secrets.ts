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
/** The shortest piece of a secret at the edge of a cut that scrubTail redacts. */
const PARTIAL_MATCH = 4;

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

  /**
   * `scrub` for a tail cut from a longer output: the cut may have fallen inside a secret,
   * leaving its end at the start of the tail (and a stream cut off mid-write leaves its
   * beginning at the end), which `scrub` cannot recognise. Those partial matches of at
   * least PARTIAL_MATCH characters are redacted too.
   */
  scrubTail(text: string): string {
    let out = this.scrub(text);
    for (const value of this.#values) {
      for (let length = value.length - 1; length >= PARTIAL_MATCH; length--) {
        if (out.startsWith(value.slice(-length))) {
          out = `${REDACTED}${out.slice(length)}`;
          break;
        }
      }
      for (let length = value.length - 1; length >= PARTIAL_MATCH; length--) {
        if (out.endsWith(value.slice(0, length))) {
          out = `${out.slice(0, out.length - length)}${REDACTED}`;
          break;
        }
      }
    }
    return out;
  }
}
