import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT, runBin } from "../helpers/cli.js";

const BROKEN = `name = "broken"
description = "four mistakes"
timout = "20m"
version = "one"

[on]
schedule = ["61 * * * *"]

[[steps]]
id = "a"
title = "A"
description = "first"
needs = ["nowhere"]
`;

describe("formula-runner CLI (real process)", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fr-cli-"));
    await writeFile(path.join(dir, "broken.toml"), BROKEN);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("validates the shipped formulas: exit 0", async () => {
    const result = await runBin(["validate"], { cwd: REPO_ROOT });
    expect(result.stdout).toContain("6 file(s) checked, 0 error(s)");
    expect(result.code).toBe(0);
  });

  it("names every problem of a broken formula, one file:line: field: message each, and exits 1", async () => {
    const result = await runBin(["validate", "broken.toml"], { cwd: dir });
    expect(result.code).toBe(1);
    const lines = result.stdout.trim().split("\n");
    expect(lines).toHaveLength(4);
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^broken\.toml:3: timout: unknown key `timout`; did you mean `timeout`\?$/),
        expect.stringMatching(/^broken\.toml:4: version: expected an integer, found string "one"$/),
        expect.stringMatching(/^broken\.toml:7: on\.schedule\[0\]: .*cron/i),
        expect.stringMatching(/^broken\.toml:13: steps\[0\]\.needs\[0\]: .*nowhere/),
      ]),
    );
    expect(result.stderr).toContain("1 file(s) checked, 4 error(s)");
  });

  it("reports a file that does not exist", async () => {
    const result = await runBin(["validate", "nope.toml"], { cwd: dir });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^nope\.toml: \(file\): /m);
  });

  it.each([[[]], [["serve"]], [["migrate"]], [["validate"]]])("prints help for %j --help and exits 0", async (args) => {
    const result = await runBin([...args, "--help"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^Usage: formula-runner/);
  });

  it("rejects an unknown command with usage help and exit 1", async () => {
    const result = await runBin(["frobnicate"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/unknown command 'frobnicate'/);
  });
});
