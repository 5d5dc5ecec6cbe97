import { existsSync } from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type ServerProcess, startServerProcess } from "../helpers/cli.js";
import { createTestRepo, runGit, type TestRepo } from "../helpers/git.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const TOKEN = "env-only-token-0123456789";

// What the container image does: no config file, one project from PROJECT_* variables,
// its clone made from clone_url into the data directory at start.
describe("serve with environment-only configuration", () => {
  let dir: string;
  let repo: TestRepo;
  let server: ServerProcess | undefined;

  beforeEach(async () => {
    dir = await makeTempDir("fr-env-only-");
    repo = await createTestRepo({ files: { "README.md": "# env only\n" } });
  });
  afterEach(async () => {
    await server?.stop("SIGKILL");
    server = undefined;
    await repo.cleanup();
    await removeTempDir(dir);
  });

  it("starts without a config file, clones the project and lists it as ready", { timeout: 180_000 }, async () => {
    const dataDir = path.join(dir, "data");
    server = await startServerProcess({
      cwd: dir,
      timeoutMs: 150_000,
      env: {
        DATA_DIR: dataDir,
        API_TOKEN: TOKEN,
        PROJECT_NAME: "demo",
        PROJECT_REPO: "acme/demo",
        PROJECT_CLONE_URL: repo.origin,
        PROJECT_PRIMARY_BRANCH: repo.branch,
      },
    });
    const clone = path.join(dataDir, "clones", "demo");
    expect(existsSync(path.join(clone, ".git"))).toBe(true);
    expect(await runGit(clone, "rev-parse", "HEAD")).toBe(await repo.head());
    const lines = server.lines.map((line) => JSON.parse(line) as { msg?: string; level?: number });
    expect(lines.some((l) => l.msg === `cloned demo into ${clone}`)).toBe(true);
    expect(lines.some((l) => l.msg?.includes("running with zero projects"))).toBe(false);
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
  });
});
