import { readFile } from "node:fs/promises";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { formatProblem, parseFormula } from "../../src/formulas/load.js";
import { checkPlaceholders, fillPlaceholders } from "../../src/formulas/placeholders.js";
import { checkCron, checkRelativePath, checkTimezone, knownKeysAt } from "../../src/formulas/schema.js";
import { closestMatch } from "../../src/validation.js";

/** A valid formula `t` with `extra` TOML (tables) after the top-level keys. */
function withTables(extra: string, topLevel = ""): string {
  return `name = "t"\ndescription = "d"\n${topLevel}\n[on]\ndispatch = true\n${extra}\n[[steps]]\nid = "s"\ntitle = "S"\ndescription = "D"\n`;
}

/** The `field: message` of every problem of `text` (as file t.toml). */
function problemsOf(text: string): string[] {
  return parseFormula("t.toml", text).problems.map((p) => `${p.field}: ${p.message}`);
}

describe("placeholders", () => {
  it("accepts the allowed placeholders in the concurrency key, and the empty key", () => {
    for (const key of ["{formula}-{project}", "{formula}-{project}-{issue}", "global", ""]) {
      const { formula, problems } = parseFormula("t.toml", withTables(`[guards]\nconcurrency = "${key}"`));
      expect(problems, key).toEqual([]);
      expect(formula?.guards.concurrency).toBe(key);
    }
  });

  it("refuses an unknown placeholder in the concurrency key", () => {
    expect(problemsOf(withTables('[guards]\nconcurrency = "{formula}-{branch}"'))).toEqual([
      "guards.concurrency: unknown placeholder {branch}; allowed: {formula}, {project}, {issue}",
    ]);
  });

  it("refuses unbalanced braces", () => {
    expect(checkPlaceholders("{formula", ["formula"])).toMatch(/unbalanced/);
    expect(checkPlaceholders("a}b", ["formula"])).toMatch(/unbalanced/);
  });

  it("allows the command placeholders in context commands and nothing else", () => {
    const good = '["tool", "{worktree}", "{project}", "{formula}", "{run_id}", "{repo_root}", "{primary_branch}"]';
    expect(problemsOf(withTables(`[context]\ncommands = [${good}]`))).toEqual([]);
    expect(problemsOf(withTables('[context]\ncommands = [["tool", "--out={issue}"]]'))).toEqual([
      "context.commands[0][1]: unknown placeholder {issue}; allowed: {worktree}, {project}, {formula}, {run_id}, {repo_root}, {primary_branch}",
    ]);
  });

  it("refuses empty commands and an empty program", () => {
    expect(problemsOf(withTables('[context]\ncommands = [[], ["", "x"]]'))).toEqual([
      "context.commands[0]: a command needs at least the program to run",
      "context.commands[1][0]: the program name must not be empty",
    ]);
  });

  it("fills placeholders, leaving missing values empty", () => {
    expect(fillPlaceholders("{formula}-{project}-{issue}", { formula: "dev", project: "demo" })).toBe("dev-demo-");
    expect(fillPlaceholders("{formula}#{issue}", { formula: "dev", issue: 12 })).toBe("dev#12");
    expect(fillPlaceholders("{constructor}", {})).toBe("");
  });
});

describe("[env]", () => {
  it("accepts POSIX names with string values", () => {
    const { formula, problems } = parseFormula("t.toml", withTables('[env]\nCI = "1"\n_private = "x"\nLEVEL2 = ""'));
    expect(problems).toEqual([]);
    expect(formula?.env).toEqual({ CI: "1", _private: "x", LEVEL2: "" });
  });

  it("refuses names that are not environment variable names", () => {
    expect(problemsOf(withTables('[env]\n"2FAST" = "x"\n"WITH-DASH" = "y"'))).toEqual([
      'env.2FAST: "2FAST" is not an environment variable name: use letters, digits and "_", not starting with a digit',
      'env.WITH-DASH: "WITH-DASH" is not an environment variable name: use letters, digits and "_", not starting with a digit',
    ]);
  });

  it.each([
    "PHASE_FILE",
    "SCRATCH_FILE",
    "OUTPUTS_FILE",
    "FORMULA_RUNNER_URL",
    "FORMULA_RUNNER_TOKEN",
    "RUN_ID",
    "FORMULA",
    "PROJECT",
    "PROJECT_REPO_ROOT",
    "WORKTREE",
    "PRIMARY_BRANCH",
    "ISSUE",
    "ESCALATION_REPLY",
  ])("refuses the reserved name %s", (name) => {
    const [problem] = problemsOf(withTables(`[env]\n${name} = "x"`));
    expect(problem).toMatch(new RegExp(`^env\\.${name}: "${name}" is set by the server for every run`));
  });

  it("refuses values that are not strings", () => {
    expect(problemsOf(withTables("[env]\nRETRIES = 3\nDEBUG = true"))).toEqual([
      "env.RETRIES: expected a string, found integer 3",
      "env.DEBUG: expected a string, found boolean true",
    ]);
  });
});

