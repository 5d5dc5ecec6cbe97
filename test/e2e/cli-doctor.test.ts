import { mkdir, writeFile } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { agentPath } from "../helpers/agents/index.js";
import { runBin } from "../helpers/cli.js";
import { type FakeForge, startFakeForge } from "../helpers/fake-forge.js";
import { createTestRepo, runGit, type TestRepo } from "../helpers/git.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/** Listens on a free loopback port with a server that is not formula-runner (a plain TCP listener). */
async function occupyPort(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.end("SSH-2.0-not-http\r\n");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const taken = await occupyPort();
  await taken.close();
  return taken.port;
}

/** `status  check: message` lines of the report, by check name. */
function lines(stdout: string): Map<string, string[]> {
  const byCheck = new Map<string, string[]>();
  for (const line of stdout.split("\n")) {
    const match = /^(ok|warn|FAIL)\s+(.+?): (.*)$/.exec(line);
    if (!match) continue;
    const [, status, check, message] = match as unknown as [string, string, string, string];
    byCheck.set(check, [...(byCheck.get(check) ?? []), `${status} ${message}`]);
  }
  return byCheck;
}

describe("formula-runner doctor (real git, a fake forge, real agents, a real port)", () => {
  let forge: FakeForge;
  let repo: TestRepo;
  let dir: string;
  let agentsToml: string;
  beforeAll(async () => {
    forge = await startFakeForge();
    forge.addToken("good-token", "runner-bot", ["repo", "read:org"]);
    forge.addToken("narrow-token", "reader", ["read:user"]);
    repo = await createTestRepo({ files: { "README.md": "# widgets\n" } });
    dir = await makeTempDir("fr-doctor-");
    // An origin that names the repository, as a real clone's does (a bare copy at .../acme/widgets.git).
    const named = path.join(repo.root, "acme", "widgets.git");
    await runGit(repo.root, "clone", "--quiet", "--bare", repo.origin, named);
    await runGit(repo.clone, "remote", "set-url", "origin", named);
    await mkdir(path.join(dir, "formulas"));
    await writeFile(path.join(dir, "formulas", "hello.toml"), testFormula("hello", { agent: "script" }));
    agentsToml = `[agents.script]\ncommand = ["bash", ${JSON.stringify(agentPath("phases"))}]\n`;
  });
  afterAll(async () => {
    await forge?.close();
    await repo?.cleanup();
    if (dir) await removeTempDir(dir);
  });

  const project = (fields: Record<string, string | string[]>) =>
    [
      "[[projects]]",
      ...Object.entries(fields).map(([key, value]) => `${key} = ${JSON.stringify(value)}`),
      `forge_url = ${JSON.stringify(forge.url)}`,
      "",
    ].join("\n");

  it("a good set-up: every check ok (the sandbox may only warn), exit 0", async () => {
    const setup = path.join(dir, "good");
    await mkdir(setup);
    await writeFile(
      path.join(setup, "formula-runner.toml"),
      project({
        name: "widgets",
        repo_path: repo.clone,
        repo: "acme/widgets",
        token_env: "WIDGETS_TOKEN",
        webhook_secret_env: "WIDGETS_SECRET",
        bot_login: "runner-bot",
        formulas: ["hello"],
      }) + agentsToml,
    );
    const postgresUrl = inject("postgresUrl");
    const port = await freePort();
    const result = await runBin(["doctor"], {
      cwd: setup,
      env: {
        FORMULAS_DIR: path.join(dir, "formulas"),
        DATA_DIR: path.join(setup, "data"),
        PORT: String(port),
        WIDGETS_TOKEN: "good-token",
        WIDGETS_SECRET: "s3cret",
        ...(postgresUrl ? { DATABASE_URL: postgresUrl } : {}),
      },
    });
    expect(result.stderr).toBe("");
    const checks = lines(result.stdout);
    expect(checks.get("config")).toEqual([expect.stringMatching(/^ok .*1 project\(s\): widgets$/)]);
    expect(checks.get("formulas")).toEqual([expect.stringMatching(/^ok 1 loaded from .*; fire on projects: hello$/)]);
    expect(checks.get("git")).toEqual([expect.stringMatching(/^ok git version \d/)]);
    expect(checks.get("clone (widgets)")).toEqual([`ok ${repo.clone} is a git clone; origin names acme/widgets`]);
    expect(checks.get("forge token (widgets)")).toEqual([
      "ok WIDGETS_TOKEN belongs to runner-bot, scopes: repo, read:org",
    ]);
    expect(checks.get("webhook secret (github)")).toEqual(["ok set for widgets (WIDGETS_SECRET)"]);
    expect(checks.get("agent (script)")).toEqual([expect.stringMatching(/^ok \/\S*bash \(GNU bash, version /)]);
    expect(checks.get("sandbox")?.[0]).toMatch(/^(ok|warn) /);
    expect(checks.get("database")).toEqual([
      postgresUrl
        ? expect.stringMatching(/^ok postgres at postgres:\/\/.* answers$/)
        : expect.stringMatching(/^ok embedded, not created yet: the first start creates it in .*pgdata/),
    ]);
    expect(checks.get("port")).toEqual([`ok 127.0.0.1:${port} is free`]);
    expect(result.stdout).toMatch(/\n\d+ ok, [01] warning\(s\), 0 failure\(s\)\n$/);
    expect(result.code).toBe(0);
    // The token went to the forge once (one API call), and never into the report.
    expect(forge.requests.filter((r) => r.headers.authorization === "token good-token")).toHaveLength(1);
    expect(result.stdout).not.toContain("good-token");
    expect(result.stdout).not.toContain("s3cret");
  });

  it("a broken set-up: a missing clone, a refused token, a narrow token, an unset secret, a missing agent, a taken port, no database -> FAIL lines with the fix, exit 1", async () => {
    const setup = path.join(dir, "broken");
    await mkdir(setup);
    const missing = path.join(setup, "no-such-clone");
    await writeFile(
      path.join(setup, "formula-runner.toml"),
      project({
        name: "gone",
        repo_path: missing,
        repo: "acme/gone",
        token_env: "GONE_TOKEN",
        webhook_secret_env: "GONE_SECRET",
        formulas: ["*"],
      }) +
        project({ name: "narrow", repo_path: repo.clone, repo: "acme/widgets", token_env: "NARROW_TOKEN" }) +
        '[agents.script]\ncommand = ["no-such-agent-program-xyz", "--flag"]\n',
    );
    const taken = await occupyPort();
    try {
      const result = await runBin(["doctor"], {
        cwd: setup,
        env: {
          FORMULAS_DIR: path.join(dir, "formulas"),
          DATA_DIR: path.join(setup, "data"),
          PORT: String(taken.port),
          GONE_TOKEN: "revoked-token",
          NARROW_TOKEN: "narrow-token",
          // Nothing listens on port 1: refused at once.
          DATABASE_URL: "postgres://postgres@127.0.0.1:1/nothing",
        },
      });
      const checks = lines(result.stdout);
      expect(checks.get("clone (gone)")).toEqual([
        `FAIL repo_path ${missing} does not exist; clone the repository there (git clone <url of acme/gone> ${missing}) or fix repo_path in the config file`,
      ]);
      expect(checks.get("forge token (gone)")).toEqual([
        `FAIL ${forge.url} refused the token in GONE_TOKEN (HTTP 401): it is wrong, expired or revoked; make a new one and export GONE_TOKEN again`,
      ]);
      expect(checks.get("clone (narrow)")?.[0]).toMatch(/^ok /);
      expect(checks.get("forge token (narrow)")).toEqual([
        'FAIL NARROW_TOKEN belongs to reader, scopes: read:user: it cannot comment or label; give it the "repo" scope',
      ]);
      expect(checks.get("webhook secret (github)")).toEqual([
        "FAIL GONE_SECRET (project gone) is not set: every webhook for it is refused (401); export it with the secret the forge's webhook uses",
      ]);
      expect(checks.get("agent (script)")).toEqual([
        'FAIL cannot start "no-such-agent-program-xyz": program not found on the PATH; install it (used by hello)',
      ]);
      expect(checks.get("port")).toEqual([
        `FAIL 127.0.0.1:${taken.port} is in use by another program; stop it or set PORT to a free port`,
      ]);
      expect(checks.get("database")?.[0]).toMatch(/^FAIL .*; is PostgreSQL running and DATABASE_URL right\?$/);
      expect(result.stdout).toMatch(/\n\d+ ok, \d+ warning\(s\), 7 failure\(s\)\n$/);
      expect(result.code).toBe(1);
      expect(result.stdout).not.toContain("revoked-token");

      const json = await runBin(["doctor", "--json"], {
        cwd: setup,
        env: { FORMULAS_DIR: path.join(dir, "formulas"), DATA_DIR: path.join(setup, "data"), PORT: String(taken.port) },
      });
      expect(json.code).toBe(1);
      const report = JSON.parse(json.stdout) as { ok: boolean; checks: { status: string; check: string }[] };
      expect(report.ok).toBe(false);
      expect(report.checks).toContainEqual(expect.objectContaining({ status: "FAIL", check: "forge token (gone)" }));
      expect(report.checks.find((c) => c.check === "forge token (gone)")).toMatchObject({
        message:
          "GONE_TOKEN is not set; export GONE_TOKEN=<a github token with write access to acme/gone> before starting the server",
      });
    } finally {
      await taken.close();
    }
  });

  it("an agent run with --dangerously-skip-permissions as root needs IS_SANDBOX=1 exactly (Claude Code refuses otherwise)", async () => {
    const setup = path.join(dir, "root");
    await mkdir(setup);
    await writeFile(
      path.join(setup, "formula-runner.toml"),
      project({ name: "widgets", repo_path: repo.clone, repo: "acme/widgets", formulas: ["hello"] }) +
        '[agents.script]\ncommand = ["bash", "-c", "exit 0", "--dangerously-skip-permissions"]\n',
    );
    const agentLine = async (isSandbox: string) => {
      const result = await runBin(["doctor", "--json"], {
        cwd: setup,
        env: { FORMULAS_DIR: path.join(dir, "formulas"), DATA_DIR: path.join(setup, "data"), IS_SANDBOX: isSandbox },
      });
      const report = JSON.parse(result.stdout) as { checks: { status: string; check: string; message: string }[] };
      return report.checks.find((c) => c.check === "agent (script)");
    };
    const asRoot = process.getuid?.() === 0;
    const yes = await agentLine("yes");
    if (asRoot) {
      expect(yes).toMatchObject({
        status: "FAIL",
        message: expect.stringMatching(
          /refuses --dangerously-skip-permissions .* IS_SANDBOX=1 \(IS_SANDBOX is "yes"\)/,
        ),
      });
    } else {
      expect(yes).toMatchObject({ status: "ok" });
    }
    expect(await agentLine("1")).toMatchObject({ status: "ok", message: expect.stringMatching(/bash \(GNU bash/) });
  });

  describe("while a formula-runner serves the port", () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer({ backend: "pglite", formulas: { hello: testFormula("hello") } });
    });
    afterAll(async () => {
      await t?.stop();
    });

    it("the port counts as ok: served by formula-runner", async () => {
      const port = new URL(t.url).port;
      const result = await runBin(["doctor", "--json"], {
        cwd: t.dir,
        env: { PORT: port, DATA_DIR: path.join(t.dir, "doctor-data") },
      });
      const report = JSON.parse(result.stdout) as { checks: { status: string; check: string; message: string }[] };
      expect(report.checks.find((c) => c.check === "port")).toEqual({
        status: "ok",
        check: "port",
        message: expect.stringMatching(
          new RegExp(`^127\\.0\\.0\\.1:${port} is served by formula-runner \\S+, instance `),
        ),
      });
    });
  });
});
