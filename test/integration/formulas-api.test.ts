import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const scheduled = (name: string, cron: string, extra = "") =>
  testFormula(name, { on: {} }).replace(
    "[on]\ndispatch = true",
    `[on]\ndispatch = true\nschedule = [${JSON.stringify(cron)}]${extra}`,
  );

describe("GET /api/formulas and reloading", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend: "pglite",
      now: () => new Date("2026-01-15T10:00:00Z"),
      project: { formulas: ["nightly"] },
      formulas: {
        nightly: scheduled("nightly", "0 3 * * *"),
        berlin: testFormula("berlin", { on: {} }).replace(
          "[on]\ndispatch = true",
          '[on]\ndispatch = false\nschedule = [{ cron = "0 9 * * *", timezone = "Europe/Berlin" }]\n[on.issues]\ntypes = ["labeled"]\nlabels = ["backlog"]',
        ),
      },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("lists formulas with their triggers and next fire times", async () => {
    const { status, body } = await t.api("GET", "/api/formulas");
    expect(status).toBe(200);
    expect(body.formulas.map((f: { name: string }) => f.name)).toEqual(["berlin", "nightly"]);
    const [berlin, nightly] = body.formulas;
    // Opt-in: the project lists nightly only, so berlin is marked as firing nowhere.
    expect(nightly).toMatchObject({ projects: ["demo"], fires_on_no_project: false });
    expect(berlin).toMatchObject({ projects: [], fires_on_no_project: true });
    expect(nightly.triggers).toMatchObject({
      dispatch: true,
      schedule: [
        {
          cron: "0 3 * * *",
          timezone: "UTC",
          next: ["2026-01-16T03:00:00.000Z", "2026-01-17T03:00:00.000Z", "2026-01-18T03:00:00.000Z"],
        },
      ],
    });
    expect(berlin.triggers).toMatchObject({
      dispatch: false,
      schedule: [
        {
          cron: "0 9 * * *",
          timezone: "Europe/Berlin",
          next: ["2026-01-16T08:00:00.000Z", "2026-01-17T08:00:00.000Z", "2026-01-18T08:00:00.000Z"],
        },
      ],
      issues: { types: ["labeled"], labels: ["backlog"] },
    });
    expect(body.problems).toEqual([]);
  });

  it("reloads on request: new formulas appear, a broken edit keeps the last valid version", async () => {
    const dir = path.join(t.dir, "formulas");
    await writeFile(path.join(dir, "fresh.toml"), scheduled("fresh", "*/5 * * * *"));
    await writeFile(path.join(dir, "nightly.toml"), scheduled("nightly", "0 3 * * *", "\nbogus_key = 1"));
    const { status, body } = await t.api("POST", "/api/formulas/reload");
    expect(status).toBe(200);
    expect(body.formulas.map((f: { name: string }) => f.name)).toEqual(["berlin", "fresh", "nightly"]);
    expect(body.problems.map((p: { text: string }) => p.text)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/nightly\.toml:\d+: on\.bogus_key: unknown key/),
        expect.stringMatching(/nightly\.toml: \(file\): has errors: the last valid version stays in force/),
      ]),
    );
    expect(body.formulas.find((f: { name: string }) => f.name === "fresh").triggers.schedule[0].next[0]).toBe(
      "2026-01-15T10:05:00.000Z",
    );
  });
});

describe("SIGHUP (real process)", () => {
  let dir: string;
  let server: ServerProcess | undefined;
  afterEach(async () => {
    await server?.stop("SIGKILL");
    await removeTempDir(dir);
  });

  it("reloads the formulas directory", async () => {
    dir = await makeTempDir("fr-sighup-");
    await mkdir(path.join(dir, "formulas"));
    await writeFile(path.join(dir, "formulas", "one.toml"), testFormula("one"));
    server = await startServerProcess({ cwd: dir, env: { API_TOKEN: "sighup-token-0123456789" } });
    const names = async () =>
      (
        (await (
          await fetch(`${server?.url}/api/formulas`, { headers: { authorization: "Bearer sighup-token-0123456789" } })
        ).json()) as { formulas: { name: string }[] }
      ).formulas.map((f) => f.name);
    expect(await names()).toEqual(["one"]);
    await writeFile(path.join(dir, "formulas", "two.toml"), testFormula("two"));
    server.child.kill("SIGHUP");
    const deadline = Date.now() + 10_000;
    while ((await names()).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await names()).toEqual(["one", "two"]);
    expect(server.lines.some((l) => l.includes("SIGHUP: reloading formulas and schedules"))).toBe(true);
  });
});
