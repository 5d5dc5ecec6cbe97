import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CliIo, runCli } from "../../src/cli.js";
import { parseOutputLine } from "../../src/outputs/output-schema.js";
import { runBin } from "../helpers/cli.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

describe("formula-runner output", () => {
  let dir: string;
  let file: string;
  let stdout: string;
  let stderr: string;

  beforeEach(async () => {
    dir = await makeTempDir("fr-output-cli-");
    file = path.join(dir, "outputs.jsonl");
    stdout = "";
    stderr = "";
  });
  afterEach(cleanupTempDirs);

  const io = (env: Record<string, string> = { OUTPUTS_FILE: file }, stdin = ""): CliIo => ({
    env,
    cwd: dir,
    stdout: {
      write: (text: string) => {
        stdout += text;
      },
    },
    stderr: {
      write: (text: string) => {
        stderr += text;
      },
    },
    untilSignal: () => new Promise(() => {}),
    readStdin: async () => stdin,
  });
  const lines = async () =>
    (await readFile(file, "utf8").catch(() => ""))
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as unknown);

  it("appends one checked line per request, in the format the server reads", async () => {
    expect(await runCli(["output", "comment", "--body", "Found it"], io())).toBe(0);
    expect(await runCli(["output", "label", "--add", "triaged", "--add", "bug", "--remove", "new"], io())).toBe(0);
    expect(await runCli(["output", "pull_request", "-t", "Fix", "--body-file", "-"], io(undefined, "Long\nbody"))).toBe(
      0,
    );
    const bodyFile = path.join(dir, "issue.md");
    await writeFile(bodyFile, "Details");
    expect(await runCli(["output", "issue", "--title", "Follow-up", "--body-file", bodyFile], io())).toBe(0);
    expect(await lines()).toEqual([
      { type: "comment", body: "Found it" },
      { type: "label", add: ["triaged", "bug"], remove: ["new"] },
      { type: "pull_request", title: "Fix", body: "Long\nbody" },
      { type: "issue", title: "Follow-up", body: "Details" },
    ]);
    for (const line of (await readFile(file, "utf8")).trimEnd().split("\n")) {
      expect(parseOutputLine(line).ok).toBe(true);
    }
    expect(stdout).toMatch(/comment requested/);
  });

  it("refuses an invalid request without writing, and says why", async () => {
    expect(await runCli(["output", "comment"], io())).toBe(1);
    expect(stderr).toMatch(/body/);
    expect(await runCli(["output", "merge", "--body", "x"], io())).toBe(1);
    expect(stderr).toMatch(/unknown output type "merge"/);
    expect(await runCli(["output", "issue", "--body", "no title"], io())).toBe(1);
    expect(await lines()).toEqual([]);
  });

  it("needs OUTPUTS_FILE", async () => {
    expect(await runCli(["output", "comment", "--body", "x"], io({}))).toBe(2);
    expect(stderr).toMatch(/OUTPUTS_FILE is not set/);
  });

  it("works as a real command", async () => {
    const result = await runBin(["output", "comment", "--body", "from the bin"], { env: { OUTPUTS_FILE: file } });
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(await lines()).toEqual([{ type: "comment", body: "from the bin" }]);
  });
});
