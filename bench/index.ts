/**
 * `npm run bench [-- NAME...] [--details]`: runs the benchmarks, prints one table of their
 * headline figures (value, the baseline measured in the same run, the ratio, the target)
 * and writes every figure and detail table to bench/results.json; `--details` prints the
 * detail tables too. PostgreSQL takes part when BENCH_DATABASE_URL (or TEST_DATABASE_URL)
 * is set. Figures, not assertions: targets are checked by reading them.
 */
import { writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { benchCli } from "./cli.js";
import { benchDashboard } from "./dashboard.js";
import { benchDatabase } from "./database.js";
import { benchEngine } from "./engine.js";
import { benchPhaseWatcher } from "./phase-watcher.js";
import { benchSandbox } from "./sandbox.js";
import { figures, output, printFigures, tables } from "./stats.js";
import { benchWebhooks } from "./webhooks.js";
import { benchWorktrees } from "./worktrees.js";

const benchmarks: Record<string, (postgresUrl: string | undefined) => Promise<void>> = {
  cli: () => benchCli(),
  database: benchDatabase,
  "phase-watcher": () => benchPhaseWatcher(),
  engine: benchEngine,
  worktrees: () => benchWorktrees(),
  webhooks: benchWebhooks,
  dashboard: benchDashboard,
  sandbox: () => benchSandbox(),
};

const args = process.argv.slice(2);
output.details = args.includes("--details");
const wanted = args.filter((a) => a !== "--details");
const unknown = wanted.filter((name) => !(name in benchmarks));
if (unknown.length > 0) {
  process.stderr.write(`unknown benchmark(s): ${unknown.join(", ")}; known: ${Object.keys(benchmarks).join(", ")}\n`);
  process.exitCode = 2;
} else {
  const postgresUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  process.stdout.write(
    `# formula-runner benchmarks\n\nnode ${process.version}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB; ` +
      `PostgreSQL: ${postgresUrl ? "yes" : "no (set BENCH_DATABASE_URL)"}\n`,
  );
  const started = new Date();
  const ran = wanted.length > 0 ? wanted : Object.keys(benchmarks);
  for (const name of ran) {
    process.stderr.write(`bench: ${name}\n`);
    await benchmarks[name]?.(postgresUrl);
  }
  printFigures(figures);
  const file = path.join(path.dirname(fileURLToPath(import.meta.url)), "results.json");
  await writeFile(
    file,
    `${JSON.stringify(
      {
        at: started.toISOString(),
        machine: {
          node: process.version,
          cores: os.cpus().length,
          memory_gib: Math.round(os.totalmem() / 2 ** 30),
          load_at_end: os.loadavg()[0],
        },
        postgres: postgresUrl !== undefined,
        benchmarks: ran,
        figures,
        tables,
      },
      null,
      2,
    )}\n`,
  );
  process.stdout.write(`\nwritten to ${path.relative(process.cwd(), file)}\n`);
}
