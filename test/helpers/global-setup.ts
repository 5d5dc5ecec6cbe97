import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import postgres from "postgres";
import type { TestProject } from "vitest/node";
import { openDatabase } from "../../db/client.js";
import { migrate } from "../../db/migrate.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** TEST_DATABASE_URL when that server answered at start, else null (PGlite only). */
    postgresUrl: string | null;
    /** A migrated PGlite data directory dump; each test file loads a copy (~10x faster than migrating). */
    pgliteDump: string;
  }
}

async function reachable(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, connect_timeout: 3, onnotice: () => {} });
  try {
    await sql`select 1`;
    return true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/**
 * Runs once before all test files: decides whether PostgreSQL takes part (it does when
 * TEST_DATABASE_URL answers) and prepares a migrated PGlite dump for every file to clone.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const url = process.env.TEST_DATABASE_URL?.trim() || null;
  const postgresUrl = url && (await reachable(url)) ? url : null;
  if (url && !postgresUrl) {
    process.stderr.write(`TEST_DATABASE_URL=${url} does not answer: running on PGlite only\n`);
  }

  const dir = await mkdtemp(path.join(os.tmpdir(), "fr-pglite-dump-"));
  const database = await openDatabase({});
  await migrate(database);
  const client = (database.db as unknown as { $client: PGlite }).$client;
  const dump = await client.dumpDataDir("none");
  await database.close();
  const dumpFile = path.join(dir, "migrated.tar");
  await writeFile(dumpFile, Buffer.from(await dump.arrayBuffer()));

  project.provide("postgresUrl", postgresUrl);
  project.provide("pgliteDump", dumpFile);
  return async () => {
    await rm(dir, { recursive: true, force: true });
  };
}
