/**
 * Agent containment end to end (issue 9): a prompt-injected bash agent in the real sandbox
 * (bubblewrap + the filtering proxy of @anthropic-ai/sandbox-runtime) gets none of the
 * server's secrets, cannot touch the shared clone or anything outside its worktree, reaches
 * only the hosts its formula allows; its run token opens only its own run; a hook planted
 * in the clone is never run by the server; `required` refuses to run without bubblewrap.
 */
import { execFile } from "node:child_process";
import { access, chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testBackends } from "../helpers/db.js";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const run = promisify(execFile);
const exists = (file: string) =>
  access(file).then(
    () => true,
    () => false,
  );

/** A loopback HTTP server that answers every request with `answer`. */
async function answering(host: string, answer: string): Promise<{ url: string; hits: number; close(): Promise<void> }> {
  const state = { hits: 0 };
  const server = http.createServer((_req, res) => {
    state.hits += 1;
    res.end(answer);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}/`,
    get hits() {
      return state.hits;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

const probesOf = async (t: TestServer, runId: number, file: string) =>
  Object.fromEntries(
    (await readFile(path.join(t.dataDir, "runs", String(runId), "agent", "tmp", file), "utf8"))
      .trim()
      .split("\n")
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
  );

// The sandbox does not depend on the database: one backend is enough.
describe.each(testBackends().slice(0, 1))("agent containment, on %s", (backend) => {
  let t: TestServer;
  let home: string;
  let allowed: Awaited<ReturnType<typeof answering>>;
  let denied: Awaited<ReturnType<typeof answering>>;

  beforeAll(async () => {
    home = await makeTempDir("fr-home-");
    await mkdir(path.join(home, ".ssh"), { recursive: true });
    await writeFile(path.join(home, ".ssh", "id_rsa"), "PLANTED-SSH-KEY\n", { mode: 0o600 });
    allowed = await answering("127.0.0.2", "allowed-host-answer");
    denied = await answering("127.0.0.3", "denied-host-answer");
    t = await startTestServer({
      backend,
      env: { HOME: home },
      formulas: {
        hostile: testFormula("hostile", {
          agent: "hostile",
          env: { ALLOWED_URL: allowed.url, DENIED_URL: denied.url },
          sandbox: { allow_hosts: ["127.0.0.2"] },
          preserve_on: ["crashed", "failed"],
        }),
        // Unsandboxed, so the agent can reach the API on 127.0.0.1 and show what its token opens.
        token: testFormula("token", { agent: "run-token", sandbox: { mode: "off" } }),
        strict: testFormula("strict", { sandbox: { mode: "required" } }),
      },
      agents: { hostile: "hostile", "run-token": "run-token" },
    });
    await writeFile(path.join(t.dataDir, "planted-secret.txt"), "PLANTED-DATA-DIR-SECRET\n");
    await mkdir(path.join(t.worktreeRoot, "other"), { recursive: true });
    await writeFile(path.join(t.worktreeRoot, "other", "secret.txt"), "PLANTED-OTHER-WORKTREE\n");
  });
  afterAll(async () => {
    await t?.stop();
    await allowed?.close();
    await denied?.close();
    if (home) await removeTempDir(home);
  });

  it("keeps a hostile agent inside its worktree, away from secrets, the clone and other hosts", async () => {
    const hooks = path.join(t.repo.clone, ".git", "hooks");
    const configBefore = await readFile(path.join(t.repo.clone, ".git", "config"), "utf8");
    const refsBefore = (await run("git", ["-C", t.repo.clone, "for-each-ref"])).stdout;
    const { body } = await t.api("POST", "/api/runs", { formula: "hostile" });
    const done = await t.waitForRun(body.id, undefined, 120_000);
    expect(done, JSON.stringify(done)).toMatchObject({ status: "done", sandboxed: true, sandbox_note: null });
    const probes = await probesOf(t, body.id, "probes.txt");
    expect(probes).toMatchObject({
      data_dir_file: "denied",
      other_worktree: "denied",
      ssh_key: "denied",
      list_data_dir: "denied",
      proc_environ: "denied",
      plant_hook: "denied",
      clone_config: "denied",
      worktree_link: "denied",
      write_tmp: "denied",
      write_beside: "denied",
      write_worktree: "ok",
      net_allowed: "ok:allowed-host-answer",
      net_denied: "denied",
    });
    // The agent could commit, into the run's own object store: the clone is as it was.
    expect(probes.commit).toMatch(/^ok:[0-9a-f]{40}$/);
    const sha = (probes.commit as string).slice(3);
    expect(await exists(path.join(hooks, "post-checkout"))).toBe(false);
    expect(await readFile(path.join(t.repo.clone, ".git", "config"), "utf8")).toBe(configBefore);
    expect((await run("git", ["-C", t.repo.clone, "for-each-ref"])).stdout).toBe(refsBefore);
    await expect(run("git", ["-C", t.repo.clone, "cat-file", "-e", sha])).rejects.toThrow();
    const objects = path.join(t.dataDir, "runs", String(body.id), "agent", "objects");
    expect(
      (
        await run("git", ["-C", t.repo.clone, "cat-file", "-t", sha], {
          env: {
            ...process.env,
            GIT_OBJECT_DIRECTORY: objects,
            GIT_ALTERNATE_OBJECT_DIRECTORIES: path.join(t.repo.clone, ".git", "objects"),
          },
        })
      ).stdout.trim(),
    ).toBe("commit");
    expect(denied.hits).toBe(0);
    expect(allowed.hits).toBe(1);
  }, 150_000);

  it("never runs a hook planted in the clone: every server git command has hooks off", async () => {
    const marker = path.join(t.dir, "hook-ran");
    for (const hook of ["post-checkout", "reference-transaction", "pre-auto-gc"]) {
      const file = path.join(t.repo.clone, ".git", "hooks", hook);
      await writeFile(file, `#!/bin/sh\necho ${hook} >> "${marker}"\n`);
      await chmod(file, 0o755);
    }
    const { body } = await t.api("POST", "/api/runs", { formula: "strict" });
    const done = await t.waitForRun(body.id);
    expect(done.status).toBe("done");
    expect(done.worktree.state).toBe("removed");
    expect(await exists(marker)).toBe(false);
  });

  it("gives the agent a run token that opens only its own run, and only while it runs", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "token" });
    const done = await t.waitForRun(body.id);
    expect(done).toMatchObject({ status: "done", sandboxed: false });
    expect(done.sandbox_note).toContain('mode = "off"');
    expect(await probesOf(t, body.id, "api.txt")).toEqual({
      own_run: "200",
      own_log: "200",
      list_runs: "403",
      dispatch: "403",
      other_run: "403",
      cancel_own: "403",
    });
    const token = await readFile(path.join(t.dataDir, "runs", String(body.id), "agent", "tmp", "token"), "utf8");
    expect(token).toMatch(new RegExp(`^frr_${body.id}_`));
    expect(token).not.toContain(TEST_TOKEN);
    // The run is over: its token is worth nothing now.
    const after = await fetch(`${t.url}/api/runs/${body.id}`, { headers: { authorization: `Bearer ${token}` } });
    expect(after.status).toBe(401);
  });
});

describe.each(testBackends().slice(0, 1))("a host without bubblewrap, on %s", (backend) => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: {
        strict: testFormula("strict", { sandbox: { mode: "required" } }),
        relaxed: testFormula("relaxed"),
      },
      extraConfig: '[sandbox]\nbwrap = "/nonexistent/bwrap"\n',
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it('refuses a run in mode "required", saying why, before any agent starts', async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "strict" });
    const failed = await t.waitForRun(body.id);
    expect(failed).toMatchObject({ status: "failed", sandboxed: false, sessions: [] });
    expect(failed.detail).toMatch(/mode = "required" but not found: bwrap \(\/nonexistent\/bwrap\)/);
  });

  it('runs unsandboxed in mode "auto", and says so on the run', async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "relaxed" });
    const done = await t.waitForRun(body.id);
    expect(done).toMatchObject({ status: "done", sandboxed: false });
    expect(done.sandbox_note).toMatch(/no sandbox on this host \(not found: bwrap/);
  });
});
