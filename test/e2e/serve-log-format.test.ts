import { spawn } from "node:child_process";
import { once } from "node:events";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BIN } from "../helpers/cli.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/**
 * Starts `formula-runner serve` with stdout on a pipe and collects its log lines until one
 * matches `until` (the port is bound), then kills it: the log format shows from the first line.
 */
async function serveUntil(cwd: string, env: Record<string, string>, until: RegExp): Promise<string[]> {
  const child = spawn(process.execPath, [BIN, "serve"], {
    cwd,
    env: { ...process.env, PORT: "0", LOG_LEVEL: "info", LOG_FORMAT: "", NO_COLOR: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = once(child, "exit");
  const lines: string[] = [];
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  try {
    await new Promise<void>((resolve, reject) => {
      let buffer = "";
      child.stdout.on("data", (d: Buffer) => {
        buffer += d.toString();
        const parts = buffer.split("\n");
        buffer = parts.pop() ?? "";
        lines.push(...parts);
        if (parts.some((line) => until.test(line))) resolve();
      });
      void exited.then(() => reject(new Error(`serve exited first:\n${lines.join("\n")}\n${stderr}`)));
    });
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  }
  return lines;
}

describe("the server's log format (real process)", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await makeTempDir("fr-logfmt-");
  });
  afterEach(async () => {
    await removeTempDir(dir);
  });

  it("LOG_FORMAT=pretty: readable lines, no JSON, no colours off a terminal", async () => {
    const lines = await serveUntil(dir, { LOG_FORMAT: "pretty" }, /INFO {2}bound http:/);
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) {
      expect(line).toMatch(/^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) \S/);
      expect(line).not.toContain("\x1b[");
    }
    expect(lines.find((l) => l.includes("bound http:"))).toMatch(
      /INFO {2}bound http:\/\/127\.0\.0\.1:\d+; answering 503 until ready.* {2}instanceId=\S+ url=http:\/\/127\.0\.0\.1:\d+$/,
    );
  });

  it("unset on a pipe: JSON lines, as log collectors expect", async () => {
    const lines = await serveUntil(dir, {}, /"msg":"bound http:/);
    for (const line of lines)
      expect(JSON.parse(line)).toMatchObject({ level: expect.any(Number), msg: expect.any(String) });
  });
});
