import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { type Database, openDatabase } from "../db/client.js";
import { migrate } from "../db/migrate.js";
import { runs } from "../db/schema/index.js";
import { printTable, recordFigure, summarize } from "./stats.js";

const INSERTS = 1_000;

async function insertLatency(database: Database): Promise<ReturnType<typeof summarize>> {
  const samples: number[] = [];
  for (let i = 0; i < INSERTS; i++) {
    const started = performance.now();
    await database.db
      .insert(runs)
      .values({ formula: "bench", project: "bench", triggerKind: "dispatch", triggerRef: `b${i}` });
    samples.push(performance.now() - started);
  }
  return summarize(samples);
}

/** Start-up costs of the embedded database and single-row insert latency on both backends. */
export async function benchDatabase(postgresUrl: string | undefined): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "fr-bench-db-"));
  const rows: Record<string, string | number>[] = [];
  try {
    const dataDir = path.join(dir, "pgdata");
    let t = performance.now();
    const fresh = await openDatabase({ dataDir });
    const createMs = performance.now() - t;
    t = performance.now();
    await migrate(fresh);
    const migrateMs = performance.now() - t;
    await fresh.close();
    t = performance.now();
    const reopened = await openDatabase({ dataDir });
    const reopenMs = performance.now() - t;
    rows.push({
      backend: "pglite (disk)",
      "open ms": Math.round(createMs),
      "reopen ms": Math.round(reopenMs),
      "migrate ms": Math.round(migrateMs),
      ...stats(await insertLatency(reopened)),
    });
    await reopened.close();

    if (postgresUrl) {
      const schema = `bench_${Date.now().toString(36)}`;
      const admin = postgres(postgresUrl, { max: 1, onnotice: () => {} });
      await admin.unsafe(`create schema "${schema}"`);
      try {
        t = performance.now();
        const pg = await openDatabase({ url: postgresUrl, searchPath: schema });
        await pg.rows(sql`select 1`);
        const openMs = performance.now() - t;
        t = performance.now();
        await migrate(pg);
        rows.push({
          backend: "postgres",
          "open ms": Math.round(openMs),
          "reopen ms": "-",
          "migrate ms": Math.round(performance.now() - t),
          ...stats(await insertLatency(pg)),
        });
        await pg.close();
      } finally {
        await admin.unsafe(`drop schema "${schema}" cascade`);
        await admin.end();
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  for (const row of rows) {
    recordFigure({
      bench: "database",
      figure: `single-row insert, median (${row.backend})`,
      value: row["insert median ms"] as number,
      unit: "ms",
    });
  }
  printTable(`database: open, migrate, ${INSERTS} sequential single-row inserts`, rows);
}

function stats(s: ReturnType<typeof summarize>) {
  return { "insert median ms": s.median, "insert p99 ms": s.p99 };
}
