/**
 * Worktree costs: what `WorktreeManager.create` adds on top of plain git, how much faster
 * the bulk purge (delete directories, one prune) is than the bash design's loop of
 * `git worktree remove --force`, and how long listing 10,000 rows takes.
 */
import path from "node:path";
import { execa } from "execa";
import { type Database, openDatabase } from "../db/client.js";
import { migrate } from "../db/migrate.js";
import { type NewWorktree, runs, worktrees } from "../db/schema/index.js";
import type { ProjectConfig } from "../src/config.js";
import { silentLogger } from "../src/logger.js";
import { WorktreeManager } from "../src/worktrees/worktree-manager.js";
import { createTestRepo, type TestRepo } from "../test/helpers/git.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import { printTable, recordFigure, summarize } from "./stats.js";

const CREATE_ROUNDS = 30;
const BURST = 5;
const PURGE_WORKTREES = 1_000;
const FILES_PER_WORKTREE = 50;
const LIST_ROWS = 10_000;
const HOUR = 3_600_000;

/** Plain git, as the bash design ran it: one process per command, nothing in between. */
async function git(repo: string, ...args: string[]): Promise<void> {
  await execa("git", ["-C", repo, ...args], { stdin: "ignore" });
}

function projectOf(repo: TestRepo): ProjectConfig {
  return {
    name: "bench",
    repoPath: repo.clone,
    primaryBranch: repo.branch,
    forge: "github",
    forgeUrl: "https://api.github.com",
    repo: "bench/bench",
    tokenEnv: undefined,
    token: undefined,
    webhookSecretEnv: undefined,
    webhookSecret: undefined,
    botLogin: undefined,
    escalationIssue: undefined,
  };
}

async function insertRuns(database: Database, count: number): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 0; i < count; i += 1_000) {
    const rows = await database.db
      .insert(runs)
      .values(
        Array.from({ length: Math.min(1_000, count - i) }, (_, j) => ({
          formula: "dev",
          project: "bench",
          triggerKind: "dispatch" as const,
          triggerRef: `b${i + j}`,
          status: "crashed" as const,
        })),
      )
      .returning({ id: runs.id });
    ids.push(...rows.map((r) => r.id));
  }
  return ids;
}

async function timed(task: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await task();
  return performance.now() - started;
}

async function benchCreate(
  database: Database,
  repo: TestRepo,
  root: string,
): Promise<Record<string, string | number>[]> {
  const project = projectOf(repo);
  const manager = new WorktreeManager({ env: process.env, database, root, instanceId: "bench", log: silentLogger() });
  const plainRoot = path.join(root, "plain");
  const runIds = await insertRuns(database, CREATE_ROUNDS + BURST * CREATE_ROUNDS);
  const create: number[] = [];
  const add: number[] = [];
  const fetchAdd: number[] = [];
  const fetchOnly: number[] = [];
  // Interleaved, so drift of the machine (page cache, other load) hits all three alike.
  for (let i = 0; i < CREATE_ROUNDS; i++) {
    create.push(await timed(() => manager.create({ runId: runIds[i] as number, project, formula: "dev" })));
    add.push(
      await timed(() =>
        git(repo.clone, "worktree", "add", "--quiet", "--detach", path.join(plainRoot, `a-${i}`), "origin/main"),
      ),
    );
    fetchOnly.push(
      await timed(() =>
        git(repo.clone, "fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main"),
      ),
    );
    fetchAdd.push(
      await timed(async () => {
        await git(repo.clone, "fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main");
        await git(repo.clone, "worktree", "add", "--quiet", "--detach", path.join(plainRoot, `f-${i}`), "origin/main");
      }),
    );
  }
  // A burst of runs of one project: creates queue on the clone and share fetches.
  const burst: number[] = [];
  const burstPlain: number[] = [];
  for (let i = 0; i < CREATE_ROUNDS; i++) {
    const ids = runIds.slice(CREATE_ROUNDS + i * BURST, CREATE_ROUNDS + (i + 1) * BURST);
    burst.push(
      (await timed(() => Promise.all(ids.map((runId) => manager.create({ runId, project, formula: "dev" }))))) / BURST,
    );
    burstPlain.push(
      (await timed(async () => {
        for (let j = 0; j < BURST; j++) {
          await git(repo.clone, "fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main");
          await git(
            repo.clone,
            "worktree",
            "add",
            "--quiet",
            "--detach",
            path.join(plainRoot, `b-${i}-${j}`),
            "origin/main",
          );
        }
      })) / BURST,
    );
  }
  const m = (samples: number[]) => summarize(samples).median;
  const fair = m(fetchAdd);
  return [
    {
      operation: "WorktreeManager.create (fetch, FETCH_HEAD read, add, HEAD check, insert)",
      "median ms": m(create),
      "p99 ms": summarize(create).p99,
      "vs fetch + add": `${(m(create) / fair).toFixed(2)}x`,
    },
    {
      operation: "plain git fetch + git worktree add --detach",
      "median ms": fair,
      "p99 ms": summarize(fetchAdd).p99,
      "vs fetch + add": "1.00x",
    },
    {
      operation: "plain git worktree add --detach (no fetch)",
      "median ms": m(add),
      "p99 ms": summarize(add).p99,
      "vs fetch + add": `${(m(add) / fair).toFixed(2)}x`,
    },
    {
      operation: "plain git fetch alone (origin unchanged, local remote)",
      "median ms": m(fetchOnly),
      "p99 ms": summarize(fetchOnly).p99,
      "vs fetch + add": `${(m(fetchOnly) / fair).toFixed(2)}x`,
    },
    {
      operation: `${BURST} concurrent creates, per run (fetches shared)`,
      "median ms": m(burst),
      "p99 ms": summarize(burst).p99,
      "vs fetch + add": `${(m(burst) / fair).toFixed(2)}x`,
    },
    {
      operation: `${BURST} sequential fetch + add, per run`,
      "median ms": m(burstPlain),
      "p99 ms": summarize(burstPlain).p99,
      "vs fetch + add": `${(m(burstPlain) / fair).toFixed(2)}x`,
    },
  ];
}

