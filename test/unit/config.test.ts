import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ConfigError, DEFAULT_AGENTS, loadConfig, loadSettings, parseConfigFile } from "../../src/config.js";

const VALID = `
[[projects]]
name = "demo"
repo_path = "clones/demo"
repo = "acme/demo"
token_env = "DEMO_TOKEN"
webhook_secret_env = "DEMO_SECRET"
bot_login = "runner-bot"
escalation_issue = 1

[[projects]]
name = "tea"
repo_path = "/srv/tea"
primary_branch = "trunk"
forge = "gitea"
forge_url = "https://git.example.com/api/v1/"
repo = "acme/tea"

[agents.script]
command = ["bash", "agent.sh"]
`;

describe("loadSettings", () => {
  it("applies every default of the design", () => {
    const { settings, problems } = loadSettings({}, "/work");
    expect(problems).toEqual([]);
    expect(settings).toMatchObject({
      port: 8080,
      host: "127.0.0.1",
      dataDir: "/work/.formula-runner",
      configFile: "/work/formula-runner.toml",
      configFileExplicit: false,
      formulasDir: "/work/formulas",
      worktreeRoot: "/work/.formula-runner/worktrees",
      shutdownGraceMs: 30_000,
      maxSessions: 4,
      logLevel: "info",
    });
    expect(settings.databaseUrl).toBeUndefined();
    expect(settings.apiToken).toBeUndefined();
  });

  it("derives WORKTREE_ROOT from DATA_DIR and reads every variable", () => {
    const { settings, problems } = loadSettings(
      {
        DATA_DIR: "/var/lib/fr",
        PORT: "9000",
        HOST: "0.0.0.0",
        SHUTDOWN_GRACE: "45s",
        MAX_SESSIONS: "2",
        API_TOKEN: "tok-123456",
        DATABASE_URL: "postgres://u:p@db/fr",
      },
      "/x",
    );
    expect(problems).toEqual([]);
    expect(settings.worktreeRoot).toBe("/var/lib/fr/worktrees");
    expect(settings.port).toBe(9000);
    expect(settings.shutdownGraceMs).toBe(45_000);
    expect(settings.apiToken?.reveal()).toBe("tok-123456");
    expect(JSON.stringify(settings)).not.toContain("tok-123456");
    expect(JSON.stringify(settings)).not.toContain("u:p");
  });

  it("lists every bad variable at once", () => {
    const { problems } = loadSettings({
      PORT: "eighty",
      MAX_SESSIONS: "0",
      SHUTDOWN_GRACE: "soon",
      DATABASE_URL: "mysql://x",
    });
    expect(problems).toHaveLength(4);
    expect(problems.join("\n")).toMatch(/^environment: PORT: expected an integer/m);
    expect(problems.join("\n")).toMatch(/MAX_SESSIONS/);
    expect(problems.join("\n")).toMatch(/SHUTDOWN_GRACE: "soon" is not a duration: write a number and a unit/);
    expect(problems.join("\n")).toMatch(/DATABASE_URL: expected a postgres/);
  });

  it("reads durations in the one syntax formulas use, and says what a bare number lacks", () => {
    expect(loadSettings({ KILL_GRACE: "1.5s" }).settings.killGraceMs).toBe(1500);
    expect(loadSettings({ SHUTDOWN_GRACE: "30" }).problems).toEqual([
      'environment: SHUTDOWN_GRACE: "30" is not a duration: write a number and a unit, like 90s, 20m, 1.5h, 2d or 1h30m (a bare number has no unit: write 30s, 30m or 30h)',
    ]);
  });
});

