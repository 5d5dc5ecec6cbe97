import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createLocator, formatPath, locateField, parsePath } from "../../src/formulas/locate.js";

const text = `#:schema ./formula.schema.json
name = "demo"            # 2
description = """
[[steps]]
id = "not-a-step"
"""
on.dispatch = true       # 7

[on.issue_comment]       # 9
types = ["created"]
command = "/run demo"    # 11

[on]                     # 13
schedule = [
  "*/5 * * * *",         # 15
  { cron = "0 3 * * *", timezone = "Europe/Berlin" },   # 16
]

[guards]                 # 19
'min_memory_mb' = 10

[context]
commands = [["a", "b"], ["c"]]   # 23

[env]
"QUOTED_NAME" = "x"      # 26

[[steps]]                # 28
id = "one"

[[steps]]                # 31
id = "two"
needs = [
  "one",
  "zero",                # 35
]
[steps.extra]            # 37
note = 'it''s literal'   # 38
`;

describe("locateField", () => {
  const locate = createLocator(text);

  it.each([
    ["name", 2],
    ["description", 3],
    ["on", 7],
    ["on.dispatch", 7],
    ["on.issue_comment", 9],
    ["on.issue_comment.command", 11],
    ["on.schedule", 14],
    ["on.schedule[0]", 15],
    ["on.schedule[1]", 16],
    ["on.schedule[1].timezone", 16],
    ["guards", 19],
    ["guards.min_memory_mb", 20],
    ["context.commands[1]", 23],
    ["context.commands[1][0]", 23],
    ["env.QUOTED_NAME", 26],
    ["steps", 28],
    ["steps[0]", 28],
    ["steps[0].id", 29],
    ["steps[1]", 31],
    ["steps[1].needs", 33],
    ["steps[1].needs[1]", 35],
    ["steps[1].extra", 37],
    ["steps[1].extra.note", 38],
  ])("finds %s on line %d", (field, line) => {
    expect(locate(field)).toBe(line);
  });

  it("falls back to the nearest parent that is written down", () => {
    expect(locate("steps[1].title")).toBe(31);
    expect(locate("guards.on_busy")).toBe(19);
    expect(locate("on.pull_request.types")).toBe(7);
  });

  it("returns undefined for what is nowhere", () => {
    expect(locate("version")).toBeUndefined();
    expect(locate("(toml)")).toBeUndefined();
    expect(locate("steps[5]")).toBe(28);
  });

  it("ignores headers inside multi-line strings", () => {
    expect(locateField(text, "steps[0].id")).toBe(29);
  });

  it("never throws, whatever the text", () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (source, field) => {
        const line = locateField(source, field);
        expect(line === undefined || (Number.isInteger(line) && line >= 1)).toBe(true);
      }),
    );
  });
});

describe("paths", () => {
  it("formats and parses the same paths", () => {
    const paths: (string | number)[][] = [
      ["steps", 1, "needs", 0],
      ["env", "a b"],
      ["context", "commands", 0, 2],
      ["on"],
    ];
    for (const p of paths) expect(parsePath(formatPath(p))).toEqual(p);
    expect(formatPath(["steps", 1, "needs"])).toBe("steps[1].needs");
    expect(formatPath(["env", "a.b"])).toBe('env."a.b"');
  });
});
