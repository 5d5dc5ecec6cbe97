import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiClient } from "../../src/cli/api-client.js";
import { runCommand } from "../../src/cli/commands.js";
import { runBin } from "../helpers/cli.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";

describe("CLI against a running server (real processes)", () => {
  let t: TestServer;
  let env: Record<string, string>;
  beforeAll(async () => {
    t = await startTestServer({
      backend: "pglite",
      formulas: {
        // Unsandboxed: the agent holds each phase until the server recorded it (agents/lib.sh).
        hello: testFormula("hello", { agent: "phases", sandbox: { mode: "off" } }),
        broken: testFormula("broken", { agent: "crash", retention: "1h" }),
        greedy: testFormula("greedy", { guards: { min_memory_mb: 100_000_000 } }),
      },
      agents: { phases: "phases", crash: "crash-always" },
    });
    env = { FORMULA_RUNNER_URL: t.url, API_TOKEN: TEST_TOKEN };
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("run --wait follows the phases and exits 0 when the run is done", async () => {
    const result = await runBin(["run", "hello", "--wait"], { env });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^run \d+ queued: hello on demo\n/);
    for (const phase of ["planning", "implementing", "testing", "reviewing", "done"])
      expect(result.stdout).toContain(`PHASE:${phase}`);
    expect(result.stdout).toMatch(/run \d+ done after \d+s\n$/);
  });

  it("run --wait exits 1 for a run that does not end done, and shows the kept worktree", async () => {
    const result = await runBin(["run", "broken", "--wait", "--project", "demo"], { env });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/run \d+ crashed after .*: the agent crashed twice/);
    expect(result.stdout).toMatch(/worktree kept for debugging: .*broken-\d+ \(expires in (59m|1h)/);
  });

  it("run --wait on a skipped run says why it was skipped, not `after -`", async () => {
    const written: string[] = [];
    const out = { write: (text: string) => written.push(text) };
    const code = await runCommand(
      new ApiClient(t.url, TEST_TOKEN),
      { formula: "greedy", wait: true, actor: "test", pollMs: 20 },
      out,
      out,
    );
    expect(code).toBe(1);
    const last = written.join("").trim().split("\n").at(-1);
    expect(last).toMatch(/^run \d+ skipped \(low memory\): \S/);
    expect(last).not.toContain("after -");
  });

  it("shows progress on a line rewritten in place on a TTY", async () => {
    const written: string[] = [];
    const tty = { write: (text: string) => written.push(text), isTTY: true };
    const code = await runCommand(
      new ApiClient(t.url, TEST_TOKEN),
      { formula: "hello", wait: true, actor: "test", pollMs: 20 },
      tty,
      tty,
    );
    expect(code).toBe(0);
    const text = written.join("");
    // ESC [ K clears the line before each progress frame.
    expect(text).toMatch(
      new RegExp(`\r${String.fromCharCode(27)}\\[K[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] run \\d+ (queued|running) · phase \\S+ · \\S+`),
    );
    expect(text).toContain("PHASE:done");
  });

  it("runs list and runs show print readable tables, or JSON", async () => {
    const list = await runBin(["runs", "list"], { env });
    expect(list.code).toBe(0);
    expect(list.stdout.split("\n")[0]).toMatch(
      /^ID\s+STATUS\s+FORMULA\s+PROJECT\s+ISSUE\s+PHASE\s+TRIGGER\s+QUEUED\s+TOOK$/,
    );
    expect(list.stdout).toMatch(/\n\d+\s+crashed\s+broken\s+demo/);
    const json = JSON.parse((await runBin(["runs", "list", "--json", "--status", "done"], { env })).stdout) as {
      runs: { status: string; id: number }[];
    };
    expect(json.runs.length).toBeGreaterThan(0);
    expect(json.runs.every((r) => r.status === "done")).toBe(true);
    const show = await runBin(["runs", "show", String(json.runs[0]?.id)], { env });
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/^run \d+: hello on demo\nstatus: {3}done/);
    expect(show.stdout).toContain("phases:");
    expect(show.stdout).toMatch(/sessions:\n\s+#\s+KIND/);
    const missing = await runBin(["runs", "show", "424242"], { env });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe("formula-runner: no run 424242\n");
    const notAnId = await runBin(["runs", "show", "abc"], { env });
    expect(notAnId.code).toBe(1);
    expect(notAnId.stderr).toBe('formula-runner: "abc" is not an id: ids are positive whole numbers\n');
  });

  it("worktrees list and purge: dry run, by id, nothing left to purge", async () => {
    const list = await runBin(["worktrees", "list", "--state", "preserved"], { env });
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^ID\s+STATE\s+PROJECT/);
    const [, row] = list.stdout.trim().split("\n");
    const id = row?.split(/\s+/)[0] as string;
    expect(Number(id)).toBeGreaterThan(0);

    const young = await runBin(["worktrees", "purge", "--dry-run"], { env });
    expect(young.stdout).toBe("Nothing to purge.\n");
    const dry = await runBin(["worktrees", "purge", "--older-than", "0h", "--dry-run"], { env });
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/^would purge 1 worktree\(s\)/);
    expect((await t.api("GET", `/api/worktrees/${id}`)).body.worktree.state).toBe("preserved");

    const byId = await runBin(["worktrees", "purge", "--id", id], { env });
    expect(byId.code).toBe(0);
    expect(byId.stdout).toMatch(/^purged 1 worktree\(s\)/);
    expect((await t.api("GET", `/api/worktrees/${id}`)).body.worktree).toMatchObject({
      state: "removed",
      removed_by: "api",
    });
    const again = await runBin(["worktrees", "purge", "--id", id], { env });
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^purged 0 worktree\(s\), kept 1\n/);
    expect(again.stdout).toMatch(/already removed at \S+ \(by api\)/);
    const nothing = await runBin(["worktrees", "purge", "--older-than", "0h"], { env });
    expect(nothing.stdout).toBe("Nothing to purge.\n");
    const both = await runBin(["worktrees", "purge", "--id", id, "--older-than", "1h"], { env });
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/cannot be used with/);
  });

  it("says clearly when the server cannot be reached or the token is wrong", async () => {
    const down = await runBin(["runs", "list"], { env: { FORMULA_RUNNER_URL: "http://127.0.0.1:9", API_TOKEN: "x" } });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(
      /cannot reach the server at http:\/\/127\.0\.0\.1:9 .*is `formula-runner serve` running\?/,
    );
    const wrong = await runBin(["runs", "list"], { env: { ...env, API_TOKEN: "wrong" } });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toBe("formula-runner: invalid API token\n");
  });
});
