/**
 * The run engine measured end to end with real processes: phase latency (agent writes
 * its phase file -> phase row stored), the server's overhead while following idle
 * sessions, and listing 10,000 worktree records over REST.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { execa } from "execa";
import postgres from "postgres";
import { type Database, openDatabase } from "../db/client.js";
import { migrate } from "../db/migrate.js";
import { worktrees } from "../db/schema/index.js";
import { startServer } from "../src/server.js";
import { agentPath } from "../test/helpers/agents/index.js";
import { REPO_ROOT } from "../test/helpers/cli.js";
import { createTestRepo } from "../test/helpers/git.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { printTable, recordFigure, summarize } from "./stats.js";

const TOKEN = "bench-token-0123456789abcdef";
const PHASE_WRITES = 200;
const IDLE_SESSIONS = 50;

/** An agent that writes PHASE_WRITES phases 20-80 ms apart, each stamped with the monotonic clock. */
const PHASE_WRITER = `
const { writeFileSync, renameSync } = require("node:fs");
const file = process.env.PHASE_FILE;
const n = Number(process.env.PHASE_WRITES);
let i = 0;
process.stdin.resume();
process.stdin.on("end", () => {});
function next() {
  if (i === n) {
    writeFileSync(file, "PHASE:done\\n");
    setTimeout(() => process.exit(0), 50);
    return;
  }
  i++;
  const stamp = process.hrtime.bigint().toString();
  writeFileSync(file, "PHASE:step-" + i + "\\nReason: " + stamp + "\\n");
  setTimeout(next, 20 + Math.floor(Math.random() * 60));
}
setTimeout(next, 100);
`;

async function setUp(formulas: Record<string, string>, agents: Record<string, string[]>) {
  const dir = await makeTempDir("fr-bench-engine-");
  const repo = await createTestRepo();
  await mkdir(path.join(dir, "formulas"));
  for (const [name, text] of Object.entries(formulas))
    await writeFile(path.join(dir, "formulas", `${name}.toml`), text);
  const agentTables = Object.entries(agents).map(
    ([name, command]) => `[agents.${name}]\ncommand = ${JSON.stringify(command)}\n`,
  );
  await writeFile(
    path.join(dir, "formula-runner.toml"),
    `[[projects]]\nname = "demo"\nrepo_path = ${JSON.stringify(repo.clone)}\nrepo = "acme/demo"\n${agentTables.join("\n")}`,
  );
  return { dir, repo };
}

const formula = (name: string, agent: string, extra = "") =>
  `name = "${name}"\ndescription = "bench"\nagent = "${agent}"\ntimeout = "1h"\nmax_duration = "2h"\n${extra}\n[on]\ndispatch = true\n[guards]\nconcurrency = ""\n[[steps]]\nid = "s"\ntitle = "S"\ndescription = "s"\n`;

async function benchPhaseLatency(postgresUrl: string | undefined): Promise<Record<string, string | number>[]> {
  const rows: Record<string, string | number>[] = [];
  for (const backend of postgresUrl ? ["pglite", "postgres"] : ["pglite"]) {
    const { dir, repo } = await setUp(
      { writer: formula("writer", "writer", `[env]\nPHASE_WRITES = "${PHASE_WRITES}"`) },
      { writer: [process.execPath, "-e", PHASE_WRITER] },
    );
    const { database, cleanup } = await benchDatabase(backend, postgresUrl);
    const latencies: number[] = [];
    const server = await startServer({
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        DATA_DIR: path.join(dir, "data"),
        PORT: "0",
        API_TOKEN: TOKEN,
        LOG_LEVEL: "warn",
      },
      cwd: dir,
      database,
      observers: [
        {
          phaseRecorded: (_run, phase) => {
            const now = process.hrtime.bigint();
            if (phase.detail && /^\d+$/.test(phase.detail)) latencies.push(Number(now - BigInt(phase.detail)) / 1e6);
          },
        },
      ],
    });
    try {
      const run = await server.services.runs.dispatch({ formula: "writer", actor: "bench" });
      for (;;) {
        const current = await server.services.runs.get(run.id);
        if (["done", "failed", "crashed", "timed_out"].includes(current.status)) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      const s = summarize(latencies);
      rows.push({
        backend,
        "phases stored": `${s.n}/${PHASE_WRITES}`,
        "median ms": s.median,
        "p99 ms": s.p99,
        "max ms": Math.max(...latencies),
        "target p99": "< 100 ms",
        "bash design": "10-15 s poll",
      });
    } finally {
      await server.stop();
      await cleanup();
      await repo.cleanup();
      await removeTempDir(dir);
    }
  }
  return rows;
}

