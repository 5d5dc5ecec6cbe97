import { describe, expect, it } from "vitest";
import { parseConfigFile } from "../../src/config.js";
import { parseFormula } from "../../src/formulas/load.js";
import { firesOn, logFiring, projectsOf } from "../../src/formulas/projects.js";
import { createLogger } from "../../src/logger.js";

const config = (projects: string) => {
  const result = parseConfigFile("/etc/fr/formula-runner.toml", projects);
  expect(result.problems).toEqual([]);
  return result.projects;
};

const formula = (name: string, projects?: string[]) => {
  const { formula: parsed, problems } = parseFormula(
    `/f/${name}.toml`,
    [
      `name = "${name}"`,
      'description = "x"',
      ...(projects ? [`projects = ${JSON.stringify(projects)}`] : []),
      "[on]",
      'schedule = ["0 3 * * *"]',
      "[[steps]]",
      'id = "s"',
      'title = "S"',
      'description = "s"',
    ].join("\n"),
  );
  expect(problems.filter((p) => p.severity === "error")).toEqual([]);
  if (!parsed) throw new Error("formula did not load");
  return parsed;
};

const PROJECTS = config(
  [
    ["quiet", "[]"],
    ["unset", undefined],
    ["picky", '["dev"]'],
    ["all", '["*"]'],
  ]
    .map(([name, formulas]) =>
      [
        "[[projects]]",
        `name = "${name}"`,
        'repo_path = "/srv/x"',
        `repo = "acme/${name}"`,
        ...(formulas ? [`formulas = ${formulas}`] : []),
      ].join("\n"),
    )
    .join("\n"),
);

describe("opt-in formulas", () => {
  it("fires a formula only where a project lists it or it lists the project; * means all", () => {
    expect(projectsOf(formula("dev"), PROJECTS)).toEqual(["picky", "all"]);
    expect(projectsOf(formula("review"), PROJECTS)).toEqual(["all"]);
    expect(projectsOf(formula("review", ["quiet"]), PROJECTS)).toEqual(["quiet", "all"]);
    expect(projectsOf(formula("review", ["*"]), PROJECTS)).toEqual(["quiet", "unset", "picky", "all"]);
    const [quiet, unset] = PROJECTS;
    if (!quiet || !unset) throw new Error("projects missing");
    expect(firesOn(formula("supervisor"), quiet)).toBe(false);
    expect(firesOn(formula("supervisor"), unset)).toBe(false);
  });

  it("refuses a formulas entry that is no formula name, and a projects entry that is no project name", () => {
    const bad = parseConfigFile(
      "/c.toml",
      '[[projects]]\nname = "a"\nrepo_path = "/x"\nrepo = "a/b"\nformulas = ["Dev Formula"]\n',
    );
    expect(bad.problems).toEqual(['/c.toml: projects[0].formulas[0]: must be a formula name or "*"']);
    const { problems } = parseFormula(
      "/f/x.toml",
      'name = "x"\ndescription = "x"\nprojects = ["../etc"]\n[on]\ndispatch = true\n[[steps]]\nid = "s"\ntitle = "S"\ndescription = "s"\n',
    );
    expect(problems.map((p) => `${p.field}: ${p.message}`)).toEqual([
      'projects[0]: "../etc" is not a project name (a slug) or "*"',
    ]);
  });

  it("logs which formulas fire where, and warns of names that match nothing", () => {
    const lines: { level: number; msg: string }[] = [];
    const log = createLogger({ level: "info", destination: { write: (l: string) => lines.push(JSON.parse(l)) } });
    const projects = config(
      '[[projects]]\nname = "demo"\nrepo_path = "/x"\nrepo = "a/b"\nformulas = ["dev", "deev"]\n',
    );
    logFiring(log, [formula("dev"), formula("supervisor", ["demoo"])], projects);
    expect(lines.map((l) => l.msg)).toEqual([
      'project demo lists formula "deev", which is not loaded (known: dev, supervisor)',
      "formula dev fires on demo",
      'formula supervisor lists project "demoo", which is not configured',
      "formula supervisor fires on no project (list it in a project's formulas = [...] to enable it)",
    ]);
  });
});
