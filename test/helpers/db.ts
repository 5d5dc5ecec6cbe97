import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import postgres from "postgres";
import { inject } from "vitest";
import { type Database, openDatabase } from "../../db/client.js";
import { migrate } from "../../db/migrate.js";

export type BackendKind = "pglite" | "postgres";

/**
 * The database backends this test run covers: PGlite always, PostgreSQL too when
 * TEST_DATABASE_URL answered at start. Use with `describe.each(testBackends())`.
 */
export function testBackends(): BackendKind[] {
  return inject("postgresUrl") ? ["pglite", "postgres"] : ["pglite"];
}

/**
 * The one backend of a suite whose subject is not the database (git, agents, the sandbox,
 * outputs, pages), as a one-element list for `describe.each`: PostgreSQL when this test run
 * has it, else PGlite. The database-facing suites (db, runs.*, run-log, scheduler, outbox,
 * webhooks, metrics, restart, ...) run on both, and every suite passes on PGlite alone.
 */
export function oneBackend(): BackendKind[] {
  return inject("postgresUrl") ? ["postgres"] : ["pglite"];
}

export interface TestDatabase {
  kind: BackendKind;
  database: Database;
  /**
   * For a child server process: a postgres:// URL pinned to this database's schema, or
   * undefined for PGlite (a child process must use its own DATA_DIR instead).
   */
  url: string | undefined;
  /** Closes the connection and drops the schema. */
  cleanup(): Promise<void>;
}

/**
 * A fresh, migrated database of the given kind: PostgreSQL gets a schema of its own
 * (dropped on cleanup), PGlite an in-memory copy of a migrated dump.
 */
export async function openTestDatabase(kind: BackendKind): Promise<TestDatabase> {
  if (kind === "pglite") {
    const dump = await readFile(inject("pgliteDump"));
    const database = await openDatabase({ loadDataDir: new Blob([dump]) });
    return { kind, database, url: undefined, cleanup: () => database.close() };
  }
  const base = inject("postgresUrl");
  if (!base) throw new Error("PostgreSQL is not available in this test run");
  const schema = `test_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`;
  const admin = postgres(base, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema "${schema}"`);
  const database = await openDatabase({ url: base, searchPath: schema, max: 5 });
  await migrate(database);
  const url = new URL(base);
  url.searchParams.set("search_path", schema);
  return {
    kind,
    database,
    url: url.toString(),
    cleanup: async () => {
      await database.close();
      await admin.unsafe(`drop schema if exists "${schema}" cascade`);
      await admin.end({ timeout: 5 });
    },
  };
}