async function benchDatabase(
  backend: string,
  postgresUrl: string | undefined,
): Promise<{ database: Database; cleanup: () => Promise<void> }> {
  if (backend === "pglite") {
    const database = await openDatabase({});
    await migrate(database);
    return { database, cleanup: () => database.close() };
  }
  const schema = `bench_${Date.now().toString(36)}`;
  const admin = postgres(postgresUrl as string, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema "${schema}"`);
  const database = await openDatabase({ url: postgresUrl as string, searchPath: schema });
  await migrate(database);
  return {
    database,
    cleanup: async () => {
      await database.close();
      await admin.unsafe(`drop schema "${schema}" cascade`);
      await admin.end();
    },
  };
}

function procStat(pid: number): Promise<{ cpuTicks: number; rssKb: number }> {
  return Promise.all([readFile(`/proc/${pid}/stat`, "utf8"), readFile(`/proc/${pid}/status`, "utf8")]).then(
    ([stat, status]) => {
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cpuTicks = Number(fields[11]) + Number(fields[12]);
      const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      return { cpuTicks, rssKb };
    },
  );
}

async function benchOverhead(postgresUrl: string | undefined): Promise<Record<string, string | number>[]> {
  const rows: Record<string, string | number>[] = [];
  for (const backend of postgresUrl ? ["pglite", "postgres"] : ["pglite"]) {
    let schema: string | undefined;
    let url: string | undefined;
    if (backend === "postgres") {
      schema = `bench_${Date.now().toString(36)}`;
      const admin = postgres(postgresUrl as string, { max: 1, onnotice: () => {} });
      await admin.unsafe(`create schema "${schema}"`);
      await admin.end();
      const u = new URL(postgresUrl as string);
      u.searchParams.set("search_path", schema);
      url = u.toString();
    }
    try {
      rows.push({ backend, ...(await overheadOnce(url)) });
    } finally {
      if (schema) {
        const admin = postgres(postgresUrl as string, { max: 1, onnotice: () => {} });
        await admin.unsafe(`drop schema "${schema}" cascade`);
        await admin.end();
      }
    }
  }
  return rows;
}

/** Compiles the server once into `.bench-dist/` (git-ignored): production runs the build, not tsx. */
let compiled: Promise<string> | undefined;
function compiledMain(): Promise<string> {
  compiled ??= (async () => {
    const outDir = path.join(REPO_ROOT, ".bench-dist");
    await execa("npx", ["tsc", "-p", "tsconfig.build.json", "--outDir", outDir], { cwd: REPO_ROOT });
    await cp(path.join(REPO_ROOT, "db", "migrations"), path.join(outDir, "db", "migrations"), { recursive: true });
    return path.join(outDir, "src", "main.js");
  })();
  return compiled;
}

async function overheadOnce(databaseUrl: string | undefined): Promise<Record<string, string | number>> {
  const { dir, repo } = await setUp({ idle: formula("idle", "hang") }, { hang: ["bash", agentPath("hang")] });
  let child: ChildProcess | undefined;
  try {
    child = spawn(process.execPath, [await compiledMain(), "serve"], {
      cwd: dir,
      env: {
        ...process.env,
        PORT: "0",
        API_TOKEN: TOKEN,
        MAX_SESSIONS: String(IDLE_SESSIONS),
        LOG_LEVEL: "warn",
        ...(databaseUrl ? { DATABASE_URL: databaseUrl } : { DATABASE_URL: "" }),
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    // LOG_LEVEL=warn hides the "listening" line: find the port from /proc instead of the log.
    const url = await waitForListening(child.pid as number);
    const api = (method: string, route: string, body?: unknown) =>
      fetch(`${url}${route}`, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: body ? JSON.stringify(body) : undefined,
      }).then((r) => r.json() as Promise<any>);
    const idle = await procStat(child.pid as number);
    const ids: number[] = [];
    for (let i = 0; i < IDLE_SESSIONS; i++) ids.push((await api("POST", "/api/runs", { formula: "idle" })).id);
    for (;;) {
      const { runs } = await api("GET", `/api/runs?status=running&limit=500`);
      if (runs.filter((r: { phase: string }) => r.phase === "working").length === IDLE_SESSIONS) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 2000));
    const windowS = 10;
    const before = await procStat(child.pid as number);
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const after = await procStat(child.pid as number);
    const ticksPerS = 100;
    const cpuPercent = ((after.cpuTicks - before.cpuTicks) / ticksPerS / windowS) * 100;
    for (const id of ids) await api("POST", `/api/runs/${id}/cancel`);
    return {
      "idle sessions": IDLE_SESSIONS,
      "server CPU % of one core": Number(cpuPercent.toFixed(2)),
      "RSS MB (following)": Math.round(after.rssKb / 1024),
      "RSS MB (before runs)": Math.round(idle.rssKb / 1024),
      target: "< 5 % and < 150 MB",
    };
  } finally {
    if (child && child.exitCode === null) {
      child.kill("SIGTERM");
      await once(child, "exit");
    }
    await repo.cleanup();
    await removeTempDir(dir);
  }
}

async function waitForListening(pid: number): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const inodes = new Set<string>();
    try {
      const { readdir, readlink } = await import("node:fs/promises");
      for (const fd of await readdir(`/proc/${pid}/fd`)) {
        const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
        const match = /^socket:\[(\d+)\]$/.exec(target);
        if (match?.[1]) inodes.add(match[1]);
      }
      const tcp = await readFile("/proc/net/tcp", "utf8");
      for (const line of tcp.split("\n").slice(1)) {
        const cols = line.trim().split(/\s+/);
        if (cols[3] === "0A" && inodes.has(cols[9] ?? "")) {
          const port = Number.parseInt((cols[1] ?? "").split(":")[1] ?? "0", 16);
          if (port > 0) return `http://127.0.0.1:${port}`;
        }
      }
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error("server did not listen in time");
}

