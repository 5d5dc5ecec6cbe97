import { createHash, randomBytes } from "node:crypto";

/**
 * A run token: what an agent holds instead of the API token. `frr_<run id>_<128 random
 * bits>`: the id says which run to check it against, the random part is the secret. Only
 * its sha256 is stored (`runs.token_hash`); a new one is issued for every session and the
 * hash is cleared when the run settles, so a token is good only while its agent runs.
 */
const PATTERN = /^frr_([1-9]\d{0,15})_([A-Za-z0-9_-]{22})$/;

export function issueRunToken(runId: number): { token: string; hash: string } {
  const token = `frr_${runId}_${randomBytes(16).toString("base64url")}`;
  return { token, hash: hashRunToken(token) };
}

export function hashRunToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** The run a token claims to belong to; undefined when it is not shaped like a run token. */
export function runIdOfToken(token: string): number | undefined {
  const match = PATTERN.exec(token);
  return match ? Number(match[1]) : undefined;
}
