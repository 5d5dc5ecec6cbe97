import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DELIVERY_OUTCOME_NAMES } from "../../src/cli/vocabulary.js";
import { BIN, runBin } from "../helpers/cli.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const run = promisify(execFile);

/** Every verb of the CLI as its own --help lists it (commander's own table, not a copy of the script's). */
async function verbsFromHelp(): Promise<string[]> {
  const help = await runBin(["--help"]);
  const commands = help.stdout.split("\nCommands:\n")[1] ?? "";
  return commands
    .split("\n")
    .map((line) => /^ {2}(\S+)/.exec(line)?.[1])
    .filter((verb): verb is string => verb !== undefined);
}

describe("formula-runner completion (real bash and zsh)", () => {
  let dir: string;
  let verbs: string[];
  beforeAll(async () => {
    dir = await makeTempDir("fr-completion-");
    verbs = await verbsFromHelp();
  });
  afterAll(async () => {
    await removeTempDir(dir);
  });

  it("bash sources the script, registers it, and completes every verb, subcommands, flags and choices", async () => {
    // Exactly what the help text tells a user to run.
    const registered = await run("bash", [
      "-c",
      'source <("$0" "$1" completion bash) && complete -p formula-runner',
      process.execPath,
      BIN,
    ]);
    expect(registered.stdout.trim()).toBe("complete -o default -F _formula_runner formula-runner");

    const script = (await runBin(["completion", "bash"])).stdout;
    const file = path.join(dir, "completion.bash");
    await writeFile(file, script);
    const complete = async (...words: string[]) => {
      const { stdout } = await run("bash", [
        "-c",
        'source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _formula_runner; printf "%s\\n" "${COMPREPLY[@]}"',
        file,
        "formula-runner",
        ...words,
      ]);
      return stdout.split("\n").filter(Boolean);
    };
    expect(verbs).toEqual(expect.arrayContaining(["serve", "runs", "doctor", "completion", "logs", "deliveries"]));
    expect(await complete("")).toEqual(verbs);
    expect(await complete("do")).toEqual(["doctor"]);
    expect(await complete("runs", "")).toEqual(["list", "show"]);
    expect(await complete("runs", "list", "--j")).toEqual(["--json"]);
    expect(await complete("worktrees", "list", "--state", "")).toEqual(["active", "preserved", "removed"]);
    expect(await complete("deliveries", "list", "--outcome", "")).toEqual([...DELIVERY_OUTCOME_NAMES]);
    expect(await complete("completion", "")).toEqual(["bash", "zsh"]);
    // After an option that takes any value, nothing is offered (the default file completion applies).
    expect(await complete("runs", "list", "--formula", "")).toEqual([]);
  });

  it("zsh sources the script and completes every verb the same way", async () => {
    const file = path.join(dir, "completion.zsh");
    await writeFile(file, (await runBin(["completion", "zsh"])).stdout);
    const complete = async (...words: string[]) => {
      // compadd only works inside a completion widget; outside, a function of that name records the words.
      const { stdout } = await run("zsh", [
        "-f",
        "-c",
        'source "$1"; compadd() { shift; print -l -- "$@"; }; shift; words=(formula-runner "$@"); CURRENT=$#words; _formula_runner',
        "zsh",
        file,
        ...words,
      ]);
      return stdout.split("\n").filter(Boolean);
    };
    expect(await complete("")).toEqual(verbs);
    expect(await complete("formulas", "")).toEqual(["list", "reload"]);
    expect(await complete("worktrees", "list", "--state", "")).toEqual(["active", "preserved", "removed"]);
  });

  it("an unknown shell is a usage error naming the choices", async () => {
    const result = await runBin(["completion", "fish"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("Allowed choices are bash, zsh.");
  });
});