async function benchPurge(
  database: Database,
  repo: TestRepo,
  root: string,
): Promise<Record<string, string | number>[]> {
  const project = projectOf(repo);
  const manager = new WorktreeManager({ env: process.env, database, root, instanceId: "bench", log: silentLogger() });
  // Two identical sets, made with plain git (set-up is not what is measured).
  const managed: string[] = [];
  const looped: string[] = [];
  const runIds = await insertRuns(database, PURGE_WORKTREES);
  for (let i = 0; i < PURGE_WORKTREES; i++) {
    const a = path.join(root, "bench", `dev-${runIds[i]}`);
    const b = path.join(root, "loop", `dev-${i}`);
    await git(repo.clone, "worktree", "add", "--quiet", "--detach", a, "origin/main");
    await git(repo.clone, "worktree", "add", "--quiet", "--detach", b, "origin/main");
    managed.push(a);
    looped.push(b);
  }
  const past = new Date(Date.now() - HOUR);
  const rows: NewWorktree[] = managed.map((p, i) => ({
    runId: runIds[i] as number,
    project: "bench",
    formula: "dev",
    path: p,
    state: "preserved",
    reason: "crashed",
    instanceId: "bench",
    preservedAt: new Date(past.getTime() - 24 * HOUR),
    expiresAt: past,
  }));
  for (let i = 0; i < rows.length; i += 1_000) await database.db.insert(worktrees).values(rows.slice(i, i + 1_000));

  let purged = 0;
  const purgeMs = await timed(async () => {
    purged = (await manager.purge({ expiredOnly: true, by: "housekeeping", projects: [project] })).purged.length;
  });
  if (purged !== PURGE_WORKTREES) throw new Error(`purge removed ${purged} of ${PURGE_WORKTREES}`);
  const loopMs = await timed(async () => {
    for (const dir of looped) await git(repo.clone, "worktree", "remove", "--force", dir);
  });
  const registered = (await execa("git", ["-C", repo.clone, "worktree", "list", "--porcelain"])).stdout;
  const stale = managed
    .concat(looped)
    .filter((dir) => registered.includes(`worktree ${dir}\n`) || registered.endsWith(`worktree ${dir}`));
  if (stale.length > 0) throw new Error(`${stale.length} removed worktrees are still registered, like ${stale[0]}`);
  return [
    {
      method: "WorktreeManager.purge({expiredOnly}) (rm -r each, one prune, one UPDATE)",
      worktrees: PURGE_WORKTREES,
      "total ms": Math.round(purgeMs),
      "per worktree ms": purgeMs / PURGE_WORKTREES,
      "speed-up": `${(loopMs / purgeMs).toFixed(1)}x`,
    },
    {
      method: "bash loop: git worktree remove --force <dir>, one per worktree",
      worktrees: PURGE_WORKTREES,
      "total ms": Math.round(loopMs),
      "per worktree ms": loopMs / PURGE_WORKTREES,
      "speed-up": "1.0x",
    },
  ];
}

