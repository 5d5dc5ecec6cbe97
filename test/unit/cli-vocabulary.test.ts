import { describe, expect, it } from "vitest";
import { DELIVERY_OUTCOMES, RUN_STATUSES, WORKTREE_STATES } from "../../db/schema/index.js";
import { repoFromRemote } from "../../src/cli/init.js";
import { DELIVERY_OUTCOME_NAMES, RUN_STATUS_NAMES, WORKTREE_STATE_NAMES } from "../../src/cli/vocabulary.js";
import { originNames } from "../../src/clone-check.js";

describe("the CLI's copies of the schema's vocabularies", () => {
  it("name the same run statuses, worktree states and delivery outcomes as db/schema", () => {
    expect([...RUN_STATUS_NAMES]).toEqual([...RUN_STATUSES]);
    expect([...WORKTREE_STATE_NAMES]).toEqual([...WORKTREE_STATES]);
    expect([...DELIVERY_OUTCOME_NAMES]).toEqual([...DELIVERY_OUTCOMES]);
  });
});

describe("reading owner/name from a remote URL", () => {
  it.each([
    ["https://github.com/acme/widgets.git", "acme/widgets"],
    ["git@github.com:acme/widgets.git", "acme/widgets"],
    ["ssh://git@git.example.com:2222/acme/widgets", "acme/widgets"],
    ["https://git.example.com/acme/widgets/", "acme/widgets"],
  ])("%s -> %s", (url, repo) => {
    expect(repoFromRemote(url)).toBe(repo);
    expect(originNames(url, repo)).toBe(true);
    expect(originNames(url, "acme/other")).toBe(false);
  });
});
