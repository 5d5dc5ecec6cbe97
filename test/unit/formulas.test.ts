import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { formatProblem, loadFormulas, parseFormula, validateFiles } from "../../src/formulas/load.js";

const shippedDir = fileURLToPath(new URL("../../formulas/", import.meta.url));

/** A minimal valid formula named `name`, with `extra` TOML appended. */
function source(name: string, extra = ""): string {
  return [
    `name = "${name}"`,
    `description = "A test formula"`,
    "",
    "[on]",
    "dispatch = true",
    "",
    "[[steps]]",
    'id = "only"',
    'title = "Do it"',
    'description = "Do the thing."',
    extra,
  ].join("\n");
}

const errorsOf = (problems: readonly { severity: string }[]) => problems.filter((p) => p.severity === "error");

describe("shipped formulas", () => {
  it("are the six documented ones, each starting with the schema directive", async () => {
    const names = (await readdir(shippedDir)).filter((name) => name.endsWith(".toml")).sort();
    expect(names).toEqual([
      "dev.toml",
      "gardener.toml",
      "planner.toml",
      "predictor.toml",
      "review.toml",
      "supervisor.toml",
    ]);
    for (const name of names) {
      const text = await readFile(path.join(shippedDir, name), "utf8");
      expect(text.split("\n")[0], name).toBe("#:schema ./formula.schema.json");
    }
  });

  it("all load with no problem at all", async () => {
    const { formulas, problems } = await loadFormulas(shippedDir, { agents: ["claude"] });
    expect(problems.map(formatProblem)).toEqual([]);
    expect(formulas.map((f) => f.name)).toEqual(["dev", "gardener", "planner", "predictor", "review", "supervisor"]);
  });

  it("use ordered steps, context files, a model, guards and dispatch", async () => {
    const { formulas } = await loadFormulas(shippedDir);
    for (const formula of formulas) {
      expect(formula.on.dispatch, formula.name).toBe(true);
      expect(["sonnet", "opus"], formula.name).toContain(formula.model);
      expect(formula.context.files.length, formula.name).toBeGreaterThan(0);
      expect(formula.guards.minMemoryMb, formula.name).toBeGreaterThan(0);
      expect(formula.steps.length, formula.name).toBeGreaterThan(2);
      expect(
        formula.steps.some((step) => step.needs.length > 0),
        formula.name,
      ).toBe(true);
      expect(
        formula.steps.some((step) => step.description.includes("PHASE:done")),
        formula.name,
      ).toBe(true);
    }
  });

  it("fire on the documented triggers", async () => {
    const { formulas } = await loadFormulas(shippedDir);
    const byName = new Map(formulas.map((f) => [f.name, f]));
    expect(byName.get("supervisor")?.on.schedule).toEqual([{ cron: "*/20 * * * *", timezone: "UTC" }]);
    expect(byName.get("gardener")?.on.schedule).toEqual([{ cron: "0 */6 * * *", timezone: "UTC" }]);
    expect(byName.get("planner")?.on.schedule).toHaveLength(1);
    expect(byName.get("predictor")?.on.schedule).toHaveLength(1);
    expect(byName.get("dev")?.on.issues).toEqual({ types: ["labeled"], labels: ["backlog"] });
    expect(byName.get("dev")?.on.issueComment).toEqual({ types: ["created"], command: "/run dev" });
    expect(byName.get("review")?.on.pullRequest).toEqual({ types: ["opened", "synchronize"] });
  });

  it("never hard-code a secret", async () => {
    for (const name of await readdir(shippedDir)) {
      if (!name.endsWith(".toml")) continue;
      const text = await readFile(path.join(shippedDir, name), "utf8");
      expect(text, name).not.toMatch(/gh[pousr]_[A-Za-z0-9]{20,}|Bearer [A-Za-z0-9._-]{16,}/);
    }
  });
});

