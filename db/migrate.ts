import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "./client.js";

/**
 * The drizzle-kit output folder, committed and append-only (`npm run build` copies it
 * next to the compiled file).
 */
export const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations", import.meta.url));

interface Journal {
  entries: { idx: number; tag: string; when: number }[];
}

interface Migration {
  tag: string;
  hash: string;
  statements: string[];
}

export interface MigrateResult {
  applied: string[];
  /** Migrations whose file changed after being applied (append-only was broken). */
  edited: string[];
}

/**
 * drizzle-kit qualifies foreign-key targets with "public"; dropping that qualifier applies
 * the migrations to the current schema (search_path), so one database can hold several
 * formula-runner schemas (each test file gets its own).
 */
function inCurrentSchema(statement: string): string {
  return statement.replaceAll('REFERENCES "public".', "REFERENCES ");
}

async function readMigrations(dir: string): Promise<Migration[]> {
  const journal = JSON.parse(await readFile(`${dir}/meta/_journal.json`, "utf8")) as Journal;
  const entries = [...journal.entries].sort((a, b) => a.idx - b.idx);
  return Promise.all(
    entries.map(async (entry) => {
      const text = await readFile(`${dir}/${entry.tag}.sql`, "utf8");
      return {
        tag: entry.tag,
        hash: createHash("sha256").update(text).digest("hex"),
        statements: text
          .split("--> statement-breakpoint")
          .map((s) => s.trim())
          .filter((s) => s !== ""),
      };
    }),
  );
}

/**
 * Applies the pending migrations in one transaction under an advisory lock, so two
 * instances starting together never apply one twice: the second waits, then finds
 * nothing to do. The bookkeeping table lives in the current schema (tests use one
 * schema per file).
 */
export async function migrate(database: Database, dir = MIGRATIONS_DIR): Promise<MigrateResult> {
  const migrations = await readMigrations(dir);
  return database.db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtext('formula-runner:migrate:' || current_schema()))`);
    await tx.execute(sql`
      create table if not exists formula_runner_migrations (
        tag text primary key,
        hash text not null,
        applied_at timestamptz not null default now()
      )`);
    const rows = rowsOf<{ tag: string; hash: string }>(
      await tx.execute(sql`select tag, hash from formula_runner_migrations`),
    );
    const appliedHashes = new Map(rows.map((r) => [r.tag, r.hash]));
    const result: MigrateResult = { applied: [], edited: [] };
    for (const migration of migrations) {
      const previous = appliedHashes.get(migration.tag);
      if (previous !== undefined) {
        if (previous !== migration.hash) result.edited.push(migration.tag);
        continue;
      }
      for (const statement of migration.statements) await tx.execute(sql.raw(inCurrentSchema(statement)));
      await tx.execute(
        sql`insert into formula_runner_migrations (tag, hash) values (${migration.tag}, ${migration.hash})`,
      );
      result.applied.push(migration.tag);
    }
    return result;
  });
}
