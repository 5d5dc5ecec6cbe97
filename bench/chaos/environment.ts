/**
 * Everything a chaos run stands on: a fresh PostgreSQL schema reached through the run's
 * own TCP proxy (never the shared server's settings), a fake forge, a test repository, a
 * sentinel tree outside WORKTREE_ROOT, and a real `formula-runner serve` process.
 */
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import postgres from "postgres";
import { agentPath } from "../../test/helpers/agents/index.js";
import { type ServerProcess, startServerProcess } from "../../test/helpers/cli.js";
import { type FakeForge, startFakeForge } from "../../test/helpers/fake-forge.js";
import { createTestRepo, type TestRepo } from "../../test/helpers/git.js";
import { startTcpProxy, type TcpProxy } from "../../test/helpers/tcp-proxy.js";
import { makeTempDir, removeTempDir } from "../../test/helpers/tmp.js";
import { makeOutsideTree } from "./sentinel.js";

export const API_TOKEN = "chaos-api-token-0123456789abcdef";
export const WEBHOOK_SECRET = "chaos-webhook-secret-0123456789";
const FORGE_TOKEN = "chaos-forge-token-abcdef";
/** The sender of valid deliveries; has write access on the fake forge. */
export const SENDER = "alice";
export const REPO = "acme/demo";
export const FIRE_LABEL = "chaos";

export interface ChaosEnvironment {
  dir: string;
  worktreeRoot: string;
  dataDir: string;
  outside: string;
  gitRedirect: string;
  forge: FakeForge;
  repo: TestRepo;
  /** Undefined on PGlite (no PostgreSQL in this run): then nothing cuts the database. */
  proxy: TcpProxy | undefined;
  /** Direct (not proxied) access to the run's schema, for the final count; undefined on PGlite. */
  sql: postgres.Sql | undefined;
  server: ServerProcess;
  backend: "postgres" | "pglite";
  close(): Promise<void>;
}

const formula = (name: string, agent: string, extra: string[]) =>
  [
    `name = "${name}"`,
    `description = "chaos formula ${name}"`,
    `agent = "${agent}"`,
    'timeout = "60s"',
    'max_duration = "120s"',
    ...extra,
    "[[steps]]",
    'id = "work"',
    'title = "Work"',
    'description = "Do the work, then write PHASE:done."',
    "",
  ].join("\n");

/**
 * `work`: dispatched, a bash agent that writes its phases and ends done; runs of one issue
 * take turns (a concurrency key a stuck run would hold forever). `fire`: fired by an
 * `issues` delivery labelled `chaos`. `crashy` (project `victim`): crashes twice, so its
 * worktree is preserved for the purges. The sandbox is off: its ~100 ms per session start
 * is not what this run measures, and the machine has two cores.
 */
const FORMULAS: Record<string, string> = {
  work: formula("work", "done", [
    '[on]\ndispatch = true\n[guards]\nconcurrency = "{formula}-{issue}"\non_busy = "queue"\n[sandbox]\nmode = "off"',
  ]),
  fire: formula("fire", "done", [
    `[on]\ndispatch = false\n[on.issues]\ntypes = ["labeled"]\nlabels = ["${FIRE_LABEL}"]\n[guards]\nconcurrency = ""\n[sandbox]\nmode = "off"`,
  ]),
  crashy: formula("crashy", "crash", [
    'retention = "1h"\n[on]\ndispatch = true\n[guards]\nconcurrency = ""\n[sandbox]\nmode = "off"',
  ]),
};