describe("parseFormula", () => {
  it("reports a bad cron, an unknown key, a wrong type and a missing `needs` step: exactly four errors", () => {
    const text = [
      'name = "four"', // 1
      'description = "four problems"', // 2
      'version = "two"', // 3: wrong type
      "", // 4
      "[on]", // 5
      'schedule = ["0 25 * * *"]', // 6: hour 25
      "dispatch = true", // 7
      "", // 8
      "[guards]", // 9
      'on_bussy = "skip"', // 10: unknown key
      "", // 11
      "[[steps]]", // 12
      'id = "build"', // 13
      'title = "Build"', // 14
      'description = "Build it."', // 15
      'needs = ["setup"]', // 16: no such step
    ].join("\n");
    const { formula, problems } = parseFormula("formulas/four.toml", text);
    expect(formula).toBeUndefined();
    expect(problems.map((p) => [p.severity, p.file, p.line, p.field])).toEqual([
      ["error", "formulas/four.toml", 3, "version"],
      ["error", "formulas/four.toml", 6, "on.schedule[0]"],
      ["error", "formulas/four.toml", 10, "guards.on_bussy"],
      ["error", "formulas/four.toml", 16, "steps[0].needs[0]"],
    ]);
    const lines = problems.map(formatProblem);
    expect(lines[0]).toBe('formulas/four.toml:3: version: expected an integer, found string "two"');
    expect(lines[1]).toMatch(/^formulas\/four\.toml:6: on\.schedule\[0\]: invalid cron `0 25 \* \* \*`: .*hour/);
    expect(lines[2]).toBe("formulas/four.toml:10: guards.on_bussy: unknown key `on_bussy`; did you mean `on_busy`?");
    expect(lines[3]).toBe("formulas/four.toml:16: steps[0].needs[0]: no step `setup`");
  });

  it("requires the name to equal the file name", () => {
    const { formula, problems } = parseFormula("/srv/formulas/deploy.toml", source("release"));
    expect(formula).toBeUndefined();
    expect(problems).toEqual([
      {
        file: "/srv/formulas/deploy.toml",
        line: 1,
        field: "name",
        message: "`release` must equal the file name without .toml (`deploy`)",
        severity: "error",
      },
    ]);
  });

  it("reports a TOML syntax error with its line and column", () => {
    const text = 'name = "broken"\ndescription = "x"\n\n[guards\nmin_memory_mb = 1\n';
    const { formula, problems } = parseFormula("broken.toml", text);
    expect(formula).toBeUndefined();
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ file: "broken.toml", line: 4, field: "(toml)", severity: "error" });
    expect(problems[0]?.message).toMatch(/column \d+/);
    expect(formatProblem(problems[0]!)).toMatch(/^broken\.toml:4: \(toml\): /);
  });

  it("applies every default", () => {
    const { formula, problems } = parseFormula("formulas/minimal.toml", source("minimal"));
    expect(problems).toEqual([]);
    expect(formula).toEqual({
      file: path.resolve("formulas/minimal.toml"),
      name: "minimal",
      description: "A test formula",
      version: 1,
      agent: "claude",
      timeoutMs: 30 * 60_000,
      maxDurationMs: 2 * 3_600_000,
      preserveOn: ["crashed"],
      retentionMs: 24 * 3_600_000,
      escalationTimeoutMs: 24 * 3_600_000,
      report: "issue",
      projects: [],
      on: { schedule: [], dispatch: true },
      guards: { minMemoryMb: 0, minPermission: "write", concurrency: "{formula}-{project}", onBusy: "skip" },
      context: { files: [], commands: [] },
      env: {},
      outputs: { comment: true, labels: [], pullRequest: false, issues: false, max: 5 },
      sandbox: { allowHosts: [], forgeToken: false },
      untrustedText: "fence",
      steps: [{ id: "only", title: "Do it", description: "Do the thing.", needs: [] }],
    });
    expect(formula).not.toHaveProperty("model");
  });

  it("fills in the defaults of event tables", () => {
    const text = source("events", "").replace(
      "[on]\ndispatch = true",
      "[on.issues]\n[on.issue_comment]\n[on.pull_request]",
    );
    const { formula, problems } = parseFormula("events.toml", text);
    expect(problems).toEqual([]);
    expect(formula?.on).toEqual({
      schedule: [],
      dispatch: false,
      issues: { types: ["opened"], labels: [] },
      issueComment: { types: ["created"] },
      pullRequest: { types: ["opened", "synchronize", "reopened"] },
    });
  });

  it("returns a deep-frozen formula with an absolute file path", () => {
    const text = source("frozen", '\n[context]\ncommands = [["make", "-C", "{worktree}"]]\n[env]\nA = "1"');
    const { formula } = parseFormula("frozen.toml", text);
    expect(formula).toBeDefined();
    expect(path.isAbsolute(formula!.file)).toBe(true);
    expect(Object.isFrozen(formula)).toBe(true);
    expect(Object.isFrozen(formula!.steps[0])).toBe(true);
    expect(Object.isFrozen(formula!.context.commands[0])).toBe(true);
    expect(Object.isFrozen(formula!.env)).toBe(true);
    expect(() => (formula!.steps as unknown as unknown[]).push({})).toThrow(TypeError);
    expect(() => {
      (formula!.guards as { concurrency: string }).concurrency = "x";
    }).toThrow(TypeError);
  });

  it("warns, without failing, about a formula nothing can start", () => {
    const text = source("idle").replace("[on]\ndispatch = true", "");
    const { formula, problems } = parseFormula("idle.toml", text);
    expect(formula?.name).toBe("idle");
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ field: "on", severity: "warning" });
    expect(problems[0]?.message).toMatch(/no trigger/);
  });

  it("warns when the idle timeout can never fire before max_duration", () => {
    const { formula, problems } = parseFormula(
      "slow.toml",
      source("slow").replace("\n\n[on]", '\ntimeout = "3h"\n\n[on]'),
    );
    expect(formula).toBeDefined();
    expect(problems.map(formatProblem)).toEqual([
      "slow.toml:3: timeout: the idle timeout (3h) is not shorter than max_duration (2h), so it can never end a session",
    ]);
  });

  it("collects every problem of a file, not only the first", () => {
    const text = [
      'name = "Many"',
      "description = 1",
      'agent = ""',
      'timeout = "soon"',
      'report = "sometimes"',
      'preserve_on = ["crashed", "crashed"]',
      "steps = []",
    ].join("\n");
    const { problems } = parseFormula("many.toml", text);
    expect(problems.map((p) => p.field)).toEqual([
      "name",
      "name",
      "description",
      "agent",
      "timeout",
      "report",
      "preserve_on[1]",
      "steps",
    ]);
    expect(errorsOf(problems)).toHaveLength(8);
  });

  it("says which agents exist when the formula names another", () => {
    const text = source("agentless", "").replace(
      'description = "A test formula"',
      'description = "x"\nagent = "claud"',
    );
    const { formula, problems } = parseFormula("agentless.toml", text, { agents: ["claude", "script"] });
    expect(formula).toBeUndefined();
    expect(problems.map(formatProblem)).toEqual([
      "agentless.toml:3: agent: agent `claud` is not configured in [agents]; known agents: `claude`, `script`",
    ]);
  });

  it("checks the default agent too when agents are given", () => {
    const { problems } = parseFormula("plain.toml", source("plain"), { agents: ["script"] });
    expect(problems.map(formatProblem)).toEqual([
      "plain.toml: agent: the default agent `claude` is not configured in [agents]; known agents: `script`",
    ]);
  });
});

