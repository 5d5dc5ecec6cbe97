/**
 * The PreToolUse hook process of the `claude` profile's Bash guard, run by Claude Code
 * before each Bash tool call (writeClaudeSettings in ./claude-settings.ts puts it there):
 *
 *   node [--import <tsx loader>] bash-guard-hook.(ts|js) --worktree PATH --primary BRANCH
 *
 * Claude Code writes one JSON object to stdin ({session_id, cwd, hook_event_name,
 * tool_name, tool_input: {command, ...}, ...}). The exit code is the answer:
 * - 0: allowed (nothing printed);
 * - 2: refused; stderr is the reason, and Claude Code shows it to the model and does not
 *   run the command;
 * - 1: the hook could not read its input; stderr is a note, and Claude Code shows it to the
 *   user (the session log here) and runs the command.
 *
 * It runs once per Bash call, so it imports nothing but node built-ins and the pure check.
 */
import { homedir } from "node:os";
import { parseArgs } from "node:util";
import { checkBashCommand } from "./bash-guard.js";

/** Refuse absurd input rather than buffer it: a Bash tool call is nowhere near this. */
const MAX_INPUT_BYTES = 16 * 1024 * 1024;

/** The hook's exit codes, as Claude Code reads them. */
const ALLOW = 0;
const NOT_CHECKED = 1;
const REFUSE = 2;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    size += buffer.length;
    if (size > MAX_INPUT_BYTES) throw new Error(`more than ${MAX_INPUT_BYTES} bytes on stdin`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** The Bash command and its cwd from Claude Code's hook input; undefined for any other tool; a string for input it cannot read. */
function bashCall(input: unknown): { command: string; cwd: string | undefined } | undefined | string {
  if (typeof input !== "object" || input === null || Array.isArray(input)) return "the input is not a JSON object";
  const fields = input as Record<string, unknown>;
  if (fields.hook_event_name !== undefined && fields.hook_event_name !== "PreToolUse") return undefined;
  if (fields.tool_name !== "Bash")
    return typeof fields.tool_name === "string" ? undefined : "the input has no tool_name";
  const toolInput = fields.tool_input;
  const command =
    typeof toolInput === "object" && toolInput !== null ? (toolInput as Record<string, unknown>).command : undefined;
  if (typeof command !== "string") return "the Bash tool_input has no command string";
  return { command, cwd: typeof fields.cwd === "string" && fields.cwd !== "" ? fields.cwd : undefined };
}

async function main(): Promise<number> {
  let worktree: string | undefined;
  let primary: string | undefined;
  try {
    const { values } = parseArgs({
      options: { worktree: { type: "string" }, primary: { type: "string" } },
      strict: true,
    });
    worktree = values.worktree;
    primary = values.primary;
  } catch (error) {
    process.stderr.write(
      `formula-runner's Bash guard is misconfigured: ${error instanceof Error ? error.message : String(error)}\n`,
    );
  }
  if (!worktree || !primary) {
    // The arguments come from our own settings file, not from the agent: a bad one is a
    // bug of the server. Failing closed makes it visible at once (every Bash call is
    // refused with this message) instead of leaving the guard silently off.
    process.stderr.write(
      "formula-runner's Bash guard is misconfigured (it needs --worktree PATH and --primary BRANCH); Bash is unavailable in this session.\n",
    );
    return REFUSE;
  }

  // Input the hook cannot read is Claude Code's side of the protocol (a CLI upgrade that
  // renamed a field, a truncated pipe), not the agent's command. Blocking every Bash call
  // for it would stop the run for a reason the agent cannot act on, so the call goes
  // ahead, but with exit 1 rather than 0: Claude Code drops stderr on 0 and shows it to
  // the user on other codes, so the note lands in the session log where an operator sees
  // that the guard was not applied.
  let call: ReturnType<typeof bashCall>;
  try {
    call = bashCall(JSON.parse(await readStdin()));
  } catch (error) {
    call = `the input is not valid JSON (${error instanceof Error ? error.message : String(error)})`;
  }
  if (typeof call === "string") {
    process.stderr.write(
      `formula-runner's Bash guard could not read its input, so the command was not checked: ${call}.\n`,
    );
    return NOT_CHECKED;
  }
  if (call === undefined) return ALLOW;

  try {
    const verdict = checkBashCommand(call.command, {
      cwd: call.cwd ?? worktree,
      worktree,
      primaryBranch: primary,
      home: process.env.HOME ?? homedir(),
    });
    if (verdict.allowed) return ALLOW;
    process.stderr.write(`${verdict.reason}\n`);
    return REFUSE;
  } catch (error) {
    // A bug in the check itself, on this particular command: refuse it (the agent can
    // rephrase) rather than wave through a command nobody looked at.
    process.stderr.write(
      `formula-runner's Bash guard failed while checking this command (${error instanceof Error ? error.message : String(error)}). ` +
        "Split it into simpler commands and try again.\n",
    );
    return REFUSE;
  }
}

// exitCode rather than process.exit(): stderr is flushed before the process ends.
process.exitCode = await main();
