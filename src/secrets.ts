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

/**
 * Token shapes of the forges and model APIs (GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and
 * fine-grained `github_pat_`, GitLab `glpat-`, Anthropic `sk-ant-`, Slack `xox?-`, AWS key ids),
 * an `Authorization`-style `Bearer`/`token`/`Basic` credential, and PEM private key blocks.
 */
const CREDENTIAL_SHAPES: readonly RegExp[] = [
  /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)/g,
  /\bgh[pousr]_[A-Za-z0-9]{20,}/g,
  /\bgithub_pat_[A-Za-z0-9_]{20,}/g,
  /\bglpat-[A-Za-z0-9_-]{20,}/g,
  /\bsk-ant-[A-Za-z0-9_-]{16,}/g,
  /\bxox[abposr]-[A-Za-z0-9-]{10,}/g,
  /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/g,
];

/** `Bearer <credential>` and `Authorization: token|Basic <credential>`: the word stays, the credential goes. */
const AUTHORIZATION = /\b(Bearer\s+|Authorization:\s*(?:token|Basic|Bearer)\s+)[A-Za-z0-9._~+/=-]{8,}/gi;

/** Runs of hex digits this long are credentials (API keys, Gitea tokens) far more often than prose. */
const LONG_HEX = /\b[0-9A-Fa-f]{32,}\b/g;

/** Candidate base64 / base64url runs; {@link looksRandom} decides. */
const LONG_BASE64 = /[A-Za-z0-9+/_-]{40,}={0,2}/g;

/**
 * Whether a base64-alphabet run looks like random bytes rather than a word, path or
 * identifier: upper- and lower-case letters and digits mixed, and high character entropy.
 */
function looksRandom(run: string): boolean {
  if (!/[A-Z]/.test(run) || !/[a-z]/.test(run) || !/[0-9]/.test(run)) return false;
  const counts = new Map<string, number>();
  for (const char of run) counts.set(char, (counts.get(char) ?? 0) + 1);
  let entropy = 0;
  for (const count of counts.values()) {
    const p = count / run.length;
    entropy -= p * Math.log2(p);
  }
  return entropy >= 4;
}

/**
 * `text` with anything shaped like a credential replaced by `[redacted]`: known token
 * prefixes, `Bearer` credentials, private keys, runs of 32+ hex digits and long random
 * looking base64. A second net after {@link SecretRegistry.scrub} for text an untrusted
 * agent wants published: it catches secrets the server never knew (a key the agent found
 * in a file). Commit ids should be written abbreviated: a full 40-digit sha is redacted.
 */
export function scrubCredentialPatterns(text: string): string {
  let out = text;
  for (const shape of CREDENTIAL_SHAPES) out = out.replace(shape, REDACTED);
  out = out.replace(AUTHORIZATION, (_match, prefix: string) => `${prefix}${REDACTED}`);
  // Both digits and letters: a row of zeros or of "a"s is not a key.
  out = out.replace(LONG_HEX, (run) => (/[0-9]/.test(run) && /[A-Fa-f]/.test(run) ? REDACTED : run));
  out = out.replace(LONG_BASE64, (run) => (looksRandom(run) ? REDACTED : run));
  return out;
}
