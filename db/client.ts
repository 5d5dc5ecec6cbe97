import { existsSync } from "node:fs";
import { mkdir, open, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import type { SQL } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { drizzle as drizzlePostgres } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import * as schema from "./schema/index.js";

export type Schema = typeof schema;

/** The drizzle database; the same type whichever driver is underneath. */
export type Db = PgDatabase<PgQueryResultHKT, Schema>;

/** A transaction handle, accepted wherever `Db` is. */
export type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

export type DatabaseKind = "pglite" | "postgres";

/** An open database: drizzle plus the few things that differ between drivers, hidden. */
export interface Database {
  readonly db: Db;
  readonly kind: DatabaseKind;
  /** Where it is, for logs: the PGlite directory or the URL without its password. */
  readonly location: string;
  /** Rows of a raw SQL statement (drivers disagree on the result shape; this doesn't). */
  rows<T = Record<string, unknown>>(query: SQL): Promise<T[]>;
  /** Throws when the database does not answer `select 1`. */
  ping(): Promise<void>;
  /**
   * LISTEN on `channel` (PostgreSQL only: PGlite has one process, which tells itself);
   * resolves once listening, with the function that stops it.
   */
  listen?(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** postgres:// URL: use PostgreSQL through postgres.js. */
  url?: string;
  /** PGlite data directory; undefined (with no url) means an in-memory database. */
  dataDir?: string;
  /** PGlite: start from this dump (`dumpDataDir()`), to clone a migrated database quickly. */
  loadDataDir?: Blob;
  /** PostgreSQL: run every connection with this search_path (tests give each file a schema). */
  searchPath?: string;
  /** PostgreSQL pool size. */
  max?: number;
  /** PostgreSQL: give up connecting after this many seconds (postgres.js's default: 30). */
  connectTimeoutSeconds?: number;
}

/** Opens PostgreSQL when a URL is given, otherwise PGlite. */
export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  return options.url ? openPostgres(options.url, options) : openPglite(options);
}

export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  return ((result as { rows?: T[] }).rows ?? []) as T[];
}

async function openPostgres(url: string, options: OpenDatabaseOptions): Promise<Database> {
  const client = postgres(url, {
    max: options.max ?? 10,
    ...(options.connectTimeoutSeconds === undefined ? {} : { connect_timeout: options.connectTimeoutSeconds }),
    onnotice: () => {},
    connection: options.searchPath ? { search_path: options.searchPath } : {},
  });
  const db = drizzlePostgres({ client, schema }) as unknown as Db;
  let closed = false;
  return {
    db,
    kind: "postgres",
    location: redactUrl(url),
    rows: async (query) => rowsOf(await db.execute(query)),
    ping: async () => {
      await client`select 1`;
    },
    listen: async (channel, onNotify) => {
      const { unlisten } = await client.listen(channel, (payload) => onNotify(payload));
      return unlisten;
    },
    close: async () => {
      if (closed) return;
      closed = true;
      await client.end({ timeout: 5 });
    },
  };
}

async function openPglite(options: OpenDatabaseOptions): Promise<Database> {
  let releaseLock: (() => Promise<void>) | undefined;
  if (options.dataDir) {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    releaseLock = await lockDataDir(options.dataDir);
  }
  let client: PGlite;
  try {
    const fresh = options.dataDir !== undefined && !existsSync(path.join(options.dataDir, "PG_VERSION"));
    const create = () =>
      PGlite.create({
        ...(options.dataDir ? { dataDir: options.dataDir } : {}),
        ...(options.loadDataDir ? { loadDataDir: options.loadDataDir } : {}),
        postgresqlconf: PGLITE_CONF,
      });
    client = await create();
    if (fresh) {
      // initdb leaves a large WebAssembly heap behind (~800 MB RSS) that never shrinks;
      // a new instance on the now-initialised directory starts at about a third of that.
      await client.close();
      client = await create();
    }
  } catch (error) {
    await releaseLock?.();
    throw new Error(`could not open the embedded database in ${options.dataDir ?? "memory"}`, { cause: error });
  }
  const db = drizzlePglite({ client, schema }) as unknown as Db;
  let closed = false;
  return {
    db,
    kind: "pglite",
    location: options.dataDir ?? "memory://",
    rows: async (query) => rowsOf(await db.execute(query)),
    ping: async () => {
      await client.query("select 1");
    },
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        await client.close();
      } finally {
        await releaseLock?.();
      }
    },
  };
}

/**
 * The embedded server shares the process with everything else: small buffers keep its
 * WebAssembly heap (and so the server's RSS) down; formula-runner's tables are small.
 */
const PGLITE_CONF = "shared_buffers = 16MB\nwork_mem = 4MB\nmaintenance_work_mem = 16MB\n";

/** Data directories this process holds open (a container's server is pid 1 on every start). */
const lockedHere = new Set<string>();

/** A PGlite directory must have one opener at a time; two would corrupt it. */
async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const lockFile = path.join(path.resolve(dataDir), "formula-runner.lock");
  if (lockedHere.has(lockFile)) {
    throw new Error(`the embedded database in ${dataDir} is already open in this process (${process.pid})`);
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockFile, "wx", 0o600);
      await handle.writeFile(String(process.pid));
      await handle.close();
      lockedHere.add(lockFile);
      return async () => {
        lockedHere.delete(lockFile);
        await rm(lockFile, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const holder = Number((await readFile(lockFile, "utf8").catch(() => "")).trim());
      // Our own pid in the file but not in `lockedHere`: left by an earlier process that had the same pid.
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw new Error(
          `the embedded database in ${dataDir} is in use by process ${holder}; ` +
            "stop it first, or set DATABASE_URL to share a PostgreSQL server between processes",
        );
      }
      // A lock left by a process that is gone (kill -9): take it over.
      await rm(lockFile, { force: true });
    }
  }
  throw new Error(`could not lock the embedded database in ${dataDir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The URL with its password replaced, for logs. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "redacted";
    return parsed.toString();
  } catch {
    return "postgres://(unparseable url)";
  }
}
