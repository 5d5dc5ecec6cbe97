import type { Database } from "../../db/client.js";

const cut = () => Object.assign(new Error("write CONNECTION_CLOSED 127.0.0.1:5432"), { code: "CONNECTION_CLOSED" });

/**
 * Wraps a drizzle query builder so that awaiting it fails once as a cut connection does:
 * `commit` says whether the statement ran first (its answer lost) or never reached the server.
 */
function cutOnce<T extends object>(builder: T, commit: boolean, fired: { done: boolean }): T {
  return new Proxy(builder, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop === "then" && typeof value === "function" && !fired.done) {
        fired.done = true;
        return (_resolve: (v: unknown) => void, reject: (e: unknown) => void) => {
          if (!commit) return reject(cut());
          return (value as PromiseLike<unknown>["then"]).call(target, () => reject(cut()), reject);
        };
      }
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args);
        return result !== null && typeof result === "object" ? cutOnce(result, commit, fired) : result;
      };
    },
  });
}

/**
 * The database, with the first `insert` or `update` of `table` through `db` cut like a
 * dropped connection (postgres.js's CONNECTION_CLOSED), before or after it committed.
 */
export function cutFirstWrite(
  database: Database,
  write: { method: "insert" | "update"; table: unknown; commit: boolean },
): Database {
  const fired = { done: false };
  const db = new Proxy(database.db, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop !== write.method) return typeof value === "function" ? value.bind(target) : value;
      return (table: unknown) => {
        const builder = (value as (t: unknown) => object).call(target, table);
        return table === write.table ? cutOnce(builder, write.commit, fired) : builder;
      };
    },
  });
  return { ...database, db } as Database;
}
