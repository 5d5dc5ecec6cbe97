/**
 * The phase protocol: an agent reports progress by writing `PHASE:<name>` as the FIRST
 * line of its phase file, optionally followed by `Reason: ...` on the next line (or, for
 * an escalation, the question). This module only reads that text; following the file
 * over time is `phase-watcher.ts`.
 */

/**
 * Phases that end a session. `done`/`merged` end the run as done, `failed` as failed;
 * `escalate` ends the session but not the run (the run waits for a reply).
 */
export const TERMINAL_PHASES = ["done", "merged", "failed", "escalate"] as const;

export type TerminalPhase = (typeof TERMINAL_PHASES)[number];

const TERMINAL = new Set<string>(TERMINAL_PHASES);

/** Whether `phase` (as returned by {@link parsePhaseFile}) ends the session. */
export function isTerminalPhase(phase: string): phase is TerminalPhase {
  return TERMINAL.has(phase);
}

/** What one read of a phase file says. */
export interface PhaseSignal {
  /** The phase name, lower-cased: `working`, `done`, `failed`, `escalate`... */
  phase: string;
  /** `x` of a `Reason: x` line, or that line as is; undefined when nothing follows the phase line. */
  detail: string | undefined;
  /** Everything after the phase line, trimmed, line ends normalised to `\n` (an escalation's question). */
  body: string;
}

/** Longest phase name accepted; anything longer is prose, not a phase. */
const MAX_PHASE_NAME = 64;

/** `PHASE:name`, `PHASE: name`; the prefix in any case, the name of letters, digits, `_` and `-`. */
const PHASE_LINE = new RegExp(`^PHASE:[ \\t]*([A-Za-z0-9_-]{1,${MAX_PHASE_NAME}})$`, "i");

const REASON_LINE = /^Reason:\s*(.*)$/i;

/**
 * Reads the text of a phase file. The phase is the first line with surrounding
 * whitespace (the CR of a CRLF included) stripped, of the form `PHASE:<name>`.
 * The detail is the first non-blank line after it: `Reason: x` gives `x`, any other
 * line is the detail as it stands (trimmed). A blank line between the two is tolerated.
 *
 * Returns `undefined` for an empty file or a first line that is not a phase line: the
 * agent may be half-way through writing, and the caller simply waits for the next read.
 * Never throws.
 */
export function parsePhaseFile(text: string): PhaseSignal | undefined {
  const normalised = text.replace(/^\uFEFF/, "").replace(/\r\n?/g, "\n");
  const newline = normalised.indexOf("\n");
  const firstLine = (newline === -1 ? normalised : normalised.slice(0, newline)).trim();
  const match = PHASE_LINE.exec(firstLine);
  const name = match?.[1];
  if (name === undefined) return undefined;

  const body = newline === -1 ? "" : normalised.slice(newline + 1).trim();
  let detail: string | undefined;
  if (body.length > 0) {
    const detailLine = (body.split("\n", 1)[0] ?? "").trim();
    const reason = REASON_LINE.exec(detailLine);
    detail = reason ? (reason[1] ?? "").trim() : detailLine;
    if (detail.length === 0) detail = undefined;
  }
  return { phase: name.toLowerCase(), detail, body };
}
