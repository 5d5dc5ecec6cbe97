import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { runs } from "../../db/schema/index.js";
import { createApp } from "../../src/app.js";
import type { ProjectConfig } from "../../src/config.js";
import { runPaths } from "../../src/runs/run-paths.js";
import { openTestDatabase, type TestDatabase, testBackends } from "../helpers/db.js";
import { authHeaders, testServices } from "../helpers/services.js";
import { cleanupTempDirs, makeTempDir } from "../helpers/tmp.js";

const FORMULA = [
  'name = "fix"',
  'description = "A test formula"',
  "[on]",
  "dispatch = true",
  "[outputs]",
  'labels = ["triaged"]',
  "[[steps]]",
  'id = "only"',
  'title = "Do it"',
  'description = "Do the thing."',
].join("\n");

describe.each(testBackends())("POST /api/runs/:id/outputs on %s", (backend) => {
  let t: TestDatabase;
  let dataDir: string;
  let app: ReturnType<typeof createApp>;

  beforeEach(async () => {
    t = await openTestDatabase(backend);
    dataDir = await makeTempDir("fr-outputs-api-");
    const formulasDir = await makeTempDir("fr-outputs-formulas-");
    await writeFile(path.join(formulasDir, "fix.toml"), FORMULA);
    const project: ProjectConfig = {
      name: "widgets",
      repoPath: path.join(dataDir, "no-clone"),
      primaryBranch: "main",
      forge: "github",
      forgeUrl: "http://127.0.0.1:9",
      repo: "acme/widgets",
      tokenEnv: undefined,
      token: undefined,
      webhookSecretEnv: undefined,
      webhookSecret: undefined,
      botLogin: undefined,
      escalationIssue: undefined,
    };
    const services = testServices({
      database: t.database,
      env: { DATA_DIR: dataDir },
      projects: [project],
      formulasDir,
    });
    await services.formulas.reload();
    app = createApp(services);
  });

  afterEach(async () => {
    await t.cleanup();
    await cleanupTempDirs();
  });

  async function insertRun(status: "running" | "done", issue: number | null = 5): Promise<number> {
    const [run] = await t.database.db
      .insert(runs)
      .values({ formula: "fix", project: "widgets", triggerKind: "dispatch", triggerRef: "test", issue, status })
      .returning({ id: runs.id });
    return run!.id;
  }

  const post = (id: number, body: unknown) =>
    app.request(`/api/runs/${id}/outputs`, {
      method: "POST",
      headers: { ...authHeaders, "content-type": "application/json" },
      body: JSON.stringify(body),
    });

  it("decides one output or a list at once, appends them to the outputs file, and shows them on the run", async () => {
    const id = await insertRun("running");
    const one = await post(id, { type: "comment", body: "hello" });
    expect(one.status).toBe(202);
    expect(await one.json()).toEqual({
      run_id: id,
      outputs: [{ seq: 1, type: "comment", status: "queued", reason: null }],
    });

    // The agent left a line unfinished: the API's lines stay lines of their own.
    await writeFile(runPaths(dataDir, id).outputsFile, '{"type":"comment","body":"half', { flag: "a" });
    const many = await post(id, {
      outputs: [
        { type: "label", add: ["triaged"] },
        { type: "label", add: ["admin"] },
        { type: "issue", title: "t", body: "b" },
      ],
    });
    expect(many.status).toBe(202);
    expect(((await many.json()) as { outputs: unknown }).outputs).toEqual([
      { seq: 2, type: "(none)", status: "refused", reason: "not valid JSON" },
      { seq: 3, type: "label", status: "queued", reason: null },
      { seq: 4, type: "label", status: "refused", reason: expect.stringMatching(/admin/) },
      { seq: 5, type: "issue", status: "refused", reason: expect.stringMatching(/does not allow opening issues/) },
    ]);
    const file = await readFile(runPaths(dataDir, id).outputsFile, "utf8");
    expect(file.split("\n")).toHaveLength(6);

    const detail = await app.request(`/api/runs/${id}`, { headers: authHeaders });
    expect(detail.status).toBe(200);
    const { outputs } = (await detail.json()) as { outputs: Array<Record<string, unknown>> };
    expect(outputs.map((o) => [o.seq, o.type, o.status])).toEqual([
      [1, "comment", "queued"],
      [2, "(none)", "refused"],
      [3, "label", "queued"],
      [4, "label", "refused"],
      [5, "issue", "refused"],
    ]);
    expect(outputs[0]).toMatchObject({ reason: null, created_at: expect.any(String) });
  });

  it("refuses a malformed body, a finished run and an unknown run", async () => {
    const id = await insertRun("running");
    expect((await post(id, { outputs: [] })).status).toBe(400);
    expect((await post(id, { body: "no type" })).status).toBe(400);
    const done = await insertRun("done");
    const refused = await post(done, { type: "comment", body: "late" });
    expect(refused.status).toBe(409);
    expect((await post(99_999, { type: "comment", body: "x" })).status).toBe(404);
    const unauthenticated = await app.request(`/api/runs/${id}/outputs`, { method: "POST", body: "{}" });
    expect(unauthenticated.status).toBe(401);
  });
});