describe("formatProblem", () => {
  it("puts the line after the file when it is known", () => {
    expect(formatProblem({ file: "a.toml", line: 7, field: "guards", message: "m", severity: "error" })).toBe(
      "a.toml:7: guards: m",
    );
    expect(formatProblem({ file: "a.toml", field: "(file)", message: "m", severity: "error" })).toBe(
      "a.toml: (file): m",
    );
  });
});

describe("loading from disk", () => {
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "formulas-test-"));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("loads the good files when one is broken, in name order", async () => {
    await writeFile(path.join(dir, "b-good.toml"), source("b-good"));
    await writeFile(path.join(dir, "a-broken.toml"), 'name = "a-broken"\ndescription = \n');
    await writeFile(path.join(dir, "c-good.toml"), source("c-good"));
    await writeFile(path.join(dir, "notes.md"), "not a formula");
    await mkdir(path.join(dir, "sub.toml"));
    const { formulas, problems } = await loadFormulas(dir);
    expect(formulas.map((f) => f.name)).toEqual(["b-good", "c-good"]);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ file: path.join(dir, "a-broken.toml"), line: 2, field: "(toml)" });
  });

  it("reports a missing directory as a problem", async () => {
    const missing = path.join(dir, "nope");
    const { formulas, problems } = await loadFormulas(missing);
    expect(formulas).toEqual([]);
    expect(problems).toEqual([
      {
        file: missing,
        field: "(dir)",
        message: "cannot read the formulas directory: no such file or directory",
        severity: "error",
      },
    ]);
  });

  it("warns about an empty directory", async () => {
    const { problems } = await loadFormulas(dir);
    expect(problems).toMatchObject([{ field: "(dir)", severity: "warning" }]);
  });

  it("validates the files it is given, naming them as given", async () => {
    await writeFile(path.join(dir, "ok.toml"), source("ok"));
    await writeFile(path.join(dir, "wrong.toml"), source("right"));
    const missing = path.join(dir, "missing.toml");
    const problems = await validateFiles([path.join(dir, "ok.toml"), path.join(dir, "wrong.toml"), missing], {
      agents: ["claude"],
    });
    expect(problems.map(formatProblem)).toEqual([
      `${path.join(dir, "wrong.toml")}:1: name: \`right\` must equal the file name without .toml (\`wrong\`)`,
      `${missing}: (file): cannot read: no such file or directory`,
    ]);
  });

  it("warns about a file that the server would not load", async () => {
    const file = path.join(dir, "extra.txt");
    await writeFile(file, source("extra.txt"));
    const problems = await validateFiles([file]);
    expect(problems.filter((p) => p.severity === "warning").map((p) => p.message)).toEqual([
      "the file name does not end in .toml; the server only loads *.toml files",
    ]);
  });
});