async function benchList(database: Database, root: string): Promise<Record<string, string | number>[]> {
  const manager = new WorktreeManager({ env: process.env, database, root, instanceId: "bench", log: silentLogger() });
  const now = new Date();
  for (let i = 0; i < LIST_ROWS; i += 1_000) {
    await database.db.insert(worktrees).values(
      Array.from({ length: 1_000 }, (_, j) => ({
        project: "listing",
        formula: "dev",
        path: path.join(root, "listing", `dev-${i + j}`),
        state: "preserved" as const,
        reason: "crashed",
        instanceId: "bench",
        preservedAt: now,
        expiresAt: new Date(now.getTime() + 24 * HOUR),
        sizeBytes: 123_456,
      })),
    );
  }
  const samples: number[] = [];
  let count = 0;
  for (let i = 0; i < 10; i++) {
    samples.push(
      await timed(async () => {
        count = (await manager.list({ project: "listing", limit: LIST_ROWS })).length;
      }),
    );
  }
  if (count !== LIST_ROWS) throw new Error(`list returned ${count} rows`);
  const s = summarize(samples);
  return [
    { method: `list({limit: ${LIST_ROWS}})`, rows: count, "median ms": s.median, "max ms": Math.max(...samples) },
  ];
}

/** Creation overhead, bulk purge vs the bash loop, and listing: two Markdown tables (plus the listing row). */
export async function benchWorktrees(): Promise<void> {
  const repo = await createTestRepo({
    files: Object.fromEntries(
      Array.from({ length: FILES_PER_WORKTREE }, (_, i) => [`src/file-${i}.txt`, `line ${i}\n`.repeat(20)]),
    ),
  });
  const tmp = await makeTempDir("fr-bench-wt-");
  const database = await openDatabase({});
  try {
    await migrate(database);
    const root = path.join(tmp, "worktrees");
    const create = await benchCreate(database, repo, path.join(root, "create"));
    printTable(
      `worktrees: creation, median of ${CREATE_ROUNDS} (local bare origin, ${FILES_PER_WORKTREE} files; PGlite in memory)`,
      create,
    );
    const [managed, plain] = create;
    if (managed && plain) {
      recordFigure({
        bench: "worktrees",
        figure: "WorktreeManager.create, median",
        value: managed["median ms"] as number,
        unit: "ms",
        baseline: { name: "plain git fetch + worktree add", value: plain["median ms"] as number },
      });
    }
    const purge = await benchPurge(database, repo, path.join(root, "purge"));
    const [bulk, loop] = purge;
    if (bulk && loop) {
      recordFigure({
        bench: "worktrees",
        figure: `purge of ${PURGE_WORKTREES} preserved worktrees, total`,
        value: bulk["total ms"] as number,
        unit: "ms",
        baseline: { name: "bash loop of git worktree remove", value: loop["total ms"] as number },
      });
    }
    const list = await benchList(database, root);
    printTable(
      `worktrees: removing ${PURGE_WORKTREES} preserved worktrees of ${FILES_PER_WORKTREE} files each; listing ${LIST_ROWS} rows`,
      [
        ...purge,
        ...list.map((l) => ({
          method: l.method as string,
          worktrees: l.rows as number,
          "total ms": l["median ms"] as number,
          "per worktree ms": (l["median ms"] as number) / LIST_ROWS,
          "speed-up": `max ${(l["max ms"] as number).toFixed(1)} ms`,
        })),
      ],
    );
  } finally {
    await database.close();
    await repo.cleanup();
    await removeTempDir(tmp);
  }
}
