/**
 * Webhook ingest under load (autocannon), against two baselines measured in the same
 * run: a bare node:http server that checks the HMAC and answers 202 (the ceiling of the
 * HTTP path) and one that also does one INSERT per request (the naive durable ingest).
 * Each delivery has a unique id and matches no formula; every accepted one must be in
 * the database afterwards.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { once } from "node:events";
import { cp, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { execa } from "execa";
import postgres from "postgres";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { printTable, recordFigure } from "./stats.js";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SECRET = "bench-webhook-secret-0123456789";
const DURATION_S = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = 50;

const PAYLOAD = JSON.stringify({
  ref: "refs/heads/main",
  before: "0".repeat(40),
  after: "1".repeat(40),
  commits: [{ id: "1".repeat(40), message: "bench" }],
  repository: { full_name: "acme/demo", name: "demo", owner: { login: "acme" } },
  pusher: { name: "alice" },
  sender: { login: "alice", type: "User" },
});
const SIGNATURE = `sha256=${createHmac("sha256", SECRET).update(PAYLOAD).digest("hex")}`;

interface Target {
  name: string;
  url: string;
  stop(): Promise<void>;
  /** Rows stored, for the "nothing lost" check. */
  count?: () => Promise<number>;
}

async function spawnListening(
  command: string,
  args: string[],
  env: Record<string, string | undefined>,
  cwd = REPO_ROOT,
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    let buffer = "";
    child.stdout?.on("data", (d: Buffer) => {
      buffer += d.toString();
      const match = /listening (\d+)|listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(buffer);
      if (match) resolve(Number(match[1] ?? match[2]));
    });
    child.once("exit", (code) => reject(new Error(`${args.join(" ")} exited with ${code}:\n${buffer}`)));
  });
  child.stdout?.resume();
  return { child, port };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  await once(child, "exit");
}

/** Compiles the server once into `.bench-dist/` (production runs the build, not tsx). */
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

async function formulaRunner(backend: "pglite" | "postgres", postgresUrl: string | undefined): Promise<Target> {
  const dir = await makeTempDir("fr-bench-webhooks-");
  await mkdir(path.join(dir, "formulas"));
  await writeFile(
    path.join(dir, "formula-runner.toml"),
    `[[projects]]\nname = "demo"\nrepo_path = "${dir}"\nrepo = "acme/demo"\nformulas = ["*"]\nwebhook_secret_env = "BENCH_WEBHOOK_SECRET"\n`,
  );
  let schema: string | undefined;
  let databaseUrl = "";
  if (backend === "postgres") {
    schema = `bench_wh_${Date.now().toString(36)}`;
    const admin = postgres(postgresUrl as string, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create schema "${schema}"`);
    await admin.end();
    const u = new URL(postgresUrl as string);
    u.searchParams.set("search_path", schema);
    databaseUrl = u.toString();
  }
  const { child, port } = await spawnListening(
    process.execPath,
    [await compiledMain(), "serve"],
    {
      PORT: "0",
      LOG_LEVEL: "info",
      BENCH_WEBHOOK_SECRET: SECRET,
      DATABASE_URL: databaseUrl,
      API_TOKEN: "bench-token-0123456789",
    },
    dir,
  );
  const url = `http://127.0.0.1:${port}/webhooks`;
  return {
    name: `formula-runner (${backend})`,
    url,
    count: async () => {
      if (backend === "postgres") {
        const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
        const [row] = await sql`select count(*)::int as n from deliveries`;
        await sql.end();
        return row?.n as number;
      }
      // PGlite is inside the server process: stop it, then count with a fresh opener.
      await stopChild(child);
      const { openDatabase } = await import("../db/client.js");
      const { sql } = await import("drizzle-orm");
      const db = await openDatabase({ dataDir: path.join(dir, ".formula-runner", "pgdata") });
      const [row] = await db.rows<{ n: number }>(sql`select count(*)::int as n from deliveries`);
      await db.close();
      return row?.n as number;
    },
    stop: async () => {
      await stopChild(child);
      if (schema) {
        const admin = postgres(postgresUrl as string, { max: 1, onnotice: () => {} });
        await admin.unsafe(`drop schema "${schema}" cascade`);
        await admin.end();
      }
      await removeTempDir(dir);
    },
  };
}

async function baseline(file: string, name: string, env: Record<string, string>): Promise<Target> {
  let schema: string | undefined;
  if (env.DATABASE_URL) {
    // A schema of its own, so the table starts empty.
    schema = `bench_naive_${Date.now().toString(36)}`;
    const admin = postgres(env.DATABASE_URL, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create schema "${schema}"`);
    await admin.end();
    const u = new URL(env.DATABASE_URL);
    u.searchParams.set("search_path", schema);
    env = { ...env, DATABASE_URL: u.toString() };
  }
  const { child, port } = await spawnListening(process.execPath, [path.join(REPO_ROOT, "bench", "baselines", file)], {
    WEBHOOK_SECRET: SECRET,
    ...env,
  });
  const dropSchema = async () => {
    if (!schema) return;
    const admin = postgres(env.DATABASE_URL as string, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop schema "${schema}" cascade`);
    await admin.end();
  };
  return {
    name,
    url: `http://127.0.0.1:${port}/webhooks`,
    ...(env.DATABASE_URL
      ? {
          count: async () => {
            const sql = postgres(env.DATABASE_URL as string, { max: 1, onnotice: () => {} });
            const [row] = await sql`select count(*)::int as n from baseline_deliveries`;
            await sql.end();
            return row?.n as number;
          },
        }
      : {}),
    stop: async () => {
      await stopChild(child);
      await dropSchema();
    },
  };
}

function load(url: string, overallRate?: number): Promise<autocannon.Result> {
  const run = randomUUID().slice(0, 8);
  let n = 0;
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url,
        method: "POST",
        connections: overallRate ? 20 : CONNECTIONS,
        duration: DURATION_S,
        ...(overallRate ? { overallRate } : {}),
        headers: {
          "content-type": "application/json",
          "x-github-event": "push",
          "x-hub-signature-256": SIGNATURE,
          "user-agent": "GitHub-Hookshot/bench",
        },
        body: PAYLOAD,
        requests: [
          {
            setupRequest: (request) => {
              n += 1;
              return { ...request, headers: { ...request.headers, "x-github-delivery": `${run}-${n}` } };
            },
          },
        ],
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
  });
}

