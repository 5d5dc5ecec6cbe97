/**
 * `npm run chaos [-- --minutes N] [--seed S]`: the 10-minute chaos run of issue 10 (see
 * bench/chaos/run-chaos.ts). PostgreSQL from BENCH_DATABASE_URL or TEST_DATABASE_URL (a
 * schema of its own, reached through the run's own cutting proxy); without one it runs on
 * PGlite and cuts nothing. Prints one table, writes bench/chaos-results.json, and exits 1
 * when a gated figure missed its target.
 */
import { writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { formatReport } from "./chaos/report.js";
import { DEFAULT_OPTIONS, runChaos } from "./chaos/run-chaos.js";

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "10" },
    seed: { type: "string", default: String(DEFAULT_OPTIONS.seed) },
  },
});
const minutes = Number(values.minutes);
const seed = Number(values.seed);
if (!(minutes > 0) || !Number.isInteger(seed)) {
  process.stderr.write("usage: npm run chaos -- [--minutes N] [--seed S]\n");
  process.exit(2);
}

const postgresUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
// Ctrl-C ends the run early but still reports and removes its schema, server and files.
const abort = new AbortController();
for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => abort.abort());
const report = await runChaos({
  abort: abort.signal,
  ...DEFAULT_OPTIONS,
  durationMs: minutes * 60_000,
  // Dispatches at 5/s outrun a loaded 2-core machine: the backlog is worked off after the faults stop.
  drainTimeoutMs: Math.max(DEFAULT_OPTIONS.drainTimeoutMs, minutes * 90_000),
  seed,
  postgresUrl: postgresUrl || undefined,
  log: (line) => process.stderr.write(`chaos: ${line}\n`),
});
process.stdout.write(formatReport(report));
const file = path.join(path.dirname(fileURLToPath(import.meta.url)), "chaos-results.json");
await writeFile(
  file,
  `${JSON.stringify(
    {
      at: new Date().toISOString(),
      machine: `node ${process.version}, ${os.cpus().length} cores, load ${os.loadavg()[0]?.toFixed(1)} at the end`,
      ...report,
    },
    null,
    2,
  )}\n`,
);
process.stdout.write(`\nwritten to ${path.relative(process.cwd(), file)}\n`);
process.exitCode = report.passed ? 0 : 1;