describe("parseConfigFile", () => {
  it("reads projects and agents, resolving secrets from the environment by name", () => {
    const result = parseConfigFile("/etc/fr/formula-runner.toml", VALID, { DEMO_TOKEN: "ghp_secret_value" });
    expect(result.problems).toEqual([]);
    const [demo, tea] = result.projects;
    expect(demo).toMatchObject({
      name: "demo",
      repoPath: "/etc/fr/clones/demo",
      primaryBranch: "main",
      forge: "github",
      forgeUrl: "https://api.github.com",
      escalationIssue: 1,
    });
    expect(demo?.token?.reveal()).toBe("ghp_secret_value");
    expect(String(demo?.token)).toBe("[redacted]");
    expect(result.warnings).toEqual([
      "/etc/fr/formula-runner.toml: projects[0].webhook_secret_env: environment variable DEMO_SECRET is not set",
    ]);
    expect(tea).toMatchObject({ forge: "gitea", forgeUrl: "https://git.example.com/api/v1", primaryBranch: "trunk" });
    expect(result.agents.claude).toEqual(DEFAULT_AGENTS.claude);
    expect(result.agents.script?.command).toEqual(["bash", "agent.sh"]);
  });

  it("reports every problem as file: key: message with did-you-mean hints", () => {
    const source = `
[[projects]]
name = "Demo Project"
repo_path = "/srv/demo"
repo = "no-slash"
forge = "gitlab"
primary_brnch = "main"
escalation_issue = "one"

[[projects]]
name = "tea"
repo_path = "/srv/tea"
forge = "gitea"
repo = "a/b"

[agent.x]
command = []
`;
    const { problems } = parseConfigFile("fr.toml", source, {});
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^fr\.toml: projects\[0\]\.name: must be a slug/),
        expect.stringMatching(/^fr\.toml: projects\[0\]\.repo: must be "owner\/name"/),
        'fr.toml: projects[0].forge: expected one of github, gitea, forgejo; found string "gitlab"; did you mean `github`?',
        "fr.toml: projects[0].primary_brnch: unknown key `primary_brnch`; did you mean `primary_branch`?",
        'fr.toml: projects[0].escalation_issue: expected an integer, found string "one"',
        "fr.toml: agent: unknown key `agent`; did you mean `agents`?",
      ]),
    );
    expect(problems).toHaveLength(6);
  });

  it("rejects duplicate names and repositories, and gitea without forge_url", () => {
    const source = `
[[projects]]
name = "a"
repo_path = "/a"
repo = "acme/x"
[[projects]]
name = "a"
repo_path = "/b"
repo = "ACME/X"
[[projects]]
name = "c"
repo_path = "/c"
repo = "acme/c"
forge = "forgejo"
`;
    const { problems } = parseConfigFile("f.toml", source, {});
    expect(problems).toEqual([
      'f.toml: projects[1].name: "a" is already used by projects[0]',
      'f.toml: projects[1].repo: "ACME/X" is already configured by projects[0] (webhooks could not tell them apart)',
      "f.toml: projects[2].forge_url: is required for forgejo (like https://host/api/v1)",
    ]);
  });

  it("reports TOML syntax errors with their line", () => {
    const { problems } = parseConfigFile("f.toml", '[[projects]]\nname = "a"\nrepo = \n', {});
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^f\.toml:3: \(toml\): /);
  });
});

describe("agent profiles", () => {
  const agents = (table: string) => parseConfigFile("/etc/fr/formula-runner.toml", table, {});

  it("reads Claude Code's JSON lines and gives it the runner's settings by default, for the built-in profile and any `claude` command", () => {
    expect(DEFAULT_AGENTS.claude).toMatchObject({ output: "stream-json", claudeSettings: true });
    const result = agents(
      [
        "[agents.mine]",
        'command = ["/opt/bin/claude", "-p", "--output-format=stream-json", "--verbose"]',
        "[agents.plain]",
        'command = ["bash", "agent.sh"]',
      ].join("\n"),
    );
    expect(result.problems).toEqual([]);
    expect(result.agents.mine).toMatchObject({ output: "stream-json", claudeSettings: true });
    expect(result.agents.plain).toMatchObject({ output: "text", claudeSettings: false });
  });

  it("lets a profile say how its output is read and whether it gets the settings", () => {
    const result = agents(
      [
        "[agents.wrapped]",
        'command = ["bash", "-c", "claude \\"$@\\"", "x"]',
        'output = "stream-json"',
        "claude_settings = true",
      ].join("\n"),
    );
    expect(result.problems).toEqual([]);
    expect(result.agents.wrapped).toMatchObject({ output: "stream-json", claudeSettings: true });
    const bad = agents(["[agents.x]", 'command = ["x"]', 'output = "json"', 'claude_settings = "yes"'].join("\n"));
    expect(bad.problems).toHaveLength(2);
    expect(bad.problems.join("\n")).toContain("agents.x.output");
    expect(bad.problems.join("\n")).toContain("agents.x.claude_settings");
  });
});

