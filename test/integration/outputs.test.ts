import { mkdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { asc, eq } from "drizzle-orm";
import { execa } from "execa";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type Output, outbox, outputs, runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { ForgeClient } from "../../src/forge/forge-client.js";
import { OutboxWorker } from "../../src/forge/outbox.js";
import { parseFormula } from "../../src/formulas/load.js";
import type { Formula } from "../../src/formulas/schema.js";
import { createLogger } from "../../src/logger.js";
import { OutputsService, outputBranch, outputMarker } from "../../src/outputs/outputs-service.js";
import { makeRunDirs, type RunPaths, runPaths } from "../../src/runs/run-paths.js";
import { Secret, SecretRegistry } from "../../src/secrets.js";
import { oneBackend, openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { type FakeForge, type Flavor, startFakeForge } from "../helpers/fake-forge.js";
import { createTestRepo, runGit, type TestRepo } from "../helpers/git.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const REPO = "acme/widgets";
const TOKEN = "fr-outputs-forge-token-51f0a2";
/** A secret the server knows (an API token, say) that an agent read and tries to publish. */
const PLANTED = "planted-server-secret-93c1d7e";
/** A credential the server never knew, found by the agent in some file. */
const FOUND_TOKEN = "ghp_R2d2C3poBb8Yoda4Luke5Leia6Han7Solo";

/** git for the server and the agent: no machine config, no inherited GIT_* variables. */
const GIT_ENV: Record<string, string> = {
  PATH: process.env.PATH ?? "/usr/bin:/bin",
  HOME: process.env.HOME ?? "/tmp",
  GIT_CONFIG_NOSYSTEM: "1",
  GIT_CONFIG_GLOBAL: "/dev/null",
};

let forge: FakeForge;

beforeAll(async () => {
  forge = await startFakeForge();
  forge.addToken(TOKEN, "runner-bot");
});

afterAll(async () => {
  await forge.close();
});

function formulaWith(outputsToml: string): Formula {
  const text = [
    'name = "fix"',
    'description = "A test formula"',
    "[on]",
    "dispatch = true",
    outputsToml,
    "[[steps]]",
    'id = "only"',
    'title = "Do it"',
    'description = "Do the thing."',
  ].join("\n");
  const { formula, problems } = parseFormula("fix.toml", text);
  if (!formula) throw new Error(JSON.stringify(problems));
  return formula;
}

describe.each(oneBackend())("safe outputs on %s", (backend) => {
  let t: TestDatabase;
  let repo: TestRepo;
  let dataDir: string;
  let secrets: SecretRegistry;
  let workers: OutboxWorker[];

  beforeEach(async () => {
    t = await openTestDatabase(backend);
    repo = await createTestRepo();
    dataDir = await makeTempDir("fr-outputs-data-");
    secrets = new SecretRegistry();
    secrets.add(TOKEN);
    secrets.add(PLANTED);
    workers = [];
    forge.reset();
  });

  afterEach(async () => {
    for (const worker of workers) await worker.stop();
    await t.cleanup();
    await repo.cleanup();
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  const silent = () => createLogger({ level: "silent", secrets, destination: { write: () => {} } });

  function project(flavor: Flavor = "github"): ProjectConfig {
    return {
      name: "widgets",
      repoPath: repo.clone,
      primaryBranch: "main",
      forge: flavor === "github" ? "github" : "gitea",
      forgeUrl: flavor === "github" ? forge.url : forge.giteaUrl,
      repo: REPO,
      tokenEnv: "FORGE_TOKEN",
      token: new Secret(TOKEN),
      webhookSecretEnv: undefined,
      webhookSecret: undefined,
      botLogin: "runner-bot",
      escalationIssue: undefined,
    };
  }

  /** A fresh service and outbox worker, as after a restart of the server. */
  function start(formula: Formula, flavor: Flavor = "github") {
    const projects = [project(flavor)];
    const log = silent();
    const worker = new OutboxWorker({
      database: t.database,
      projects,
      clientFor: (p) => new ForgeClient(p, { timeoutMs: 5_000 }),
      renderStatus: async () => undefined,
      secrets,
      log,
      random: () => 0.5,
    });
    workers.push(worker);
    const service = new OutputsService({
      database: t.database,
      secrets,
      log,
      env: GIT_ENV,
      onOutbox: () => {},
      config: { projects, settings: { dataDir } as never },
      formulas: { get: (name) => (name === formula.name ? formula : undefined) },
    });
    return { service, worker, project: projects[0] as ProjectConfig };
  }

  interface TestRun {
    id: number;
    issue: number | null;
    paths: RunPaths;
    worktree: string;
  }

  /**
   * A running run with its worktree and own object store, set up the way the executor
   * does: the agent's objects go to the run's store, which borrows the clone's.
   */
  async function startRun(issue: number | null): Promise<TestRun> {
    const [run] = await t.database.db
      .insert(runs)
      .values({
        formula: "fix",
        project: "widgets",
        triggerKind: "dispatch",
        triggerRef: "test",
        issue,
        status: "running",
      })
      .returning({ id: runs.id });
    const id = run!.id;
    const paths = runPaths(dataDir, id);
    await makeRunDirs(paths);
    await writeFile(path.join(paths.objectsDir, "info", "alternates"), `${path.join(repo.clone, ".git", "objects")}\n`);
    const worktree = path.join(dataDir, "worktrees", `fix-${id}`);
    await runGit(repo.clone, "worktree", "add", "--quiet", "--detach", worktree, "origin/main");
    await t.database.db.insert(worktrees).values({
      runId: id,
      project: "widgets",
      formula: "fix",
      path: worktree,
      state: "active",
      instanceId: "test-instance",
    });
    return { id, issue, paths, worktree };
  }

  /** The agent commits in its worktree; the objects land in the run's store only. */
  async function agentCommit(run: TestRun, file: string, content: string): Promise<string> {
    await writeFile(path.join(run.worktree, file), content);
    const env = {
      ...GIT_ENV,
      GIT_OBJECT_DIRECTORY: run.paths.objectsDir,
      GIT_AUTHOR_NAME: "agent",
      GIT_AUTHOR_EMAIL: "agent@example.invalid",
      GIT_COMMITTER_NAME: "agent",
      GIT_COMMITTER_EMAIL: "agent@example.invalid",
    };
    const git = (...args: string[]) =>
      execa("git", ["-C", run.worktree, ...args], { env, extendEnv: false, stdin: "ignore" });
    await git("add", file);
    await git("commit", "--quiet", "-m", `agent: ${file}`);
    return (await git("rev-parse", "HEAD")).stdout.trim();
  }

  async function writeLines(run: TestRun, ...lines: string[]): Promise<void> {
    await mkdir(path.dirname(run.paths.outputsFile), { recursive: true });
    await writeFile(run.paths.outputsFile, lines.join(""), { flag: "a" });
  }
  const line = (value: object) => `${JSON.stringify(value)}\n`;

  const collect = (service: OutputsService, run: TestRun) => service.collectForRun(run.id);

  async function drainAll(worker: OutboxWorker): Promise<void> {
    for (let pass = 0; pass < 50; pass++) if ((await worker.drainOnce()) === 0) return;
    throw new Error("the outbox never ran dry");
  }

  const outputRows = (runId: number): Promise<Output[]> =>
    t.database.db.select().from(outputs).where(eq(outputs.runId, runId)).orderBy(asc(outputs.seq));

  /** Makes a sent outbox row due again, as if the sender died before recording it. */
  async function forgetSent(outboxId: number): Promise<void> {
    await t.database.db
      .update(outbox)
      .set({ state: "pending", nextAttemptAt: new Date(0), sentAt: null })
      .where(eq(outbox.id, outboxId));
    await t.database.db.update(outputs).set({ status: "queued" }).where(eq(outputs.outboxId, outboxId));
  }

  it("posts a comment scrubbed of known secrets and credential-looking text, once", async () => {
    const { service, worker } = start(formulaWith(""));
    const run = await startRun(7);
    const body = `Done. The token is ${PLANTED}; also found ${FOUND_TOKEN} and Bearer abc.def.ghi.jkl`;
    // The second line is still being written: no newline yet.
    await writeLines(run, line({ type: "comment", body }), '{"type":"comment","bo');

    const first = await collect(service, run);
    expect(first).toEqual([{ seq: 1, type: "comment", status: "queued", reason: null }]);
    await drainAll(worker);

    const comments = forge.issue(REPO, 7).comments;
    expect(comments).toHaveLength(1);
    const posted = comments[0]!.body;
    expect(posted).toContain("Done. The token is [redacted]; also found [redacted] and Bearer [redacted]");
    expect(posted).not.toContain(PLANTED);
    expect(posted).not.toContain(FOUND_TOKEN);
    expect(JSON.stringify(await outputRows(run.id))).not.toContain(PLANTED);

    // The agent finishes its line; a second collect decides only it, the first is not sent again.
    await writeLines(run, 'dy":"second"}\n');
    expect(await collect(service, run)).toEqual([{ seq: 2, type: "comment", status: "queued", reason: null }]);
    expect(await collect(service, run)).toEqual([]);
    await drainAll(worker);
    expect(forge.issue(REPO, 7).comments.map((c) => c.body.split("\n")[0])).toEqual([
      "Done. The token is [redacted]; also found [redacted] and Bearer [redacted]",
      "second",
    ]);
    expect((await outputRows(run.id)).map((r) => r.status)).toEqual(["sent", "sent"]);
  });

  it("refuses and records what the formula does not allow, and sends nothing for it", async () => {
    const { service, worker } = start(formulaWith('[outputs]\nlabels = ["triaged"]\nmax = 2'));
    const run = await startRun(9);
    await writeLines(
      run,
      line({ type: "issue", title: "Exfiltrate", body: "x" }),
      line({ type: "label", add: ["triaged"], remove: ["admin-approved"] }),
      line({ type: "pull_request", title: "Push to main", body: "x" }),
      "this is not json\n",
      "\n",
      line({ type: "merge", ref: "main" }),
      line({ type: "label", add: ["triaged"] }),
      line({ type: "comment", body: "one" }),
      line({ type: "comment", body: "two, over max" }),
    );
    const decided = await collect(service, run);
    expect(decided).toEqual([
      { seq: 1, type: "issue", status: "refused", reason: expect.stringMatching(/does not allow opening issues/) },
      { seq: 2, type: "label", status: "refused", reason: expect.stringMatching(/not allowed .*: admin-approved/) },
      { seq: 3, type: "pull_request", status: "refused", reason: expect.stringMatching(/does not allow pull/) },
      { seq: 4, type: "(none)", status: "refused", reason: "not valid JSON" },
      { seq: 6, type: "merge", status: "refused", reason: expect.stringMatching(/unknown type "merge"/) },
      { seq: 7, type: "label", status: "queued", reason: null },
      { seq: 8, type: "comment", status: "queued", reason: null },
      { seq: 9, type: "comment", status: "refused", reason: expect.stringMatching(/allows 2 output/) },
    ]);
    await drainAll(worker);
    expect(forge.issue(REPO, 9).labels.map((l) => l.name)).toEqual(["triaged"]);
    expect(forge.issue(REPO, 9).comments.map((c) => c.body.split("\n")[0])).toEqual(["one"]);
    expect(forge.openedIssues(REPO)).toEqual([]);
    expect(forge.pullRequests(REPO)).toEqual([]);
    expect(await t.database.db.select().from(outbox)).toHaveLength(2);
    // Recorded for good: a restarted server decides nothing again.
    const { service: restarted } = start(formulaWith('[outputs]\nlabels = ["triaged"]\nmax = 2'));
    expect(await collect(restarted, run)).toEqual([]);
    expect(await outputRows(run.id)).toHaveLength(8);
  });

  describe.each(["github", "gitea"] as const)("against the %s flavour", (flavor) => {
    it("pushes the agent's commits and opens exactly one pull request across a restart", async () => {
      const formula = formulaWith("[outputs]\npull_request = { draft = true }");
      const first = start(formula, flavor);
      const run = await startRun(null);
      const sha = await agentCommit(run, "fix.txt", "fixed\n");
      // The commit is in the run's own object store, not in the shared clone.
      await expect(runGit(repo.clone, "cat-file", "-e", sha)).rejects.toThrow();

      await writeLines(run, line({ type: "pull_request", title: "Fix it", body: `Fixes it. ${PLANTED}` }));
      expect(await collect(first.service, run)).toEqual([
        { seq: 1, type: "pull_request", status: "queued", reason: null },
      ]);
      expect(await runGit(repo.origin, "rev-parse", `refs/heads/${outputBranch(run.id)}`)).toBe(sha);

      // Restart before the outbox sent it: the line is not decided (or pushed) again.
      await first.worker.stop();
      const second = start(formula, flavor);
      expect(await collect(second.service, run)).toEqual([]);
      await drainAll(second.worker);
      const pulls = forge.pullRequests(REPO);
      expect(pulls).toHaveLength(1);
      expect(pulls[0]).toMatchObject({
        head: { ref: outputBranch(run.id) },
        base: { ref: "main" },
        title: flavor === "github" ? "Fix it" : "WIP: Fix it",
        draft: flavor === "github",
        body: "Fixes it. [redacted]",
      });

      // The sender dies after the forge opened it, before it was recorded: the retry finds it.
      const [row] = await outputRows(run.id);
      expect(row?.status).toBe("sent");
      await forgetSent(row!.outboxId!);
      const third = start(formula, flavor);
      await drainAll(third.worker);
      const creates = forge.requests.filter((r) => r.method === "POST" && r.path === `/repos/${REPO}/pulls`);
      expect(creates).toHaveLength(1);
      expect(
        forge.requests.filter((r) => r.method === "PATCH" && r.path.startsWith(`/repos/${REPO}/pulls/`)),
      ).toHaveLength(1);
      expect(forge.pullRequests(REPO)).toHaveLength(1);
      expect((await outputRows(run.id))[0]?.status).toBe("sent");
    });

    it("opens an issue once, found again by its marker after a lost answer", async () => {
      const formula = formulaWith("[outputs]\nissues = true");
      const { service, worker } = start(formula, flavor);
      const run = await startRun(null);
      await writeLines(run, line({ type: "issue", title: `Follow-up ${PLANTED}`, body: "Investigate the flake." }));
      expect(await collect(service, run)).toMatchObject([{ seq: 1, status: "queued" }]);
      await drainAll(worker);
      const [row] = await outputRows(run.id);
      await forgetSent(row!.outboxId!);
      await drainAll(start(formula, flavor).worker);

      const opened = forge.openedIssues(REPO);
      expect(opened).toHaveLength(1);
      expect(opened[0]?.title).toBe("Follow-up [redacted]");
      expect(opened[0]?.body).toBe(`Investigate the flake.\n\n${outputMarker(run.id, 1)}`);
      expect(forge.requests.filter((r) => r.method === "POST" && r.path === `/repos/${REPO}/issues`)).toHaveLength(1);
      expect((await outputRows(run.id))[0]?.status).toBe("sent");
    });

    it("adds and removes allowed labels", async () => {
      const formula = formulaWith('[outputs]\nlabels = ["triaged", "needs-info"]');
      const { service, worker } = start(formula, flavor);
      const run = await startRun(4);
      forge.addLabel(REPO, "needs-info");
      await writeLines(run, line({ type: "label", add: ["needs-info"] }));
      await collect(service, run);
      await drainAll(worker);
      expect(forge.issue(REPO, 4).labels.map((l) => l.name)).toEqual(["needs-info"]);
      await writeLines(run, line({ type: "label", add: ["triaged"], remove: ["needs-info"] }));
      await collect(service, run);
      await drainAll(worker);
      expect(forge.issue(REPO, 4).labels.map((l) => l.name)).toEqual(["triaged"]);
    });
  });

  it("refuses a pull request without new commits, and one whose object store links elsewhere", async () => {
    const formula = formulaWith("[outputs]\npull_request = {}");
    const { service } = start(formula);
    const run = await startRun(null);
    await writeLines(run, line({ type: "pull_request", title: "Nothing", body: "x" }));
    expect(await collect(service, run)).toEqual([
      { seq: 1, type: "pull_request", status: "refused", reason: expect.stringMatching(/no commits to propose/) },
    ]);

    const other = await startRun(null);
    await agentCommit(other, "a.txt", "a\n");
    // A link in the run's store could hand the server's push another repository's objects.
    await symlink(path.join(repo.origin, "objects"), path.join(other.paths.objectsDir, "borrowed"));
    await writeLines(other, line({ type: "pull_request", title: "Sneaky", body: "x" }));
    expect(await collect(service, other)).toEqual([
      { seq: 1, type: "pull_request", status: "refused", reason: expect.stringMatching(/links or borrows/) },
    ]);
    await expect(
      runGit(repo.origin, "rev-parse", "--verify", `refs/heads/${outputBranch(other.id)}`),
    ).rejects.toThrow();
  });

  it("never follows a link planted as the outputs file", async () => {
    const { service } = start(formulaWith(""));
    const run = await startRun(7);
    const elsewhere = path.join(dataDir, "elsewhere.jsonl");
    await writeFile(elsewhere, line({ type: "comment", body: "from another file" }));
    await symlink(elsewhere, run.paths.outputsFile);
    await expect(collect(service, run)).rejects.toThrow(/symbolic link/);
    expect(await outputRows(run.id)).toEqual([]);
  });

  it("decides each line once when two collects race", async () => {
    const formula = formulaWith("");
    const a = start(formula);
    const b = start(formula);
    const run = await startRun(3);
    await writeLines(run, ...Array.from({ length: 6 }, (_, i) => line({ type: "comment", body: `c${i}` })));
    const [x, y] = await Promise.all([collect(a.service, run), collect(b.service, run)]);
    expect([...x, ...y].map((d) => d.seq).sort()).toEqual([1, 2, 3, 4, 5, 6]);
    const rows = await outputRows(run.id);
    expect(rows.map((r) => r.status)).toEqual(["queued", "queued", "queued", "queued", "queued", "refused"]);
    expect(await t.database.db.select().from(outbox)).toHaveLength(5);
  });
});
