/**
 * Scripted test agents: small bash scripts that read $PHASE_FILE, take the prompt on stdin
 * (copied to $PROMPT_COPY when set) and write phases, crash, hang or escalate.
 *
 * | agent | does |
 * | --- | --- |
 * | done | PHASE:working (rename), waits until it is recorded, PHASE:done (direct), exit 0 |
 * | fail | PHASE:failed + `Reason: tests are red`, exit 0 |
 * | no-phase | exit 0, no phase |
 * | crash-once | 1st run PHASE:working + exit 3 (marker `.crash-once-marker` next to the phase file); 2nd run PHASE:done |
 * | crash-always | PHASE:working, exit 7 |
 * | hang | PHASE:working, then sleeps forever printing nothing |
 * | hang-noisy | PHASE:working, then a line every 0.2 s forever |
 * | ignore-term | traps SIGTERM, sleeps forever: needs SIGKILL |
 * | grandchild | `sleep 1000 &`, pid to $GRANDCHILD_PID_FILE, PHASE:working, sleeps (exits 0 at once with EXIT_AFTER_SPAWN) |
 * | phases | planning, implementing, testing, reviewing, done, each held until recorded |
 * | crlf | `PHASE:done  \r\nReason: with CRLF  \r\n` |
 * | escalate | PHASE:escalate + question; with $ESCALATION_REPLY: reply to $REPLY_COPY, PHASE:done |
 * | env-dump | `env \| sort` to $ENV_COPY (default $TMPDIR/env.txt), PHASE:done |
 * | hang-once | 1st run: grandchild + PHASE:working, waits forever (marker `.hang-once-marker`); later runs: PHASE:done |
 * | hostile | probes secrets, the clone's hooks/config, writes and network; `name=result` lines to $TMPDIR/probes.txt |
 * | run-token | calls the API with its run token; `name=status` lines and the token to $TMPDIR |
 */
import { fileURLToPath } from "node:url";

export const AGENTS_DIR = fileURLToPath(new URL(".", import.meta.url));

export type TestAgent =
  | "done"
  | "fail"
  | "no-phase"
  | "crash-once"
  | "crash-always"
  | "hang"
  | "hang-noisy"
  | "ignore-term"
  | "grandchild"
  | "phases"
  | "crlf"
  | "escalate"
  | "env-dump"
  | "hang-once"
  | "hostile"
  | "run-token";

/** Absolute path of a test agent script (executable; run it directly or as `bash <path>`). */
export function agentPath(agent: TestAgent): string {
  return fileURLToPath(new URL(`./${agent}.sh`, import.meta.url));
}