async function benchListing(postgresUrl: string | undefined): Promise<Record<string, string | number>[]> {
  const rows: Record<string, string | number>[] = [];
  for (const backend of postgresUrl ? ["pglite", "postgres"] : ["pglite"]) {
    const dir = await makeTempDir("fr-bench-list-");
    const { database, cleanup } = await benchDatabase(backend, postgresUrl);
    await mkdir(path.join(dir, "formulas"));
    await writeFile(path.join(dir, "formula-runner.toml"), "");
    const server = await startServer({
      env: {
        PATH: process.env.PATH,
        DATA_DIR: path.join(dir, "data"),
        PORT: "0",
        API_TOKEN: TOKEN,
        LOG_LEVEL: "error",
      },
      cwd: dir,
      database,
    });
    try {
      const now = Date.now();
      for (let start = 0; start < 10_000; start += 1000) {
        await database.db.insert(worktrees).values(
          Array.from({ length: 1000 }, (_, i) => ({
            project: "demo",
            formula: "dev",
            path: path.join(dir, "wt", "demo", `dev-${start + i}`),
            state: "preserved" as const,
            reason: "crashed",
            instanceId: server.services.instanceId,
            preservedAt: new Date(now - 3_600_000),
            expiresAt: new Date(now + 3_600_000),
            sizeBytes: 123_456,
          })),
        );
      }
      await database.rows(sql`analyze worktrees`);
      const samples: number[] = [];
      let count = 0;
      let bytes = 0;
      for (let i = 0; i < 12; i++) {
        const started = performance.now();
        const res = await fetch(`${server.url}/api/worktrees?limit=10000`, {
          headers: { authorization: `Bearer ${TOKEN}` },
        });
        const text = await res.text();
        if (i >= 2) samples.push(performance.now() - started);
        count = (JSON.parse(text) as { worktrees: unknown[] }).worktrees.length;
        bytes = text.length;
      }
      const s = summarize(samples);
      rows.push({
        backend,
        records: count,
        "response KB": Math.round(bytes / 1024),
        "median ms": s.median,
        "max ms": Math.max(...samples),
        target: "< 200 ms",
      });
    } finally {
      await server.stop();
      await cleanup();
      await removeTempDir(dir);
    }
  }
  return rows;
}

export async function benchOverheadOnly(postgresUrl: string | undefined): Promise<void> {
  printTable(
    `server overhead following ${IDLE_SESSIONS} idle sessions (the compiled server process, measured over 10 s)`,
    await benchOverhead(postgresUrl),
  );
}

export async function benchEngine(postgresUrl: string | undefined): Promise<void> {
  const latency = await benchPhaseLatency(postgresUrl);
  for (const row of latency) {
    recordFigure({
      bench: "engine",
      figure: `phase file -> phase row stored, p99 (${row.backend})`,
      value: row["p99 ms"] as number,
      unit: "ms",
      target: "< 100 ms (bash design: 10-15 s poll)",
    });
  }
  printTable(
    `phase latency: agent writes its phase file -> phase row stored (${PHASE_WRITES} writes, 20-80 ms apart)`,
    latency,
  );
  const overhead = await benchOverhead(postgresUrl);
  for (const row of overhead) {
    recordFigure({
      bench: "engine",
      figure: `server CPU following ${IDLE_SESSIONS} idle sessions (${row.backend})`,
      value: row["server CPU % of one core"] as number,
      unit: "% of a core",
      target: "< 5 %",
    });
    recordFigure({
      bench: "engine",
      figure: `server RSS following ${IDLE_SESSIONS} idle sessions (${row.backend})`,
      value: row["RSS MB (following)"] as number,
      unit: "MB",
      baseline: { name: "before the runs", value: row["RSS MB (before runs)"] as number },
      target: "< 150 MB",
    });
  }
  printTable(
    `server overhead following ${IDLE_SESSIONS} idle sessions (the compiled server process, measured over 10 s)`,
    overhead,
  );
  const listing = await benchListing(postgresUrl);
  for (const row of listing) {
    recordFigure({
      bench: "engine",
      figure: `GET /api/worktrees?limit=10000, median (${row.backend})`,
      value: row["median ms"] as number,
      unit: "ms",
      target: "< 200 ms",
    });
  }
  printTable("GET /api/worktrees?limit=10000 over HTTP (10 runs after 2 warm-ups)", listing);
}
