/**
 * How fast the CLI answers: `--version`, `--help` and an API command (`runs list`)
 * against a running server, through bin/ (what users run), the compiled build and the
 * tsx sources, next to a bare `node -e 0`. Targets (issue 13): `--version`/`--help`
 * under 150 ms, API commands under 400 ms. Needs `npm run build` for the compiled rows.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { startServer } from "../src/server.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { printTable, recordFigure, summarize } from "./stats.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ROUNDS = 7;
const TOKEN = "bench-cli-token-0123456789";

async function timeCommand(argv: string[], env: Record<string, string>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const started = performance.now();
    const result = await execa(process.execPath, argv, { cwd: ROOT, env, reject: false, stdin: "ignore" });
    samples.push(performance.now() - started);
    if (result.exitCode !== 0) throw new Error(`${argv.join(" ")} exited ${result.exitCode}: ${result.stderr}`);
  }
  return samples;
}

export async function benchCli(): Promise<void> {
  const dir = await makeTempDir("fr-bench-cli-");
  const server = await startServer({
    env: { DATA_DIR: path.join(dir, "data"), PORT: "0", API_TOKEN: TOKEN, FORMULAS_DIR: dir, LOG_LEVEL: "silent" },
    cwd: dir,
  });
  try {
    const env = { PATH: process.env.PATH ?? "", FORMULA_RUNNER_URL: server.url, API_TOKEN: TOKEN };
    const entries: [string, string[]][] = [["bin/formula-runner.js", [path.join(ROOT, "bin/formula-runner.js")]]];
    const compiled = path.join(ROOT, "dist/src/main.js");
    if (existsSync(compiled)) entries.push(["dist (compiled)", [compiled]]);
    entries.push(["tsx (sources)", ["--import", "tsx", path.join(ROOT, "src/main.ts")]]);
    const rows: Record<string, string | number>[] = [];
    const baseline = summarize(await timeCommand(["-e", "0"], env));
    rows.push({ entry: "node -e 0", command: "-", median_ms: baseline.median, max_ms: baseline.p99 });
    for (const [entry, prefix] of entries) {
      for (const command of [["--version"], ["--help"], ["runs", "list"]]) {
        const s = summarize(await timeCommand([...prefix, ...command], env));
        rows.push({ entry, command: command.join(" "), median_ms: s.median, max_ms: s.p99 });
        if (entry === "bin/formula-runner.js" && command[0] !== "--help") {
          recordFigure({
            bench: "cli",
            figure: `formula-runner ${command.join(" ")}, median`,
            value: s.median,
            unit: "ms",
            baseline: { name: "node -e 0", value: baseline.median },
            target: command[0] === "--version" ? "< 150 ms" : "< 400 ms",
          });
        }
      }
    }
    printTable(`CLI start-up (${ROUNDS} rounds each; targets: --version/--help < 150 ms, runs list < 400 ms)`, rows);
  } finally {
    await server.stop();
    await removeTempDir(dir);
  }
}
