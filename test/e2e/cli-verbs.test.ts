import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { runBin } from "../helpers/cli.js";
import { createTestRepo, type TestRepo } from "../helpers/git.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe("CLI verbs against a running server (real processes)", () => {
  let t: TestServer;
  let env: Record<string, string>;
  beforeAll(async () => {
    t = await startTestServer({
      backend: "pglite",
      formulas: {
        ask: testFormula("ask", { agent: "escalate" }),
        hello: testFormula("hello", { agent: "phases" }),
        hang: testFormula("hang", { agent: "hang", timeout: "60s", guards: { concurrency: "" } }),
      },
      agents: { escalate: "escalate", phases: "phases", hang: "hang" },
    });
    env = { FORMULA_RUNNER_URL: t.url, API_TOKEN: TEST_TOKEN };
  });
  afterAll(async () => {
    await t?.stop();
  });

  const queuedId = (stdout: string) => Number(/^run (\d+) queued/.exec(stdout)?.[1]);

  it("run without --wait says how to follow; logs --follow streams to the end and exits 0 on done", async () => {
    const started = await runBin(["run", "hello"], { env });
    expect(started.code).toBe(0);
    const id = queuedId(started.stdout);
    expect(started.stdout).toContain(`follow it with: formula-runner logs ${id} --follow`);
    const followed = await runBin(["logs", String(id), "--follow"], { env });
    expect(followed.code).toBe(0);
    expect(followed.stdout).toContain("=== formula-runner: session 1 (initial) started");
    expect(followed.stdout).toContain("ended: exit code 0; phase done");
    expect(followed.stderr).toBe(`run ${id} done\n`);
    const plain = await runBin(["logs", String(id)], { env });
    expect(plain.stdout).toContain("phase done");
  });

  it("an escalation tells how to answer; reply from the CLI resumes the run to done", async () => {
    const waited = await runBin(["run", "ask", "--wait"], { env });
    expect(waited.code).toBe(1);
    const id = queuedId(waited.stdout);
    expect(waited.stdout).toContain(`run ${id} escalated`);
    expect(waited.stderr).toContain("Should I drop the legacy API?");
    expect(waited.stderr).toContain(`answer with: formula-runner reply ${id} --body "..."`);
    const empty = await runBin(["reply", String(id)], { env });
    expect(empty.code).toBe(1);
    expect(empty.stderr).toBe("formula-runner: no answer: pass --body TEXT or pipe the text on stdin\n");
    const replied = await runBin(["reply", String(id), "--body", "Yes, drop it."], { env });
    expect(replied.stderr).toBe("");
    expect(replied.code).toBe(0);
    expect(replied.stdout).toMatch(new RegExp(`^run ${id}: answer delivered, the agent resumes\\n`));
    expect((await t.waitForRun(id, ["done", "failed", "crashed"])).status).toBe("done");
  });

  it("cancel stops a running run", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "hang" });
    await t.waitForRun(body.id, ["running"]);
    const cancelled = await runBin(["cancel", String(body.id)], { env });
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout).toMatch(new RegExp(`^run ${body.id}( cancelled|: stopping)`));
    expect((await t.waitForRun(body.id, ["cancelled"])).status).toBe("cancelled");
  });

  it("formulas list shows where each formula fires; reload re-reads; deliveries list answers", async () => {
    const list = await runBin(["formulas", "list"], { env });
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^NAME\s+FIRES ON\s+TRIGGERS\s+DESCRIPTION\n/);
    expect(list.stdout).toMatch(/\nask\s+demo\s+dispatch\s+test formula ask/);
    const json = JSON.parse((await runBin(["formulas", "list", "--json"], { env })).stdout) as {
      formulas: { name: string }[];
    };
    expect(json.formulas.map((f) => f.name)).toEqual(["ask", "hang", "hello"]);
    const reload = await runBin(["formulas", "reload"], { env });
    expect(reload.code).toBe(0);
    expect(reload.stdout).toMatch(/^reloaded: 3 formula\(s\)\n/);
    const deliveries = await runBin(["deliveries", "list"], { env });
    expect(deliveries.code).toBe(0);
    expect(deliveries.stdout).toBe("No deliveries.\n");
  });
  it("every listing answers --json: one JSON document on stdout, nothing else", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "hello" });
    await t.waitForRun(body.id, ["done"]);
    const json = async (args: string[]) => {
      const result = await runBin([...args, "--json"], { env: { ...env, NO_COLOR: "" } });
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
      return JSON.parse(result.stdout);
    };
    const runs = await json(["runs", "list"]);
    expect(runs.runs).toContainEqual(expect.objectContaining({ id: body.id, status: "done", formula: "hello" }));
    expect(runs).toHaveProperty("next_cursor");
    const worktrees = await json(["worktrees", "list"]);
    expect(worktrees.worktrees).toContainEqual(expect.objectContaining({ run_id: body.id, state: "removed" }));
    expect(await json(["deliveries", "list"])).toEqual({ deliveries: [], next_cursor: null });
    expect((await json(["formulas", "list"])).formulas.map((f: { name: string }) => f.name)).toEqual([
      "ask",
      "hang",
      "hello",
    ]);
    expect(await json(["runs", "show", String(body.id)])).toMatchObject({ id: body.id, phases: expect.any(Array) });
    // Piped, the tables carry no colour codes (colours only on a terminal).
    const table = await runBin(["runs", "list"], { env });
    expect(table.stdout).toMatch(/\bdone\b/);
    expect(table.stdout).not.toContain("\x1b[");
  });
});

