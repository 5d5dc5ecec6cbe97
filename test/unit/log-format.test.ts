import { describe, expect, it } from "vitest";
import { chooseLogFormat, formatLogLine } from "../../src/log-format.js";
import { createLogger } from "../../src/logger.js";
import { Secret, SecretRegistry } from "../../src/secrets.js";
import { readSettings } from "../../src/settings.js";

const at = Date.parse("2026-12-01T12:04:05.123Z");

describe("the pretty log format", () => {
  it("turns a pino line into time, level, message and fields", () => {
    const line = JSON.stringify({ level: 30, time: at, pid: 7, msg: "run 3 done", runId: 3, formula: "dev" });
    expect(formatLogLine(`${line}\n`, { color: false })).toBe("12:04:05.123 INFO  run 3 done  runId=3 formula=dev\n");
  });

  it("quotes values with spaces, shows objects as JSON and an error's stack below the line", () => {
    const err = { type: "Error", message: "boom", stack: "Error: boom\n    at x (a.ts:1:1)" };
    const line = JSON.stringify({ level: 50, time: at, msg: "failed", why: "two words", list: ["a"], err });
    expect(formatLogLine(line, { color: false })).toBe(
      '12:04:05.123 ERROR failed  why="two words" list=["a"]\n    Error: boom\n        at x (a.ts:1:1)\n',
    );
  });

  it("colours the level and dims the rest only when asked", () => {
    const line = JSON.stringify({ level: 40, time: at, msg: "careful", k: 1 });
    expect(formatLogLine(line, { color: true })).toBe(
      "\x1b[2m12:04:05.123\x1b[0m \x1b[33mWARN \x1b[0m careful  \x1b[2mk=1\x1b[0m\n",
    );
  });

  it("passes through anything that is not a JSON object", () => {
    expect(formatLogLine("plain text\n", { color: false })).toBe("plain text\n");
    expect(formatLogLine("[1,2]\n", { color: false })).toBe("[1,2]\n");
  });

  it("the logger writes pretty lines with secrets scrubbed before formatting", () => {
    const lines: string[] = [];
    const secrets = new SecretRegistry();
    secrets.add(new Secret("hunter2-token-value"));
    const log = createLogger({ destination: { write: (l) => lines.push(l) }, format: "pretty", secrets });
    log.info({ project: "demo" }, "token hunter2-token-value leaked");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}token \[redacted\] leaked {2}project=demo\n$/);
  });
});

describe("choosing the log format", () => {
  it("LOG_FORMAT forces one; unset, pretty on a terminal and JSON elsewhere; colours only pretty on a terminal without NO_COLOR", () => {
    expect(chooseLogFormat(undefined, { isTTY: true }, false)).toEqual({ format: "pretty", color: true });
    expect(chooseLogFormat(undefined, { isTTY: true }, true)).toEqual({ format: "pretty", color: false });
    expect(chooseLogFormat(undefined, {}, false)).toEqual({ format: "json", color: false });
    expect(chooseLogFormat("pretty", {}, false)).toEqual({ format: "pretty", color: false });
    expect(chooseLogFormat("json", { isTTY: true }, false)).toEqual({ format: "json", color: false });
  });

  it("LOG_FORMAT and NO_COLOR are read with the other settings; a wrong value is a problem naming the choices", () => {
    expect(readSettings({ LOG_FORMAT: "pretty", NO_COLOR: "1" }, "/").settings).toMatchObject({
      logFormat: "pretty",
      noColor: true,
    });
    expect(readSettings({}, "/").settings).toMatchObject({ logFormat: undefined, noColor: false });
    expect(readSettings({ LOG_FORMAT: "yaml" }, "/").problems).toEqual([
      'environment: LOG_FORMAT: expected json or pretty (unset: pretty on a terminal, else json), found "yaml"',
    ]);
  });
});
