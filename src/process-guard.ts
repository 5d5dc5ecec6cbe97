/**
 * A last line against a database driver fault that escapes every caller: postgres.js can
 * throw from a timer or reject a promise nobody holds when a connection is cut at the
 * wrong moment (patched in patches/, but a driver has more such corners). Such an error
 * is logged and the server keeps serving: the connection is gone either way and the pool
 * makes a new one. Any other uncaught error still ends the process, as Node would, because
 * the state it leaves behind is unknown.
 */
import { isDatabaseUnavailable } from "../db/unavailable.js";
import type { Logger } from "./logger.js";

/** What the guard listens on: `process` in production, an EventEmitter in tests. */
export interface GuardedProcess {
  on(event: "uncaughtException", listener: (error: Error, origin: string) => void): unknown;
  on(event: "unhandledRejection", listener: (reason: unknown) => void): unknown;
  off(event: "uncaughtException", listener: (error: Error, origin: string) => void): unknown;
  off(event: "unhandledRejection", listener: (reason: unknown) => void): unknown;
}

/** True for an error thrown by (or on behalf of) the PostgreSQL driver about its connection. */
export function isDriverFault(error: unknown): boolean {
  if (isDatabaseUnavailable(error)) return true;
  const stack = error instanceof Error ? (error.stack ?? "") : "";
  // The first frame that is not Node's own says whose code threw.
  const frame = stack.split("\n").find((line) => /^\s+at /.test(line) && !/\(node:|\bat node:/.test(line));
  return frame !== undefined && /[\\/]node_modules[\\/]postgres[\\/]/.test(frame);
}

/**
 * Installs the guard and returns its removal. `exit` is called for any error that is not
 * a driver fault (after it is logged), with the code Node would use.
 */
export function installProcessGuard(proc: GuardedProcess, log: Logger, exit: (code: number) => void): () => void {
  let survived = 0;
  const handle = (error: unknown, origin: string) => {
    if (isDriverFault(error)) {
      survived++;
      log.error({ err: error, origin, survived }, "database driver fault outside any request; serving on");
      return;
    }
    log.fatal({ err: error, origin }, "uncaught error; exiting");
    exit(1);
  };
  const onException = (error: Error, origin: string) => handle(error, origin);
  const onRejection = (reason: unknown) => handle(reason, "unhandledRejection");
  proc.on("uncaughtException", onException);
  proc.on("unhandledRejection", onRejection);
  return () => {
    proc.off("uncaughtException", onException);
    proc.off("unhandledRejection", onRejection);
  };
}
