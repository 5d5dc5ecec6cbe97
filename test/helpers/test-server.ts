import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Database } from "../../db/client.js";
import type { MemoryProbe } from "../../src/memory.js";
import { type RunningServer, type StartOptions, startServer } from "../../src/server.js";
import { agentPath, type TestAgent } from "./agents/index.js";
import { checkApiAnswer } from "./api-contract.js";
import { type BackendKind, openTestDatabase, type TestDatabase } from "./db.js";
import { createTestRepo, type TestRepo } from "./git.js";
import { makeTempDir, removeTempDir } from "./tmp.js";

export const TEST_TOKEN = "test-server-token-0123456789";

/** A formula for tests: one step, a test agent, short timeouts; override any field. */
export function testFormula(name: string, fields: Record<string, unknown> = {}): string {
  const { guards, env, context, on, sandbox, ...top } = fields as {
    guards?: Record<string, unknown>;
    sandbox?: Record<string, unknown>;
    env?: Record<string, string>;
    context?: Record<string, unknown>;
    on?: Record<string, unknown>;
  } & Record<string, unknown>;
  const toml = (value: unknown): string => JSON.stringify(value);
  const lines = [`name = "${name}"`, `description = "test formula ${name}"`];
  const defaults: Record<string, unknown> = { agent: "done", timeout: "20s", max_duration: "60s", ...top };
  for (const [key, value] of Object.entries(defaults)) lines.push(`${key} = ${toml(value)}`);
  lines.push("[on]", `dispatch = ${toml((on?.dispatch as boolean | undefined) ?? true)}`);
  for (const [table, values] of [
    ["guards", guards],
    ["sandbox", sandbox],
    ["context", context],
    ["env", env],
  ] as const) {
    if (!values) continue;
    lines.push(`[${table}]`);
    for (const [key, value] of Object.entries(values)) lines.push(`${key} = ${toml(value)}`);
  }
  lines.push("[[steps]]", 'id = "work"', 'title = "Work"', 'description = "Do the work, then write PHASE:done."');
  return `${lines.join("\n")}\n`;
}

export interface TestServerOptions {
  backend: BackendKind;
  /** Formula files by name (TOML text, see testFormula). */
  formulas: Record<string, string>;
  /** Agent profiles: name -> test agent script, a full command, or a whole `[agents.NAME]` table. */
  agents?: Record<string, TestAgent | string[] | AgentTable>;
  env?: Record<string, string>;
  /**
   * More keys of the "demo" project (webhook_secret_env, forge_url, bot_login...). The
   * project runs every formula (`formulas = ["*"]`) unless this sets `formulas`.
   */
  project?: Record<string, string | number | string[]>;
  /** More TOML appended to formula-runner.toml (other [[projects]]); `{clone}` stands for the demo clone's path. */
  extraConfig?: string;
  readMemory?: MemoryProbe;
  now?: () => Date;
  /** How long a stream-json agent may linger after its final result (the server's default is 30 s). */
  runSweepMs?: number;
  resultLingerMs?: number;
  /** Retry timing of pending deliveries (see StartOptions). */
  pendingDeliveries?: StartOptions["pendingDeliveries"];
  /** Holds housekeeping's first round (see StartOptions). */
  housekeepingAfter?: Promise<void>;
  /** Where the server's log lines go (set LOG_LEVEL in `env` to see them). */
  logDestination?: StartOptions["logDestination"];
  /** Wraps the database the server uses (to inject faults); the test's own handle stays unwrapped. */
  wrapDatabase?: (database: Database) => Database;
}

/** An `[agents.NAME]` table of formula-runner.toml, keys as in the file. */
export interface AgentTable {
  command: string[];
  model_args?: string[];
  resume_args?: string[];
  env?: Record<string, string>;
  output?: "text" | "stream-json";
  claude_settings?: boolean;
}

