/**
 * `npm run bench [NAME...]`: runs the benchmarks and prints their figures as Markdown
 * tables. PostgreSQL takes part when BENCH_DATABASE_URL (or TEST_DATABASE_URL) is set.
 * Figures, not assertions: targets are checked by reading them.
 */
import os from "node:os";
import { benchDashboard } from "./dashboard.js";
import { benchDatabase } from "./database.js";
import { benchEngine } from "./engine.js";
import { benchPhaseWatcher } from "./phase-watcher.js";
import { benchWebhooks } from "./webhooks.js";
import { benchWorktrees } from "./worktrees.js";

const benchmarks: Record<string, (postgresUrl: string | undefined) => Promise<void>> = {
  database: benchDatabase,
  "phase-watcher": () => benchPhaseWatcher(),
  engine: benchEngine,
  worktrees: () => benchWorktrees(),
  webhooks: benchWebhooks,
  dashboard: benchDashboard,
};

const wanted = process.argv.slice(2);
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
  for (const name of wanted.length > 0 ? wanted : Object.keys(benchmarks)) {
    await benchmarks[name]?.(postgresUrl);
  }
}