describe("[context] files", () => {
  it("accepts paths inside the repository", () => {
    for (const file of ["AGENTS.md", "docs/plan.md", "./README.md", "docs/../VISION.md"]) {
      expect(checkRelativePath(file), file).toBeUndefined();
    }
  });

  it.each([
    ["/etc/passwd", /absolute/],
    ["C:\\secrets.txt", /absolute/],
    ["../other/README.md", /leaves the project's repository/],
    ["docs/../../x", /leaves the project's repository/],
    ["..", /leaves/],
    ["", /empty/],
  ])("refuses %j", (file, reason) => {
    expect(checkRelativePath(file)).toMatch(reason);
  });

  it("reports each bad path with its index", () => {
    expect(problemsOf(withTables('[context]\nfiles = ["ok.md", "/abs", "../up", "ok.md"]'))).toEqual([
      "context.files[1]: `/abs` is absolute; give a path relative to the project's repository",
      "context.files[2]: `../up` leaves the project's repository through `..`",
      'context.files[3]: "ok.md" is listed twice',
    ]);
  });
});

describe("[on] schedule", () => {
  it.each(["*/20 * * * *", "0 0 6 * * 1-5", "@daily", "0 9 * * MON"])("accepts %j", (cron) => {
    expect(checkCron(cron)).toBeUndefined();
  });

  it.each([
    ["61 * * * *", /minute/],
    ["* * *", /has 3 fields/],
    ["0 0 0 * * * *", /has 7 fields/],
    ["", /has 0 fields/],
    ["@sometimes", /unknown cron nickname/],
    ["0 0 31 2 *", /never fires/],
  ])("refuses %j", (cron, reason) => {
    expect(checkCron(cron)).toMatch(reason);
  });

  it("checks time zone names", () => {
    expect(checkTimezone("Europe/Berlin")).toBeUndefined();
    expect(checkTimezone("UTC")).toBeUndefined();
    expect(checkTimezone("Mars/Olympus_Mons")).toMatch(/unknown time zone/);
  });

  it("reads strings as UTC and tables in their zone", () => {
    const text = withTables("", "").replace(
      "[on]\ndispatch = true",
      '[on]\nschedule = ["0 6 * * *", { cron = "0 7 * * *", timezone = "Europe/Berlin" }, { cron = "@hourly" }]',
    );
    const { formula, problems } = parseFormula("t.toml", text);
    expect(problems).toEqual([]);
    expect(formula?.on.schedule).toEqual([
      { cron: "0 6 * * *", timezone: "UTC" },
      { cron: "0 7 * * *", timezone: "Europe/Berlin" },
      { cron: "@hourly", timezone: "UTC" },
    ]);
  });

  it("explains bad schedule entries of every kind", () => {
    const text = withTables("").replace(
      "[on]\ndispatch = true",
      "[on]\nschedule = [\n" +
        "  5,\n" +
        '  { cron = "0 7 * * *", timezone = "Nowhere/Land" },\n' +
        '  { cron = "0 7 * * *", tz = "UTC" },\n' +
        '  { timezone = "UTC" },\n' +
        "]",
    );
    expect(parseFormula("t.toml", text).problems.map(formatProblem)).toEqual([
      "t.toml:6: on.schedule[0]: expected a string or a table, found integer 5",
      't.toml:7: on.schedule[1].timezone: unknown time zone `Nowhere/Land`; use an IANA name such as "UTC" or "Europe/Berlin"',
      "t.toml:8: on.schedule[2].tz: unknown key `tz`; known keys: cron, timezone",
      "t.toml:9: on.schedule[3].cron: required key is missing (expected a string)",
    ]);
  });
});

describe("[on] events", () => {
  it("refuses unknown actions with a hint", () => {
    expect(problemsOf(withTables('[on.issues]\ntypes = ["labelled"]'))).toEqual([
      'on.issues.types[0]: expected one of opened, labeled, unlabeled, closed, reopened, edited; found string "labelled"; did you mean `labeled`?',
    ]);
  });

  it("refuses an empty types list and empty commands", () => {
    expect(problemsOf(withTables('[on.pull_request]\ntypes = []\n[on.issue_comment]\ncommand = ""'))).toEqual([
      "on.pull_request.types: must name at least one type; leave the table out to not fire on these events",
      "on.issue_comment.command: must not be empty",
    ]);
  });

  it("keeps branches and labels", () => {
    const text = withTables(
      '[on.pull_request]\nbranches = ["main"]\n[on.issues]\ntypes = ["opened", "labeled"]\nlabels = ["bug"]',
    );
    const { formula, problems } = parseFormula("t.toml", text);
    expect(problems).toEqual([]);
    expect(formula?.on.pullRequest).toEqual({ types: ["opened", "synchronize", "reopened"], branches: ["main"] });
    expect(formula?.on.issues).toEqual({ types: ["opened", "labeled"], labels: ["bug"] });
  });
});

describe("[guards] and top-level values", () => {
  it("say what was expected and what was found", () => {
    const text = withTables(
      '[guards]\nmin_memory_mb = -1\nmin_permission = "owner"\non_busy = "wait"',
      'version = 0\nmodel = 4\ntimeout = "0s"\nmax_duration = "90 min"\ndispatch = true',
    );
    expect(problemsOf(text)).toEqual([
      "version: must be 1 or more",
      "model: expected a string, found integer 4",
      "timeout: must be longer than zero",
      'max_duration: "90 min" is not a duration: write a number and a unit, like 90s, 20m, 1.5h, 2d or 1h30m',
      "dispatch: unknown key `dispatch`; known keys: name, description, version, agent, model, timeout, max_duration, preserve_on, retention, escalation_timeout, report, sandbox, untrusted_text, projects, on, guards, context, env, outputs, steps",
      "guards.min_memory_mb: must be 0 or more",
      'guards.min_permission: expected one of read, triage, write, maintain, admin; found string "owner"',
      'guards.on_busy: expected one of skip, queue, cancel-running; found string "wait"',
    ]);
  });

  it("names TOML types: floats, tables, arrays, dates", () => {
    expect(problemsOf(withTables("[guards]\nmin_memory_mb = 1.5"))).toEqual([
      "guards.min_memory_mb: expected an integer, found float 1.5",
    ]);
    expect(problemsOf(withTables("", "report = [1]\nretention = 1979-05-27\nagent = { x = 1 }"))).toEqual([
      "report: expected one of issue, always, never; found an array",
      "retention: expected a string, found a date",
      "agent: expected a string, found a table",
    ]);
  });

  it("suggests a key for typos and prefixes, and lists the keys otherwise", () => {
    expect(problemsOf(withTables("", 'desc = "x"'))[0]).toBe("desc: unknown key `desc`; did you mean `description`?");
    expect(problemsOf(withTables("[gaurds]\nmin_memory_mb = 1"))[0]).toBe(
      "gaurds: unknown key `gaurds`; did you mean `guards`?",
    );
    expect(problemsOf(withTables('[context]\nfile = ["a"]'))[0]).toBe(
      "context.file: unknown key `file`; did you mean `files`?",
    );
    expect(problemsOf(withTables('[context]\nzzz = ["a"]'))[0]).toBe(
      "context.zzz: unknown key `zzz`; known keys: files, commands",
    );
  });
});

describe("[[steps]]", () => {
  const steps = (...bodies: string[]) =>
    `name = "t"\ndescription = "d"\n[on]\ndispatch = true\n` +
    bodies.map((body) => `[[steps]]\ntitle = "T"\ndescription = "D"\n${body}\n`).join("");

  it("accepts needs on earlier steps", () => {
    const { formula, problems } = parseFormula(
      "t.toml",
      steps('id = "a"', 'id = "b"\nneeds = ["a"]', 'id = "c"\nneeds = ["a", "b"]'),
    );
    expect(problems).toEqual([]);
    expect(formula?.steps.map((s) => s.needs)).toEqual([[], ["a"], ["a", "b"]]);
  });

  it("refuses needs on later, missing, own and repeated steps, and duplicate ids", () => {
    const text = steps('id = "a"\nneeds = ["b"]', 'id = "b"\nneeds = ["b", "a", "a", "ghost"]', 'id = "a"');
    expect(problemsOf(text)).toEqual([
      "steps[0].needs[0]: step `b` comes later (steps[1]); needs may only name earlier steps",
      "steps[1].needs[0]: step `b` cannot need itself",
      "steps[1].needs[2]: `a` is listed twice",
      "steps[1].needs[3]: no step `ghost`; earlier steps: a",
      "steps[2].id: duplicate step id `a` (already used by steps[0])",
    ]);
  });

  it("still checks needs when a step has other problems", () => {
    const text =
      'name = "t"\ndescription = "d"\n[on]\ndispatch = true\n' +
      '[[steps]]\nid = "a"\ntitle = 1\ndescription = "D"\n' +
      '[[steps]]\nid = "B"\ntitle = "T"\ndescription = "D"\nneeds = ["nope"]\n';
    expect(problemsOf(text)).toEqual([
      "steps[0].title: expected a string, found integer 1",
      'steps[1].id: "B" is not a valid step id: use lowercase letters, digits and "-", starting with a letter or digit',
      "steps[1].needs[0]: no step `nope`; earlier steps: a",
    ]);
  });

  it("requires at least one step, with a title and a description", () => {
    expect(problemsOf('name = "t"\ndescription = "d"\n[on]\ndispatch = true\n')).toEqual([
      "steps: required key is missing (expected an array)",
    ]);
    expect(problemsOf('name = "t"\ndescription = "d"\nsteps = []\n[on]\ndispatch = true\n')).toEqual([
      "steps: a formula needs at least one [[steps]] table",
    ]);
    expect(problemsOf('name = "t"\ndescription = "d"\n[on]\ndispatch = true\n[[steps]]\nid = "a"\n')).toEqual([
      "steps[0].title: required key is missing (expected a string)",
      "steps[0].description: required key is missing (expected a string)",
    ]);
  });
});

describe("knownKeysAt and closestMatch", () => {
  it("knows the keys of every table", () => {
    expect(knownKeysAt([])).toContain("escalation_timeout");
    expect(knownKeysAt(["on"])).toEqual(["schedule", "dispatch", "issues", "issue_comment", "pull_request"]);
    expect(knownKeysAt(["on", "schedule", 0])).toEqual(["cron", "timezone"]);
    expect(knownKeysAt(["steps", 3])).toEqual(["id", "title", "description", "needs"]);
    expect(knownKeysAt(["env"])).toBeUndefined();
    expect(knownKeysAt(["nothing", "here"])).toBeUndefined();
  });

  it("suggests only plausible typos", () => {
    expect(closestMatch("on_bussy", ["on_busy", "concurrency"])).toBe("on_busy");
    expect(closestMatch("timeout_ms", ["timeout", "max_duration"])).toBe("timeout");
    expect(closestMatch("c", ["a", "b"])).toBeUndefined();
    expect(closestMatch("zzzz", ["files", "commands"])).toBeUndefined();
  });
});

describe("robustness", () => {
  it("never throws on arbitrary text", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), (text) => {
        const result = parseFormula("fuzz.toml", text);
        expect(result.formula !== undefined || result.problems.some((p) => p.severity === "error")).toBe(true);
        // parseFormula turns an internal exception into a problem; none may reach that net.
        expect(result.problems.filter((p) => p.message.startsWith("could not be checked"))).toEqual([]);
      }),
      { numRuns: 500 },
    );
  });

  it("never throws on shuffled and mangled lines of real formulas", async () => {
    const lines = (await readFile(new URL("../../formulas/dev.toml", import.meta.url), "utf8")).split("\n");
    const noise = ["[[steps]]", "[on]", "x = ", 'needs = ["nope"]', "[guards", '"""', "timeout = 5", "[env]\nA.B = 1"];
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...lines, ...noise), { maxLength: 60 }), (picked) => {
        const result = parseFormula("dev.toml", picked.join("\n"));
        expect(result.problems.filter((p) => p.message.startsWith("could not be checked"))).toEqual([]);
        for (const problem of result.problems) {
          expect(problem.file).toBe("dev.toml");
          expect(problem.line === undefined || problem.line >= 1).toBe(true);
        }
      }),
      { numRuns: 300 },
    );
  });
});