describe("formula-runner init", () => {
  let dir: string;
  let repo: TestRepo;
  beforeAll(async () => {
    dir = await makeTempDir("fr-init-");
    repo = await createTestRepo({ files: { "README.md": "x\n" } });
  });
  afterAll(async () => {
    await repo?.cleanup();
    await removeTempDir(dir);
  });

  it("writes a commented config that loads, listing no formulas; never overwrites without --force", async () => {
    const file = path.join(dir, "formula-runner.toml");
    const written = await runBin(["init", "--repo-path", repo.clone, "--repo", "acme/widgets"], { cwd: dir });
    expect(written.stderr).toBe("");
    expect(written.code).toBe(0);
    expect(written.stdout).toMatch(/^wrote .*formula-runner\.toml for project widgets \(github acme\/widgets/);
    const text = await readFile(file, "utf8");
    expect(text).toContain("# Formulas are opt-in");
    const config = await loadConfig({ FORMULA_RUNNER_CONFIG: file }, dir);
    expect(config.projects).toEqual([
      expect.objectContaining({
        name: "widgets",
        repoPath: repo.clone,
        repo: "acme/widgets",
        forge: "github",
        formulas: [],
        tokenEnv: "WIDGETS_FORGE_TOKEN",
      }),
    ]);
    const again = await runBin(["init", "--repo-path", repo.clone, "--repo", "acme/widgets"], { cwd: dir });
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`formula-runner: ${file} already exists; pass --force to overwrite it\n`);
    const forced = await runBin(
      ["init", "--repo-path", repo.clone, "--repo", "acme/widgets", "--formulas", "dev", "--force"],
      { cwd: dir },
    );
    expect(forced.code).toBe(0);
    expect((await loadConfig({ FORMULA_RUNNER_CONFIG: file }, dir)).projects[0]?.formulas).toEqual(["dev"]);
    await rm(file);
    const gitea = await runBin(["init", "--repo-path", repo.clone, "--repo", "acme/widgets", "--forge", "gitea"], {
      cwd: dir,
    });
    expect(gitea.code).toBe(1);
    expect(gitea.stderr).toMatch(/projects\[0\]\.forge_url: is required for gitea/);
  });
});