describe("loadConfig", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fr-config-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("accepts a missing default config file: zero projects", async () => {
    const config = await loadConfig({}, dir);
    expect(config.configFileFound).toBe(false);
    expect(config.projects).toEqual([]);
    expect(Object.keys(config.agents)).toEqual(["claude"]);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("fails when FORMULA_RUNNER_CONFIG names a file that does not exist", async () => {
    await expect(loadConfig({ FORMULA_RUNNER_CONFIG: "missing.toml" }, dir)).rejects.toThrow(
      /missing\.toml: \(file\): file not found/,
    );
  });

  it("collects environment and file problems in one ConfigError", async () => {
    await writeFile(path.join(dir, "formula-runner.toml"), '[[projects]]\nname = "x"\n');
    const error = await loadConfig({ PORT: "-1" }, dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems[0]).toMatch(/^environment: PORT/);
    expect(problems.slice(1).join("\n")).toMatch(/projects\[0\]\.repo: required key is missing/);
  });

  it("asks for repo_path when a project has neither repo_path nor clone_url", async () => {
    await writeFile(path.join(dir, "formula-runner.toml"), '[[projects]]\nname = "x"\nrepo = "a/b"\n');
    const error = await loadConfig({}, dir).catch((e: unknown) => e);
    expect((error as ConfigError).problems).toEqual([
      `${path.join(dir, "formula-runner.toml")}: projects[0].repo_path: is required unless clone_url is given`,
    ]);
  });

  it("puts a clone_url project without repo_path under $DATA_DIR/clones", async () => {
    await writeFile(
      path.join(dir, "formula-runner.toml"),
      '[[projects]]\nname = "x"\nrepo = "a/b"\nclone_url = "https://git.example.com/a/b.git"\n',
    );
    const config = await loadConfig({ DATA_DIR: "/var/lib/fr" }, dir);
    expect(config.projects[0]?.repoPath).toBe("/var/lib/fr/clones/x");
    expect(config.projects[0]?.cloneUrl).toBe("https://git.example.com/a/b.git");
  });

  it("refuses a clone_url that is no URL git can clone from", async () => {
    await writeFile(
      path.join(dir, "formula-runner.toml"),
      '[[projects]]\nname = "x"\nrepo = "a/b"\nclone_url = "--upload-pack=touch /tmp/x"\n',
    );
    await expect(loadConfig({}, dir)).rejects.toThrow(/projects\[0\]\.clone_url: must be an https:\/\//);
  });

  it("configures one project from PROJECT_* variables when no file exists", async () => {
    const config = await loadConfig(
      {
        DATA_DIR: "/data",
        PROJECT_NAME: "demo",
        PROJECT_REPO: "acme/demo",
        PROJECT_CLONE_URL: "https://github.com/acme/demo.git",
        PROJECT_FORGE: "github",
        PROJECT_TOKEN_ENV: "FORGE_TOKEN",
        PROJECT_WEBHOOK_SECRET_ENV: "WEBHOOK_SECRET",
        PROJECT_ESCALATION_ISSUE: "7",
        PROJECT_BOT_LOGIN: "bot",
        FORGE_TOKEN: "ghp_x",
      },
      dir,
    );
    expect(config.configFileFound).toBe(false);
    expect(config.projects).toHaveLength(1);
    const project = config.projects[0];
    expect(project).toMatchObject({
      name: "demo",
      repo: "acme/demo",
      repoPath: "/data/clones/demo",
      cloneUrl: "https://github.com/acme/demo.git",
      primaryBranch: "main",
      escalationIssue: 7,
      botLogin: "bot",
      tokenEnv: "FORGE_TOKEN",
    });
    expect(project?.token?.reveal()).toBe("ghp_x");
    expect(config.warnings).toEqual([
      "environment: PROJECT_WEBHOOK_SECRET_ENV: environment variable WEBHOOK_SECRET is not set",
    ]);
  });

  it("names the PROJECT_* variable that is wrong, and a clash with the file's projects", async () => {
    await writeFile(path.join(dir, "formula-runner.toml"), VALID);
    const error = await loadConfig(
      {
        PROJECT_NAME: "demo",
        PROJECT_REPO: "acme/other",
        PROJECT_REPO_PATH: "/srv/x",
        PROJECT_ESCALATION_ISSUE: "one",
      },
      dir,
    ).catch((e: unknown) => e);
    expect((error as ConfigError).problems.join("\n")).toMatch(/^environment: PROJECT_ESCALATION_ISSUE: /m);
    const clash = await loadConfig(
      { PROJECT_NAME: "demo", PROJECT_REPO: "acme/other", PROJECT_REPO_PATH: "/srv/x" },
      dir,
    ).catch((e: unknown) => e);
    expect((clash as ConfigError).problems).toEqual([
      'environment: PROJECT_NAME: "demo" is already used by projects[0]',
    ]);
  });

  it("loads a valid file relative to the working directory", async () => {
    await writeFile(path.join(dir, "formula-runner.toml"), VALID);
    const config = await loadConfig({}, dir);
    expect(config.projects.map((p) => p.name)).toEqual(["demo", "tea"]);
    expect(config.projects[0]?.repoPath).toBe(path.join(dir, "clones/demo"));
    expect(config.warnings).toHaveLength(2);
  });
});
