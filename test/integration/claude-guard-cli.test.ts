/**
 * The real Claude Code CLI (the pinned devDependency), offline against the scripted fake
 * API, started with the settings writeClaudeSettings writes: its PreToolUse hook must
 * block a force-push of the primary branch (the model gets the reason as the tool
 * result, the remote is untouched) and let an ordinary Bash command run; after a
 * compaction its SessionStart hook must put the phase protocol back in the model's context.
 */
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { claudeSettingsArgs, writeClaudeSettings } from "../../src/sessions/claude-settings.js";
import { type FakeAnthropic, startFakeAnthropic } from "../helpers/fake-anthropic.js";
import { createTestRepo, runGit, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const CLAUDE = fileURLToPath(new URL("../../node_modules/.bin/claude", import.meta.url));
const ARGS = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"];
/** A CLI run that takes longer than this is stuck (one takes 2-8 s: each Bash call starts the hook, node with tsx, first). */
const RUN_TIMEOUT_MS = 40_000;
/** A test runs the CLI up to three times. */
const TEST_TIMEOUT_MS = 3 * RUN_TIMEOUT_MS;

let fake: FakeAnthropic;
let repo: TestRepo;
let home: string;
let tmp: string;
let runDir: string;

beforeEach(async () => {
  fake = await startFakeAnthropic();
  repo = await createTestRepo();
  const root = await makeTempDir("fr-claude-guard-");
  home = join(root, "home");
  tmp = join(root, "tmp");
  runDir = join(root, "run");
  await Promise.all([home, tmp, runDir].map((dir) => mkdir(dir)));
});

afterEach(async () => {
  await fake.close();
  await cleanupTempDirs();
  expect(pendingTempDirs()).toEqual([]);
});

/** What the CLI needs to run offline against the fake (as in claude-cli.test.ts): a sandboxed HOME and TMPDIR, no other traffic, no retries. */
function claudeEnv(): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    HOME: home,
    TMPDIR: tmp,
    ANTHROPIC_BASE_URL: fake.url,
    ANTHROPIC_API_KEY: "dummy",
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_AUTOUPDATER: "1",
    CLAUDE_CODE_MAX_RETRIES: "0",
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_TERMINAL_PROMPT: "0",
    ...(process.getuid?.() === 0 ? { IS_SANDBOX: "1" } : {}),
  };
}

/** Runs the CLI in the clone with the settings file; never rejects (the exit code is asserted). */
async function runClaude(settings: string, prompt: string, extraArgs: string[] = []) {
  const result = await execa(CLAUDE, [...ARGS, ...claudeSettingsArgs(settings), ...extraArgs], {
    cwd: repo.clone,
    env: claudeEnv(),
    extendEnv: false,
    input: prompt,
    timeout: RUN_TIMEOUT_MS,
    forceKillAfterDelay: 1_000,
    reject: false,
  });
  const stdout = String(result.stdout);
  return {
    exitCode: result.exitCode,
    stdout,
    /** The stream-json lines, parsed. */
    events: stdout
      .split("\n")
      .flatMap((line) => (line.startsWith("{") ? [JSON.parse(line) as Record<string, any>] : [])),
    shown: `exit ${result.exitCode}\nstdout:\n${stdout.slice(-4000)}\nstderr:\n${String(result.stderr).slice(-2000)}`,
  };
}

/** The text of every tool_result block in a request's messages, in order. */
function toolResults(body: any): string[] {
  const out: string[] = [];
  for (const message of body.messages as { content: unknown }[]) {
    if (!Array.isArray(message.content)) continue;
    for (const block of message.content) {
      if (block?.type !== "tool_result") continue;
      const content = block.content;
      out.push(
        typeof content === "string"
          ? content
          : Array.isArray(content)
            ? content.map((c: { text?: string }) => c.text ?? "").join("")
            : "",
      );
    }
  }
  return out;
}

describe("Claude Code CLI with the formula-runner settings", () => {
  it("is installed (the pinned devDependency): these tests never skip", () => {
    expect(existsSync(CLAUDE), `${CLAUDE} is missing: run npm ci`).toBe(true);
  });

  it(
    "blocks a force-push of the primary branch with the guard's reason, and runs an allowed command",
    async () => {
      // A local history that differs from origin's: a force-push that got through would move origin.
      await runGit(repo.clone, "commit", "--quiet", "--amend", "-m", "rewritten history");
      const originBefore = await repo.head();
      const settings = await writeClaudeSettings({
        runDir,
        worktree: repo.clone,
        primaryBranch: "main",
        phaseProtocol: "Write PHASE:done when done.\n",
      });
      fake.script([
        { bash: "git push --force origin main", description: "Force-push" },
        { bash: "echo ok > out.txt", description: "Write a file" },
        { text: "Done." },
      ]);

      const { exitCode, shown } = await runClaude(settings, "Publish the change.");

      expect(exitCode, shown).toBe(0);
      expect(fake.requests, shown).toHaveLength(3);
      const afterPush = toolResults(fake.requests[1]?.body);
      expect(afterPush).toHaveLength(1);
      expect(afterPush[0]).toContain('`git push --force origin main` force-pushes to the primary branch "main"');
      expect(afterPush[0]).toContain("open a pull request");
      expect(await repo.head()).toBe(originBefore);

      const afterEcho = toolResults(fake.requests[2]?.body);
      expect(afterEcho).toHaveLength(2);
      expect(afterEcho[1]).not.toContain("formula-runner");
      expect(await readFile(join(repo.clone, "out.txt"), "utf8")).toBe("ok\n");
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "gives the phase protocol to the model again after a compaction",
    async () => {
      const protocol = "PHASE PROTOCOL: when the work is done, write PHASE:done as the first line of $PHASE_FILE.\n";
      const settings = await writeClaudeSettings({
        runDir,
        worktree: repo.clone,
        primaryBranch: "main",
        phaseProtocol: protocol,
      });
      const marker = "PHASE PROTOCOL: when the work is done";
      // /compact needs some history: a few tool calls.
      fake.script([{ bash: "echo one" }, { bash: "echo two" }, { bash: "echo three" }, { text: "Three echoes." }]);
      const first = await runClaude(settings, "Echo three times.");
      expect(first.exitCode, first.shown).toBe(0);
      const sessionId = first.events.find((e) => e.type === "result")?.session_id as string;
      // The hook runs only on compaction: nothing of the protocol so far.
      expect(JSON.stringify(fake.requests.map((r) => r.body))).not.toContain(marker);

      // The compaction's summary request is a tool-carrying conversation request: it takes the next turn.
      fake.script([{ text: "Summary: echoed three times." }]);
      const compact = await runClaude(settings, "/compact", ["--resume", sessionId]);
      expect(compact.exitCode, compact.shown).toBe(0);
      const hook = compact.events.find(
        (e) => e.type === "system" && e.subtype === "hook_response" && e.hook_name === "SessionStart:compact",
      );
      expect(hook, compact.shown).toMatchObject({ exit_code: 0, outcome: "success", stdout: protocol });

      fake.script([{ text: "Continuing." }]);
      const before = fake.requests.length;
      const next = await runClaude(settings, "Go on.", ["--resume", sessionId]);
      expect(next.exitCode, next.shown).toBe(0);
      expect(fake.requests.length).toBe(before + 1);
      expect(JSON.stringify(fake.requests.at(-1)?.body)).toContain(`SessionStart:compact hook success: ${marker}`);
    },
    TEST_TIMEOUT_MS,
  );
});
