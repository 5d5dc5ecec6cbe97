/**
 * The purge half of the chaos run, in rounds: dispatch a few `crashy` runs of project
 * `victim` (their worktrees end preserved), plant hostile content in those worktrees, then
 * purge them (the purge endpoint and DELETE by id, in parallel) while a racer swaps their
 * parent directories for symlinks into the sentinel tree. New worktrees are only made
 * between rounds: the race is on the purge, as in issue 10.
 */
import path from "node:path";
import { API_TOKEN } from "./environment.js";
import { plantHostileContent, SymlinkRacer } from "./sentinel.js";
import type { Answer, Traffic } from "./traffic.js";

const jsonAuth = { authorization: `Bearer ${API_TOKEN}`, "content-type": "application/json" };
const FINAL = new Set(["done", "failed", "crashed", "timed_out", "cancelled", "skipped"]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface PurgeFigures {
  rounds: number;
  victimRuns: number[];
  /** Worktrees reported purged by a purge or a DELETE. */
  purged: number;
  /** Times a purge kept a worktree, by reason (the reason's first words). */
  keptReasons: Record<string, number>;
  swaps: number;
}

export async function purgeRounds(opts: {
  traffic: Traffic;
  worktreeRoot: string;
  outside: string;
  gitRedirect: string;
  random: () => number;
  signal: AbortSignal;
  log: (line: string) => void;
  /** Called once the first worktrees are preserved (before any fault starts). */
  onWarm: () => void;
}): Promise<PurgeFigures> {
  const figures: PurgeFigures = { rounds: 0, victimRuns: [], purged: 0, keptReasons: {}, swaps: 0 };
  const { traffic } = opts;
  /** Retries through 503s and dropped connections: the database is being cut meanwhile. */
  const call = async (method: string, route: string, body?: unknown): Promise<Answer | undefined> => {
    for (let attempt = 0; attempt < 20 && !opts.signal.aborted; attempt++) {
      const answer = await traffic.send("purge", method, route, {
        headers: jsonAuth,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      if (answer !== undefined && answer.status !== 503) return answer;
      await sleep(500);
    }
    return undefined;
  };
  const count = (answer: Answer | undefined) => {
    const body = answer?.body as { purged?: unknown[]; kept?: { reason?: string }[]; worktree?: unknown } | undefined;
    if (answer?.status === 200 && Array.isArray(body?.purged)) figures.purged += body.purged.length;
    else if (answer?.status === 200 && body?.worktree) figures.purged++;
    for (const kept of body?.kept ?? []) {
      const reason = (kept.reason ?? "?").replace(/\d+/g, "N").slice(0, 60);
      figures.keptReasons[reason] = (figures.keptReasons[reason] ?? 0) + 1;
    }
  };

  let m = 0;
  /** Dispatches `count` crashy runs and waits (at most 90 s) until they end: a crashed run's worktree is preserved. */
  const makePreserved = async (count: number) => {
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      // A unique actor per attempt: a dispatch answered 503 may still have made its run.
      const answer = await call("POST", "/api/runs", { formula: "crashy", project: "victim", actor: `victim-${m++}` });
      const id = (answer?.body as { id?: unknown } | undefined)?.id;
      if (answer?.status === 201 && typeof id === "number") ids.push(id);
    }
    figures.victimRuns.push(...ids);
    const deadline = Date.now() + 90_000;
    for (const id of ids) {
      while (Date.now() < deadline && !opts.signal.aborted) {
        const run = await call("GET", `/api/runs/${id}`);
        if (FINAL.has((run?.body as { status?: string } | undefined)?.status ?? "")) break;
        await sleep(500);
      }
    }
  };

  await makePreserved(3);
  opts.onWarm();
  while (!opts.signal.aborted) {
    const list = await call("GET", "/api/worktrees?state=preserved&project=victim&limit=100");
    const preserved = ((list?.body as { worktrees?: { id: number; path: string }[] } | undefined)?.worktrees ?? [])
      // Only those still there: a kept worktree's directory may be gone already.
      .filter((w) => w.path.startsWith(opts.worktreeRoot));
    if (preserved.length > 0 && !opts.signal.aborted) {
      figures.rounds++;
      figures.swaps += await raceRound(preserved);
    }
    await makePreserved(2);
  }
  return figures;

  /** Purges `preserved` (two purges and a DELETE each, at once) while the racer swaps their parents. */
  async function raceRound(preserved: { id: number; path: string }[]): Promise<number> {
    for (const [i, w] of preserved.entries()) {
      await plantHostileContent(w.path, opts.outside, opts.gitRedirect, i % 2 === 0).catch(() => {});
    }
    const racer = new SymlinkRacer(
      [
        { dir: path.join(opts.worktreeRoot, "victim"), linkTo: opts.outside },
        ...preserved.flatMap((w) => [
          { dir: w.path, linkTo: path.join(opts.outside, "w") },
          { dir: path.join(w.path, "a"), linkTo: path.join(opts.outside, "w", "a") },
        ]),
      ],
      opts.random,
    );
    racer.start();
    try {
      const purges = [
        call("POST", "/api/worktrees/purge", { older_than_hours: 0 }),
        call("POST", "/api/worktrees/purge", { older_than: "0s" }),
        ...preserved.map((w) => call("DELETE", `/api/worktrees/${w.id}`)),
      ];
      for (const answer of await Promise.all(purges)) count(answer);
      await sleep(200 + opts.random() * 800);
      count(await call("POST", "/api/worktrees/purge", { older_than_hours: 0 }));
    } finally {
      await racer.stop();
    }
    // Without the racer, what was kept mid-swap goes now.
    count(await call("POST", "/api/worktrees/purge", { older_than_hours: 0 }));
    opts.log(`purge round ${figures.rounds}: ${preserved.length} preserved, ${racer.swaps} swaps`);
    return racer.swaps;
  }
}