export interface TestServer {
  server: RunningServer;
  url: string;
  repo: TestRepo;
  dir: string;
  dataDir: string;
  worktreeRoot: string;
  db: TestDatabase;
  /** A JSON request to the API with the token; returns status and parsed body. */
  api<T = any>(method: string, route: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** Polls the run until its status is one of `statuses` (default: any final or escalated). */
  waitForRun(id: number, statuses?: string[], timeoutMs?: number): Promise<any>;
  stop(): Promise<void>;
}

const SETTLED = ["done", "failed", "crashed", "timed_out", "cancelled", "skipped", "escalated"];

/**
 * A real server (real HTTP on 127.0.0.1, real database, real git, real agent processes)
 * with one project "demo" whose clone comes from a fresh test repository.
 */
export async function startTestServer(options: TestServerOptions): Promise<TestServer> {
  const dir = await makeTempDir("fr-engine-");
  const repo = await createTestRepo({ files: { "README.md": "# demo\n", "AGENTS.md": "Be careful.\n" } });
  const db = await openTestDatabase(options.backend);
  const dataDir = path.join(dir, "data");
  const worktreeRoot = path.join(dir, "worktrees");
  const formulasDir = path.join(dir, "formulas");
  await mkdir(formulasDir, { recursive: true });
  for (const [name, text] of Object.entries(options.formulas))
    await writeFile(path.join(formulasDir, `${name}.toml`), text);
  const agents = { done: "done", ...options.agents } as Record<string, TestAgent | string[] | AgentTable>;
  const agentTables = Object.entries(agents).map(([name, agent]) => {
    const table: AgentTable = Array.isArray(agent)
      ? { command: agent }
      : typeof agent === "string"
        ? { command: ["bash", agentPath(agent)] }
        : agent;
    const lines = Object.entries(table).map(([key, value]) =>
      key === "env"
        ? `env = { ${Object.entries(value as Record<string, string>)
            .map(([k, v]) => `${k} = ${JSON.stringify(v)}`)
            .join(", ")} }`
        : `${key} = ${JSON.stringify(value)}`,
    );
    return `[agents.${name}]\n${lines.join("\n")}\n`;
  });
  await writeFile(
    path.join(dir, "formula-runner.toml"),
    [
      "[[projects]]",
      'name = "demo"',
      `repo_path = ${JSON.stringify(repo.clone)}`,
      'repo = "acme/demo"',
      ...Object.entries({ formulas: ["*"], ...options.project }).map(
        ([key, value]) => `${key} = ${JSON.stringify(value)}`,
      ),
      "",
      (options.extraConfig ?? "").replaceAll("{clone}", repo.clone),
      ...agentTables,
    ].join("\n"),
  );
  const server = await startServer({
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? dir,
      DATA_DIR: dataDir,
      WORKTREE_ROOT: worktreeRoot,
      FORMULAS_DIR: formulasDir,
      FORMULA_RUNNER_CONFIG: path.join(dir, "formula-runner.toml"),
      PORT: "0",
      API_TOKEN: TEST_TOKEN,
      KILL_GRACE: "1s",
      SHUTDOWN_GRACE: "2s",
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
      ...options.env,
    },
    cwd: dir,
    database: options.wrapDatabase ? options.wrapDatabase(db.database) : db.database,
    ...(options.readMemory ? { readMemory: options.readMemory } : {}),
    ...(options.now ? { now: options.now } : {}),
    ...(options.resultLingerMs !== undefined ? { resultLingerMs: options.resultLingerMs } : {}),
    ...(options.runSweepMs !== undefined ? { runSweepMs: options.runSweepMs } : {}),
    ...(options.pendingDeliveries ? { pendingDeliveries: options.pendingDeliveries } : {}),
    ...(options.housekeepingAfter ? { housekeepingAfter: options.housekeepingAfter } : {}),
    ...(options.logDestination ? { logDestination: options.logDestination } : {}),
  });
  const api = async (method: string, route: string, body?: unknown) => {
    const res = await fetch(`${server.url}${route}`, {
      method,
      headers: {
        authorization: `Bearer ${TEST_TOKEN}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    checkApiAnswer(method, route, res.status, res.headers.get("content-type") ?? "", parsed);
    return { status: res.status, body: parsed as any };
  };
  let stopped = false;
  return {
    server,
    url: server.url,
    repo,
    dir,
    dataDir,
    worktreeRoot,
    db,
    api,
    waitForRun: async (id, statuses = SETTLED, timeoutMs = 30_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { status, body } = await api("GET", `/api/runs/${id}`);
        if (status === 200 && statuses.includes(body.status)) return body;
        if (Date.now() > deadline)
          throw new Error(`run ${id} did not reach ${statuses.join("|")} in ${timeoutMs} ms: ${JSON.stringify(body)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await server.stop();
      await db.cleanup();
      await repo.cleanup();
      await removeTempDir(dir);
    },
  };
}
