import { existsSync } from "node:fs";
import { chmod, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { runs, worktrees } from "../../db/schema/index.js";
import type { ProjectConfig } from "../../src/config.js";
import { silentLogger } from "../../src/logger.js";
import { Secret } from "../../src/secrets.js";
import { ensureClone, gitCredentials } from "../../src/worktrees/managed-clone.js";
import { WorktreeError, WorktreeManager } from "../../src/worktrees/worktree-manager.js";
import { openTestDatabase, type TestDatabase } from "../helpers/db.js";
import { createTestRepo, runGit, type TestRepo } from "../helpers/git.js";
import { type GitHttpServer, startGitHttpServer } from "../helpers/git-http-server.js";
import { cleanupTempDirs, makeTempDir, pendingTempDirs } from "../helpers/tmp.js";

const TOKEN = "ghp_fakeForgeToken0123456789abcdef";

/** Every file under `dir` whose bytes contain `needle`. */
async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = join(entry.parentPath, entry.name);
    if ((await readFile(file)).includes(needle)) found.push(file);
  }
  return found;
}

describe("clones managed by the server (clone_url)", () => {
  let repo: TestRepo;
  let forge: GitHttpServer;
  let dataDir: string;
  let home: string;
  let argvLog: string;
  let env: Record<string, string | undefined>;

  const project = (overrides: Partial<ProjectConfig> = {}): ProjectConfig => ({
    name: "demo",
    repoPath: join(dataDir, "clones", "demo"),
    cloneUrl: `${forge.url}/origin.git`,
    primaryBranch: repo.branch,
    forge: "gitea",
    forgeUrl: `${forge.url}/api/v1`,
    repo: "owner/demo",
    tokenEnv: "FORGE_TOKEN",
    token: new Secret(TOKEN),
    webhookSecretEnv: undefined,
    webhookSecret: undefined,
    botLogin: undefined,
    escalationIssue: undefined,
    ...overrides,
  });

  beforeEach(async () => {
    repo = await createTestRepo({ files: { "README.md": "# managed\n" } });
    forge = await startGitHttpServer({ projectRoot: repo.root, username: "x-access-token", password: TOKEN });
    dataDir = await makeTempDir("fr-managed-");
    home = await makeTempDir("fr-home-");
    // A user config with a credential store: the token must never reach it.
    await writeFile(join(home, ".gitconfig"), "[credential]\n\thelper = store\n");
    // git on PATH is a shim that records its arguments, to prove the token is never one of them.
    const bin = await makeTempDir("fr-gitshim-");
    argvLog = join(bin, "argv.log");
    await writeFile(join(bin, "git"), `#!/bin/sh\nprintf '%s\\n' "$*" >> '${argvLog}'\nexec /usr/bin/git "$@"\n`);
    await chmod(join(bin, "git"), 0o755);
    env = {
      ...process.env,
      PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      HOME: home,
      GIT_CONFIG_GLOBAL: join(home, ".gitconfig"),
      GIT_CONFIG_NOSYSTEM: "1",
    };
  });
  afterEach(async () => {
    await forge.close();
    await repo.cleanup();
    await cleanupTempDirs();
    expect(pendingTempDirs()).toEqual([]);
  });

  it("clones a missing repo_path with the token given through a credential helper, and stores it nowhere", async () => {
    const outcome = await ensureClone(project(), { env, log: silentLogger() });
    expect(outcome).toBe("cloned");
    const clone = join(dataDir, "clones", "demo");
    expect(await readFile(join(clone, "README.md"), "utf8")).toBe("# managed\n");
    expect(await runGit(clone, "rev-parse", "HEAD")).toBe(await repo.head());
    expect(await runGit(clone, "remote", "get-url", "origin")).toBe(`${forge.url}/origin.git`);
    // The forge saw the token (the clone needed it) ...
    expect(forge.authorizations).toContain(`Basic ${Buffer.from(`x-access-token:${TOKEN}`).toString("base64")}`);
    // ... and it is in no file of the clone, no credential store, no git argument list.
    expect(await filesContaining(clone, TOKEN)).toEqual([]);
    expect(await filesContaining(home, TOKEN)).toEqual([]);
    expect(existsSync(join(home, ".git-credentials"))).toBe(false);
    const argv = await readFile(argvLog, "utf8");
    expect(argv).toContain(" clone ");
    expect(argv).not.toContain(TOKEN);
    // Nothing is left beside the clone but the lock file's absence.
    expect((await readdir(join(dataDir, "clones"))).sort()).toEqual(["demo"]);

    expect(await ensureClone(project(), { env, log: silentLogger() })).toBe("present");
  });

  it("fails with git's words on a wrong token and leaves no half-made clone", async () => {
    const error = await ensureClone(project({ token: new Secret("wrong-token") }), { env, log: silentLogger() }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(WorktreeError);
    expect((error as WorktreeError).message).toMatch(/could not clone demo/);
    expect((error as WorktreeError).gitMessage).toMatch(/Authentication failed|could not read Username|401/);
    expect((error as WorktreeError).message).not.toContain("wrong-token");
    expect(await readdir(join(dataDir, "clones"))).toEqual([]);
  });

  it("lets three concurrent callers share one clone", async () => {
    const outcomes = await Promise.all([1, 2, 3].map(() => ensureClone(project(), { env, log: silentLogger() })));
    expect(outcomes.sort()).toEqual(["cloned", "present", "present"]);
    expect((await readdir(join(dataDir, "clones"))).sort()).toEqual(["demo"]);
  });

  it("gives no credentials for ssh or local URLs, or without a token", () => {
    expect(gitCredentials({ cloneUrl: "git@github.com:a/b.git", token: new Secret(TOKEN) }).args).toEqual([]);
    expect(gitCredentials({ cloneUrl: "/srv/git/b.git", token: new Secret(TOKEN) }).args).toEqual([]);
    expect(gitCredentials({ cloneUrl: "https://github.com/a/b.git", token: undefined }).args).toEqual([]);
    const https = gitCredentials({ cloneUrl: "https://github.com/a/b.git", token: new Secret(TOKEN) });
    expect(https.args.join(" ")).toContain("credential.https://github.com.helper=");
    expect(https.args.join(" ")).not.toContain(TOKEN);
  });

  describe("worktrees from a managed clone", () => {
    let t: TestDatabase;
    beforeAll(async () => {
      t = await openTestDatabase("pglite");
    });
    afterAll(async () => {
      await t.cleanup();
    });

    it("clones on the first run and fetches with the token before each run", { timeout: 120_000 }, async () => {
      await t.database.db.delete(worktrees);
      await t.database.db.delete(runs);
      const manager = new WorktreeManager({
        env,
        database: t.database,
        root: join(dataDir, "worktrees"),
        instanceId: "inst-a",
        log: silentLogger(),
      });
      const insertRun = async () => {
        const [run] = await t.database.db
          .insert(runs)
          .values({ formula: "dev", project: "demo", triggerKind: "dispatch", triggerRef: "test", status: "running" })
          .returning({ id: runs.id });
        return (run as { id: number }).id;
      };
      const first = await manager.create({ runId: await insertRun(), project: project(), formula: "dev" });
      expect(await runGit(first.path, "rev-parse", "HEAD")).toBe(await repo.head());

      const pushed = await repo.push({ "NEW.md": "after the clone\n" }, "a commit made after the clone");
      const second = await manager.create({ runId: await insertRun(), project: project(), formula: "dev" });
      expect(await runGit(second.path, "rev-parse", "HEAD")).toBe(pushed);
      expect(await readFile(join(second.path, "NEW.md"), "utf8")).toBe("after the clone\n");

      const clone = join(dataDir, "clones", "demo");
      expect(await filesContaining(clone, TOKEN)).toEqual([]);
      expect(await readFile(argvLog, "utf8")).not.toContain(TOKEN);
      expect(existsSync(join(home, ".git-credentials"))).toBe(false);
      await manager.remove(first, "success");
      await manager.remove(second, "success");
    });
  });
});
