/**
 * The settings file for Claude Code, and its hook commands run the way Claude Code runs
 * them: as shell strings (`bash -c`), with the hook input as JSON on stdin.
 */
import { mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  bashGuardHookArgv,
  CLAUDE_SETTINGS_FILE,
  type ClaudeSettings,
  claudeSettingsArgs,
  PHASE_PROTOCOL_FILE,
  shellQuote,
  writeClaudeSettings,
} from "../../src/sessions/claude-settings.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

/** Quotes, dollars, backticks, backslashes, unicode, no final newline: `cat` must print it untouched. */
const PROTOCOL =
  "## Phase protocol\nWrite `PHASE:done` to \"$PHASE_FILE\" when you're done.\n\\n is not a newline; 'single' $(not run) ünïcode\n\n  trailing spaces  ";

let root: string;
let runDir: string;
let worktree: string;

beforeEach(async () => {
  // A space and a single quote in every path the commands carry.
  root = await makeTempDir("fr settings 'q' ");
  runDir = join(root, "run's dir");
  worktree = join(root, "work tree's");
  await mkdir(worktree, { recursive: true });
});

afterEach(async () => {
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

async function written(primaryBranch = "main"): Promise<{ file: string; settings: ClaudeSettings }> {
  const file = await writeClaudeSettings({ runDir, worktree, primaryBranch, phaseProtocol: PROTOCOL });
  return { file, settings: JSON.parse(await readFile(file, "utf8")) as ClaudeSettings };
}

function hookCommand(settings: ClaudeSettings, event: "SessionStart" | "PreToolUse"): string {
  const command = settings.hooks[event][0]?.hooks[0]?.command;
  if (command === undefined) throw new Error(`no ${event} hook command`);
  return command;
}

/** Runs a hook command as Claude Code does: through bash, in the worktree, input on stdin. */
function runHook(command: string, input: string) {
  return execa("bash", ["-c", command], {
    cwd: worktree,
    input,
    reject: false,
    timeout: 20_000,
    stripFinalNewline: false,
  });
}

function bashCall(command: string, cwd = worktree): string {
  return JSON.stringify({
    session_id: "00000000-0000-4000-8000-000000000000",
    transcript_path: join(root, "transcript.jsonl"),
    cwd,
    permission_mode: "bypassPermissions",
    hook_event_name: "PreToolUse",
    tool_name: "Bash",
    tool_input: { command, description: "A command" },
    tool_use_id: "toolu_test",
  });
}

describe("writeClaudeSettings", () => {
  it("writes the protocol and a settings file with the two hooks, both private", async () => {
    const { file, settings } = await written();

    expect(file).toBe(join(runDir, CLAUDE_SETTINGS_FILE));
    expect(await readFile(join(runDir, PHASE_PROTOCOL_FILE), "utf8")).toBe(PROTOCOL);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(join(runDir, PHASE_PROTOCOL_FILE))).mode & 0o777).toBe(0o600);
    expect(settings).toEqual({
      hooks: {
        SessionStart: [{ matcher: "compact", hooks: [{ type: "command", command: expect.any(String), timeout: 30 }] }],
        PreToolUse: [{ matcher: "Bash", hooks: [{ type: "command", command: expect.any(String), timeout: 30 }] }],
      },
    });
    expect(claudeSettingsArgs(file)).toEqual(["--settings", file]);
  });

  it("SessionStart prints the phase protocol exactly", async () => {
    const { settings } = await written();

    const result = await runHook(
      hookCommand(settings, "SessionStart"),
      JSON.stringify({ hook_event_name: "SessionStart", source: "compact" }),
    );

    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toBe(PROTOCOL);
  });

  it("replaces both files when written again", async () => {
    await written();
    const file = await writeClaudeSettings({ runDir, worktree, primaryBranch: "trunk", phaseProtocol: "v2" });
    expect(await readFile(join(runDir, PHASE_PROTOCOL_FILE), "utf8")).toBe("v2");
    expect(hookCommand(JSON.parse(await readFile(file, "utf8")), "PreToolUse")).toContain("'trunk'");
  });
});