export async function benchWebhooks(postgresUrl: string | undefined): Promise<void> {
  const throughput: Record<string, string | number>[] = [];
  const fixed: Record<string, string | number>[] = [];
  const targets: (() => Promise<Target>)[] = [
    () => baseline("hmac-202.mjs", "node:http + HMAC, no database (ceiling)", {}),
    ...(postgresUrl
      ? [
          () =>
            baseline("hmac-insert.mjs", "node:http + HMAC + 1 INSERT/request, postgres.js (naive durable)", {
              DATABASE_URL: postgresUrl,
            }),
          () => formulaRunner("postgres", postgresUrl),
        ]
      : []),
    () => formulaRunner("pglite", undefined),
  ];
  let naive: number | undefined;
  for (const make of targets) {
    const target = await make();
    try {
      // Warm up, then measure throughput, then latency at a fixed 1,000 req/s. Every
      // target starts with an empty table, so every 2xx must be a row at the end.
      const warm = await load(target.url, 200);
      const max = await load(target.url);
      const steady = await load(target.url, 1000);
      const accepted = warm["2xx"] + max["2xx"] + steady["2xx"];
      const nonOk = max.non2xx + steady.non2xx + max.errors + steady.errors;
      let stored: string | number = "-";
      if (target.count) {
        const rows = await target.count();
        stored = rows >= accepted ? `all ${accepted}` : `LOST ${accepted - rows} of ${accepted}`;
      }
      if (target.name.includes("naive")) naive = max.requests.average;
      if (target.name.startsWith("formula-runner")) {
        recordFigure({
          bench: "webhooks",
          figure: `ingest throughput, ${target.name}`,
          value: max.requests.average,
          unit: "req/s",
          ...(naive ? { baseline: { name: "naive 1 INSERT/request", value: naive } } : {}),
          target: "> naive baseline",
        });
        recordFigure({
          bench: "webhooks",
          figure: `p99 at a fixed 1,000 req/s, ${target.name}`,
          value: steady.latency.p99,
          unit: "ms",
          target: "< 20 ms",
        });
      }
      throughput.push({
        server: target.name,
        "req/s": Math.round(max.requests.average),
        "p50 ms": max.latency.p50,
        "p99 ms": max.latency.p99,
        "vs naive": naive ? `${(max.requests.average / naive).toFixed(2)}x` : "-",
        "non-2xx/errors": nonOk,
        "accepted stored": stored,
      });
      fixed.push({
        server: target.name,
        "req/s": Math.round(steady.requests.average),
        "p50 ms": steady.latency.p50,
        "p99 ms": steady.latency.p99,
        target: "p99 < 20 ms",
      });
    } finally {
      await target.stop();
    }
  }
  printTable(
    `webhook ingest, ${CONNECTIONS} connections, ${DURATION_S} s, unique delivery ids, no formula matches`,
    throughput,
  );
  printTable(`webhook ingest at a fixed 1,000 req/s (20 connections, ${DURATION_S} s)`, fixed);
}