export async function setUpChaos(options: {
  postgresUrl: string | undefined;
  maxSessions: number;
  log: (line: string) => void;
}): Promise<ChaosEnvironment> {
  const cleanups: (() => Promise<unknown>)[] = [];
  const close = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    const dir = await makeTempDir("fr-chaos-");
    cleanups.push(() => removeTempDir(dir));
    const outside = path.join(dir, "outside");
    const { gitRedirect } = await makeOutsideTree(outside);
    const worktreeRoot = path.join(dir, "worktrees");
    const dataDir = path.join(dir, "data");
    await mkdir(path.join(dir, "formulas"), { recursive: true });
    for (const [name, text] of Object.entries(FORMULAS))
      await writeFile(path.join(dir, "formulas", `${name}.toml`), text);

    const repo = await createTestRepo({ files: { "README.md": "# chaos\n", "AGENTS.md": "Be careful.\n" } });
    cleanups.push(() => repo.cleanup());
    const forge = await startFakeForge({ tokens: { [FORGE_TOKEN]: "runner-bot" } });
    cleanups.push(() => forge.close());
    forge.setPermission(REPO, SENDER, "write");

    const project = (name: string, formulas: string[]) => [
      "[[projects]]",
      `name = "${name}"`,
      `repo_path = ${JSON.stringify(repo.clone)}`,
      `repo = "${name === "demo" ? REPO : "acme/victim"}"`,
      `forge_url = "${forge.url}"`,
      'token_env = "CHAOS_FORGE_TOKEN"',
      'webhook_secret_env = "CHAOS_WEBHOOK_SECRET"',
      'bot_login = "runner-bot"',
      `formulas = ${JSON.stringify(formulas)}`,
      "",
    ];
    await writeFile(
      path.join(dir, "formula-runner.toml"),
      [
        ...project("demo", ["work", "fire"]),
        ...project("victim", ["crashy"]),
        "[agents.done]",
        `command = ["bash", ${JSON.stringify(agentPath("done"))}]`,
        "[agents.crash]",
        `command = ["bash", ${JSON.stringify(agentPath("crash-always"))}]`,
        "",
      ].join("\n"),
    );

    let proxy: TcpProxy | undefined;
    let sql: postgres.Sql | undefined;
    let databaseUrl = "";
    if (options.postgresUrl) {
      const schema = `chaos_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`;
      const admin = postgres(options.postgresUrl, { max: 1, onnotice: () => {} });
      await admin.unsafe(`create schema "${schema}"`);
      cleanups.push(async () => {
        await admin.unsafe(`drop schema if exists "${schema}" cascade`);
        await admin.end({ timeout: 5 });
      });
      const direct = new URL(options.postgresUrl);
      proxy = await startTcpProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
      const p = proxy;
      cleanups.push(() => p.close());
      const via = new URL(direct);
      via.host = `127.0.0.1:${proxy.port}`;
      via.searchParams.set("search_path", schema);
      databaseUrl = via.toString();
      sql = postgres(options.postgresUrl, { max: 2, onnotice: () => {}, connection: { search_path: schema } });
      const s = sql;
      cleanups.push(() => s.end({ timeout: 5 }));
    }

    options.log(
      `starting formula-runner serve (${options.postgresUrl ? "PostgreSQL through a cutting proxy" : "PGlite"})`,
    );
    const server = await startServerProcess({
      cwd: dir,
      env: {
        DATABASE_URL: databaseUrl,
        DATA_DIR: dataDir,
        WORKTREE_ROOT: worktreeRoot,
        FORMULAS_DIR: path.join(dir, "formulas"),
        FORMULA_RUNNER_CONFIG: path.join(dir, "formula-runner.toml"),
        API_TOKEN,
        CHAOS_WEBHOOK_SECRET: WEBHOOK_SECRET,
        CHAOS_FORGE_TOKEN: FORGE_TOKEN,
        MAX_SESSIONS: String(options.maxSessions),
        KILL_GRACE: "1s",
        SHUTDOWN_GRACE: "10s",
        LOG_LEVEL: "info",
      },
      timeoutMs: 120_000,
    });
    cleanups.push(() => server.stop("SIGKILL"));
    return {
      dir,
      worktreeRoot,
      dataDir,
      outside,
      gitRedirect,
      forge,
      repo,
      proxy,
      sql,
      server,
      backend: options.postgresUrl ? "postgres" : "pglite",
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