describe("the PreToolUse Bash guard hook", () => {
  it("refuses a force-push to the primary branch: exit 2, the reason on stderr", async () => {
    const { settings } = await written();

    const result = await runHook(hookCommand(settings, "PreToolUse"), bashCall("git push --force origin main"));

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('`git push --force origin main` force-pushes to the primary branch "main"');
    expect(result.stderr).toContain("open a pull request");
    expect(result.stdout).toBe("");
  });

  it("receives the worktree path intact, space and quote included", async () => {
    const { settings } = await written();
    const command = hookCommand(settings, "PreToolUse");

    const outside = await runHook(command, bashCall("rm -rf .."));
    expect(outside.exitCode).toBe(2);
    expect(outside.stderr).toContain(`deletes ${root} recursively`);
    expect(outside.stderr).toContain(`Stay inside the worktree ${worktree}:`);

    const inside = await runHook(command, bashCall(`rm -rf ${shellQuote(join(worktree, "build"))} ./dist`));
    expect(inside.exitCode, inside.stderr).toBe(0);
    expect(inside.stderr).toBe("");
  });

  it("passes a branch name with a quote intact", async () => {
    const { settings } = await written("it's-main");
    const result = await runHook(hookCommand(settings, "PreToolUse"), bashCall(`git checkout "it's-main"`));
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`checks out the primary branch "it's-main"`);
  });

  it("resolves relative paths against the cwd in the input", async () => {
    const { settings } = await written();
    const command = hookCommand(settings, "PreToolUse");

    expect((await runHook(command, bashCall("rm -rf ../x", join(worktree, "sub")))).exitCode).toBe(0);
    const refused = await runHook(command, bashCall("rm -rf x", root));
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain(`deletes ${join(root, "x")} recursively`);
  });

  it("allows an allowed command and ignores other tools, silently", async () => {
    const { settings } = await written();
    const command = hookCommand(settings, "PreToolUse");

    const allowed = await runHook(command, bashCall("echo ok > out.txt && git push origin HEAD:refs/heads/feature"));
    expect([allowed.exitCode, allowed.stdout, allowed.stderr]).toEqual([0, "", ""]);

    const write = JSON.stringify({
      hook_event_name: "PreToolUse",
      cwd: worktree,
      tool_name: "Write",
      tool_input: { file_path: "/etc/passwd", content: "rm -rf /" },
    });
    const other = await runHook(command, write);
    expect([other.exitCode, other.stdout, other.stderr]).toEqual([0, "", ""]);
  });

  it.each([
    ["not JSON", "{not json", "not valid JSON"],
    ["not an object", "[1,2]", "not a JSON object"],
    [
      "a Bash call without a command",
      JSON.stringify({ hook_event_name: "PreToolUse", tool_name: "Bash", tool_input: {} }),
      "no command string",
    ],
    ["no tool_name", JSON.stringify({ hook_event_name: "PreToolUse" }), "no tool_name"],
  ])("lets the command go ahead, with a note, on input it cannot read: %s", async (_name, input, note) => {
    const { settings } = await written();

    const result = await runHook(hookCommand(settings, "PreToolUse"), input);

    // Exit 1: Claude Code runs the tool call and shows stderr to the user (not 2, which would block).
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain("could not read its input, so the command was not checked");
    expect(result.stderr).toContain(note);
  });

  it("fails closed when its own arguments are missing", async () => {
    const [node, ...rest] = bashGuardHookArgv({ worktree, primaryBranch: "main" });
    const withoutPrimary = [node as string, ...rest.slice(0, -2)].map(shellQuote).join(" ");

    const result = await runHook(withoutPrimary, bashCall("ls"));

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("misconfigured");
  });
});

describe("bashGuardHookArgv", () => {
  it("runs the TypeScript hook through tsx's loader, by absolute URL, in development", () => {
    const argv = bashGuardHookArgv({ worktree: "/w", primaryBranch: "main" });
    expect(argv[0]).toBe(process.execPath);
    expect(argv[1]).toBe("--import");
    expect(argv[2]).toMatch(/^file:\/\/\/.*\/node_modules\/tsx\/.*\.mjs$/);
    expect(argv[3]).toMatch(/\/src\/sessions\/bash-guard-hook\.ts$/);
    expect(argv.slice(4)).toEqual(["--worktree", "/w", "--primary", "main"]);
  });

  it("runs the compiled hook with plain node next to compiled code", () => {
    const argv = bashGuardHookArgv(
      { worktree: "/w", primaryBranch: "main" },
      "file:///opt/formula-runner/dist/src/sessions/claude-settings.js",
    );
    expect(argv).toEqual([
      process.execPath,
      "/opt/formula-runner/dist/src/sessions/bash-guard-hook.js",
      "--worktree",
      "/w",
      "--primary",
      "main",
    ]);
  });
});

describe("shellQuote", () => {
  it.each([
    ["plain", "'plain'"],
    ["", "''"],
    ["it's", "'it'\\''s'"],
    ["''", "''\\'''\\'''"],
  ])("quotes %j as %s", (value, quoted) => {
    expect(shellQuote(value)).toBe(quoted);
  });

  it("gives bash back every string as one word, unchanged", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.string({ unit: "binary" }).filter((s) => !s.includes("\0")),
          { minLength: 1, maxLength: 8 },
        ),
        async (values) => {
          // printf '%s\0' prints each word bash received, NUL-terminated.
          const result = await execa("bash", ["-c", `printf '%s\\0' ${values.map(shellQuote).join(" ")}`], {
            stripFinalNewline: false,
            encoding: "utf8",
          });
          expect(result.stdout.split("\0").slice(0, -1)).toEqual(values);
        },
      ),
      { numRuns: 40 },
    );
  });
});
