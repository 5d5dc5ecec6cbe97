import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import { installProcessGuard, isDriverFault } from "../../src/process-guard.js";
import { SecretRegistry } from "../../src/secrets.js";

function driverTypeError(): TypeError {
  const error = new TypeError("Cannot read properties of null (reading 'write')");
  error.stack = [
    "TypeError: Cannot read properties of null (reading 'write')",
    "    at Immediate.nextWrite (file:///app/node_modules/postgres/src/connection.js:255:22)",
    "    at process.processImmediate (node:internal/timers:483:21)",
  ].join("\n");
  return error;
}

describe("process guard", () => {
  it("tells driver faults from other errors", () => {
    expect(isDriverFault(driverTypeError())).toBe(true);
    expect(isDriverFault(Object.assign(new Error("write CONNECTION_CLOSED"), { code: "CONNECTION_CLOSED" }))).toBe(
      true,
    );
    expect(isDriverFault(new Error("Failed query: select 1", { cause: { code: "57P01" } }))).toBe(true);
    expect(isDriverFault(new TypeError("x is undefined"))).toBe(false);
    expect(isDriverFault(Object.assign(new Error("duplicate key"), { code: "23505" }))).toBe(false);
    const ours = new Error("boom");
    ours.stack =
      "Error: boom\n    at run (file:///app/src/runs/run-worker.ts:1:1)\n    at x (file:///app/node_modules/postgres/src/index.js:1:1)";
    expect(isDriverFault(ours)).toBe(false); // the first frame is ours
  });

  it("logs a driver fault and keeps going; anything else is logged and exits 1", () => {
    const lines: string[] = [];
    const log = createLogger({
      level: "info",
      secrets: new SecretRegistry(),
      destination: { write: (l) => lines.push(l) },
    });
    const proc = new EventEmitter();
    const exits: number[] = [];
    const remove = installProcessGuard(proc, log, (code) => exits.push(code));
    proc.emit("uncaughtException", driverTypeError(), "uncaughtException");
    proc.emit("unhandledRejection", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }));
    expect(exits).toEqual([]);
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual([
      "database driver fault outside any request; serving on",
      "database driver fault outside any request; serving on",
    ]);
    proc.emit("uncaughtException", new TypeError("x is undefined"), "uncaughtException");
    expect(exits).toEqual([1]);
    expect(JSON.parse(lines.at(-1) as string)).toMatchObject({ level: 60, msg: "uncaught error; exiting" });
    remove();
    expect(proc.listenerCount("uncaughtException") + proc.listenerCount("unhandledRejection")).toBe(0);
  });
});
