import { mkdir, readdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runs, worktrees } from "../../db/schema/index.js";
import { Housekeeping } from "../../src/housekeeping.js";
import { oneBackend } from "../helpers/db.js";
import { runGit } from "../helpers/git.js";
import { startTestServer, type TestServer, testFormula } from "../helpers/test-server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe.each(oneBackend())("worktrees over REST, on %s", (backend) => {
  let t: TestServer;
  let outside: string;
  beforeAll(async () => {
    t = await startTestServer({
      backend,
      formulas: {
        crash: testFormula("crash", { agent: "crash" }),
        hold: testFormula("hold", { agent: "hang", timeout: "60s", preserve_on: ["crashed", "timed_out"] }),
      },
      agents: { crash: "crash-always", hang: "hang" },
    });
    outside = await makeTempDir("fr-outside-");
    await writeFile(path.join(outside, "precious.txt"), "do not delete");
  });
  afterAll(async () => {
    await t?.stop();
    await removeTempDir(outside);
  });

  const { db } = { db: () => t.db.database.db };
  const crashRun = async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "crash" });
    return t.waitForRun(body.id);
  };
  const age = async (worktreeId: number, hours: number) => {
    await db()
      .update(worktrees)
      .set({ preservedAt: sql`now() - make_interval(hours => ${hours})`, expiresAt: sql`now() - interval '1 minute'` })
      .where(eq(worktrees.id, worktreeId));
  };

  it("lists worktrees with their run, reason, times and size, filtered by state", async () => {
    const run = await crashRun();
    const { status, body } = await t.api("GET", "/api/worktrees?state=preserved");
    expect(status).toBe(200);
    const listed = body.worktrees.find((w: { run_id: number }) => w.run_id === run.id);
    expect(listed).toMatchObject({
      run_id: run.id,
      project: "demo",
      formula: "crash",
      path: run.worktree.path,
      state: "preserved",
      reason: "crashed",
      preserved_at: expect.any(String),
      expires_at: expect.any(String),
    });
    expect(listed.size_bytes).toBeGreaterThan(0);
    // The list (serialised by the database) says exactly what the single record says.
    const one = await t.api("GET", `/api/worktrees/${listed.id}`);
    expect(listed).toEqual(one.body.worktree);
    const bad = await t.api("GET", "/api/worktrees?state=gone");
    expect(bad.status).toBe(400);
  });

  it("pages through the list with a cursor", async () => {
    await crashRun();
    const all = (await t.api("GET", "/api/worktrees")).body.worktrees.map((w: { id: number }) => w.id);
    expect(all.length).toBeGreaterThanOrEqual(2);
    const seen: number[] = [];
    let cursor: string | null = null;
    do {
      const page: { body: { worktrees: { id: number }[]; next_cursor: string | null } } = await t.api(
        "GET",
        `/api/worktrees?limit=1${cursor ? `&cursor=${cursor}` : ""}`,
      );
      seen.push(...page.body.worktrees.map((w) => w.id));
      cursor = page.body.next_cursor;
    } while (cursor);
    expect(seen).toEqual(all);
  });

  it("DELETE removes a preserved worktree from disk and records it; 404 unknown; 409 active", async () => {
    const run = await crashRun();
    const id = run.worktree.id as number;
    const res = await t.api("DELETE", `/api/worktrees/${id}`);
    expect(res.status).toBe(200);
    expect(res.body.worktree).toMatchObject({
      id,
      state: "removed",
      removed_by: "api",
      removed_at: expect.any(String),
    });
    await expect(readdir(run.worktree.path)).rejects.toThrow();
    expect(await runGit(t.repo.clone, "worktree", "list")).not.toContain(run.worktree.path);
    // A second DELETE purges nothing, and says so instead of answering 200.
    const again = await t.api("DELETE", `/api/worktrees/${id}`);
    expect(again.status).toBe(409);
    expect(again.body.error.message).toBe(
      `worktree ${id} was not removed: already removed at ${res.body.worktree.removed_at} (by api)`,
    );
    expect(again.body.error.worktree).toMatchObject({ id, state: "removed" });
    expect((await t.api("DELETE", "/api/worktrees/987654")).status).toBe(404);

    const { body } = await t.api("POST", "/api/runs", { formula: "hold" });
    const holding = await t.waitForRun(body.id, ["running"]);
    const active = await (async () => {
      for (;;) {
        const detail = (await t.api("GET", `/api/runs/${holding.id}`)).body;
        if (detail.worktree) return detail.worktree;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const conflict = await t.api("DELETE", `/api/worktrees/${active.id}`);
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.message).toMatch(/in use by run/);
    await t.api("POST", `/api/runs/${holding.id}/cancel`);
  });

  it("purges by age, keeps the young and those whose run is active, and dry-runs", async () => {
    const old = await crashRun();
    const young = await crashRun();
    await age(old.worktree.id, 30);
    // A preserved worktree whose run is running again (a run taken over) must be kept.
    const busy = await crashRun();
    await age(busy.worktree.id, 30);
    await db().update(runs).set({ status: "running" }).where(eq(runs.id, busy.id));

    const dry = await t.api("POST", "/api/worktrees/purge", { dry_run: true });
    expect(dry.status).toBe(200);
    expect(dry.body.dry_run).toBe(true);
    expect(dry.body.purged.map((p: { id: number }) => p.id)).toContain(old.worktree.id);
    expect(dry.body.purged.map((p: { id: number }) => p.id)).not.toContain(young.worktree.id);
    expect(dry.body.kept).toContainEqual(
      expect.objectContaining({ id: busy.worktree.id, reason: expect.stringMatching(/still/) }),
    );
    expect((await readdir(old.worktree.path)).length).toBeGreaterThan(0);

    const real = await t.api("POST", "/api/worktrees/purge", { older_than_hours: 24 });
    expect(real.body.purged.map((p: { id: number }) => p.id)).toContain(old.worktree.id);
    await expect(readdir(old.worktree.path)).rejects.toThrow();
    expect((await readdir(young.worktree.path)).length).toBeGreaterThan(0);
    expect((await readdir(busy.worktree.path)).length).toBeGreaterThan(0);

    const again = await t.api("POST", "/api/worktrees/purge", {});
    expect(again.status).toBe(200);
    expect(again.body.purged).toEqual([]);
    // Once its run is over, the old one goes too.
    await db().update(runs).set({ status: "crashed" }).where(eq(runs.id, busy.id));
    const last = await t.api("POST", "/api/worktrees/purge", {});
    expect(last.body.purged.map((p: { id: number }) => p.id)).toEqual([busy.worktree.id]);
    const bad = await t.api("POST", "/api/worktrees/purge", { older_than_hours: "soon" });
    expect(bad.status).toBe(400);
    // The same age as a duration string, the syntax formulas and the CLI use.
    const asText = await t.api("POST", "/api/worktrees/purge", { older_than: "1.5h", dry_run: true });
    expect(asText.status).toBe(200);
    const badText = await t.api("POST", "/api/worktrees/purge", { older_than: "24" });
    expect(badText.status).toBe(400);
    expect(badText.body.error.message).toMatch(/"24" is not a duration: .*write 24s, 24m or 24h/);
    const both = await t.api("POST", "/api/worktrees/purge", { older_than: "1h", older_than_hours: 1 });
    expect(both.status).toBe(400);
  });

  it("refuses path traversal and symlink escapes out of WORKTREE_ROOT, deleting nothing outside", async () => {
    const escapee = path.join(t.worktreeRoot, "demo", "..", "..", path.basename(outside));
    await mkdir(path.join(t.worktreeRoot, "demo"), { recursive: true });
    const link = path.join(t.worktreeRoot, "demo", "evil-999");
    await symlink(outside, link);
    const rows = await db()
      .insert(worktrees)
      .values([
        {
          project: "demo",
          formula: "evil",
          path: escapee,
          state: "preserved",
          instanceId: t.server.services.instanceId,
          preservedAt: new Date(0),
          expiresAt: new Date(0),
        },
        {
          project: "demo",
          formula: "evil",
          path: link,
          state: "preserved",
          instanceId: t.server.services.instanceId,
          preservedAt: new Date(0),
          expiresAt: new Date(0),
        },
      ])
      .returning();
    const res = await t.api("POST", "/api/worktrees/purge", { older_than_hours: 0 });
    const kept = res.body.kept.filter((k: { id: number }) => rows.some((r) => r.id === k.id));
    expect(kept).toHaveLength(2);
    for (const k of kept) expect(k.reason).toMatch(/outside WORKTREE_ROOT|symlink/);
    expect(await readdir(outside)).toEqual(["precious.txt"]);
    for (const row of rows) {
      const del = await t.api("DELETE", `/api/worktrees/${row.id}`);
      expect(del.status).toBe(409);
    }
    expect(await readdir(outside)).toEqual(["precious.txt"]);
  });

  it("housekeeping adopts a worktree directory nobody recorded, with a fresh expiry", async () => {
    const orphan = path.join(t.worktreeRoot, "demo", "dev-4242");
    await runGit(t.repo.clone, "worktree", "add", "--detach", orphan, "HEAD");
    const housekeeping = new Housekeeping({
      worktrees: t.server.services.worktrees,
      projects: t.server.services.config.projects,
      log: t.server.services.log,
    });
    await housekeeping.runOnce();
    await housekeeping.stop();
    const { body } = await t.api("GET", "/api/worktrees?state=preserved");
    const adopted = body.worktrees.find((w: { path: string }) => w.path === orphan);
    expect(adopted).toMatchObject({ state: "preserved", reason: "adopted", formula: "dev", run_id: null });
    const ttl = Date.parse(adopted.expires_at) - Date.parse(adopted.preserved_at);
    expect(ttl).toBe(24 * 3_600_000);
  });
});
