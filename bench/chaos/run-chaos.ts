/**
 * One chaos run (issue 10, "Done when"): a real server on PostgreSQL behind a proxy that
 * cuts every connection every 1-5 s, a forge that flaps (503s, hangs), fuzzed and valid
 * signed webhooks, dispatches, and purges raced by symlink swaps, all at once; then the
 * faults stop, the server drains, and the run counts what was lost, stuck, duplicated,
 * written outside WORKTREE_ROOT or answered 5xx. Used by `npm run chaos` (bench/chaos.ts)
 * and, bounded, by test/integration/chaos.test.ts.
 */
import { API_TOKEN, type ChaosEnvironment, setUpChaos } from "./environment.js";
import { Load, newLoadState } from "./load.js";
import { purgeRounds } from "./purge-cycle.js";
import { type ChaosReport, collectReport, type FaultFigures } from "./report.js";
import { snapshotTree } from "./sentinel.js";
import { every, seededRandom, Traffic } from "./traffic.js";

export interface ChaosOptions {
  durationMs: number;
  seed: number;
  /** PostgreSQL to make a schema in; without it the run uses PGlite and cuts nothing. */
  postgresUrl: string | undefined;
  webhooksPerSecond: number;
  dispatchesPerSecond: number;
  /** Share of valid deliveries that fire a run. */
  fireShare: number;
  apiReadsPerSecond: number;
  apiFuzzPerSecond: number;
  /** A cut every this many ms, uniformly between the two. */
  cutEveryMs: [number, number];
  /** After the faults stop: how long the server may take to settle everything. */
  drainTimeoutMs: number;
  maxSessions: number;
  log: (line: string) => void;
  /** Ends the chaos early (Ctrl-C): the run still drains briefly, reports and cleans up. */
  abort?: AbortSignal;
}

export const DEFAULT_OPTIONS: Omit<ChaosOptions, "postgresUrl" | "log" | "abort"> = {
  durationMs: 10 * 60_000,
  seed: 20261202,
  webhooksPerSecond: 100,
  dispatchesPerSecond: 5,
  fireShare: 0.02,
  apiReadsPerSecond: 2,
  apiFuzzPerSecond: 5,
  cutEveryMs: [1_000, 5_000],
  drainTimeoutMs: 5 * 60_000,
  maxSessions: 4,
};

/** Resolves after `ms`, or at once when `signal` aborts (and leaves no listener behind). */
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const { log } = options;
  const random = seededRandom(options.seed);
  const env = await setUpChaos({ postgresUrl: options.postgresUrl, maxSessions: options.maxSessions, log });
  try {
    const outsideBefore = await snapshotTree(env.outside);
    const server = watchServer(env);
    const traffic = new Traffic(env.server.url);
    const state = newLoadState();
    const load = new Load(traffic, state, random, options.seed, options.fireShare);
    const faults: FaultFigures = { cuts: 0, refusedMs: 0, forgeDown: 0, forgeHangs: 0, forgeBadMs: 0 };

    const stop = new AbortController();
    // The first worktrees to purge are made before any fault starts.
    let warm = () => {};
    const warmed = new Promise<void>((resolve) => {
      warm = resolve;
    });
    const purging = purgeRounds({
      traffic,
      worktreeRoot: env.worktreeRoot,
      outside: env.outside,
      gitRedirect: env.gitRedirect,
      random,
      signal: stop.signal,
      log,
      onWarm: warm,
    });
    await Promise.race([warmed, purging]);
    const started = performance.now();
    log(`chaos for ${Math.round(options.durationMs / 1000)} s, seed ${options.seed}, ${env.backend}`);
    const streams = [
      every(1000 / options.webhooksPerSecond, stop.signal, (n) => load.webhook(n)),
      every(1000 / options.dispatchesPerSecond, stop.signal, (n) => load.dispatch(n)),
      every(1000 / options.apiReadsPerSecond, stop.signal, (n) => load.read(n)),
      every(1000 / options.apiFuzzPerSecond, stop.signal, (n) => load.fuzzedApi(n)),
    ];
    const cutting = cutDatabase(env, options, random, faults, stop.signal);
    const flapping = flapForge(env, random, faults, stop.signal);
    const progress = setInterval(() => {
      const t = traffic.tallies;
      log(
        `${Math.round((performance.now() - started) / 1000)} s: ${faults.cuts} cuts, webhooks ${t["webhook valid"].sent}+${t["webhook fuzzed"].sent}, ` +
          `dispatches ${t.dispatch.sent} (${state.dispatched.size} accepted), in flight ${traffic.inFlight}`,
      );
    }, 15_000);

    await sleep(options.durationMs, options.abort);
    stop.abort();
    const skipped = streams.reduce((sum, s) => sum + s.skipped(), 0);
    await Promise.all(streams.map((s) => s.done));
    await Promise.all([cutting, flapping]);
    const purge = await purging;
    clearInterval(progress);
    const chaosMs = performance.now() - started;
    env.proxy?.refuse(false);
    env.forge.setDown(false);
    env.forge.setHanging(false);

    log("faults off: draining");
    const drainStarted = performance.now();
    const drained = await drain(env, options.drainTimeoutMs, log, options.abort ?? new AbortController().signal);
    const drainMs = performance.now() - drainStarted;
    const health = await fetch(`${env.server.url}/healthz`, { signal: AbortSignal.timeout(10_000) }).catch(
      () => undefined,
    );
    const upAtEnd = health?.status === 200;
    const outsideAfter = await snapshotTree(env.outside);
    server.stop();
    const exit = await stopServer(env);

    return await collectReport({
      env,
      options,
      traffic,
      state,
      faults,
      purge,
      server: {
        ...server.figures,
        upAtEnd,
        exitedEarly: server.exitedEarly(),
        shutdown: exit,
        shutdownLog: env.server.lines.splice(0),
      },
      outsideBefore,
      outsideAfter,
      chaosMs,
      drainMs,
      drained,
      clientSkipped: skipped,
    });
  } finally {
    await env.close();
  }
}

/** SIGTERM, and SIGKILL if the server has not exited 60 s later (its log then says where it hung). */
async function stopServer(env: ChaosEnvironment): Promise<{ code: number | null; signal: string | null }> {
  const stopped = env.server.stop("SIGTERM");
  const late = await Promise.race([stopped.then(() => false), sleep(60_000).then(() => true)]);
  if (!late) return stopped;
  env.server.child.kill("SIGKILL");
  const killed = await stopped;
  return { code: killed.code, signal: `${killed.signal ?? "?"} after 60 s of SIGTERM` };
}

/** Cuts every database connection every 1-5 s; one cut in three also refuses new ones for up to 2 s. */
async function cutDatabase(
  env: ChaosEnvironment,
  options: ChaosOptions,
  random: () => number,
  faults: FaultFigures,
  signal: AbortSignal,
): Promise<void> {
  const proxy = env.proxy;
  if (!proxy) return;
  const [min, max] = options.cutEveryMs;
  while (!signal.aborted) {
    await sleep(min + random() * (max - min), signal);
    if (signal.aborted) break;
    faults.cuts++;
    if (random() < 1 / 3) {
      const ms = 200 + random() * 1_800;
      proxy.refuse(true);
      proxy.cut();
      await sleep(ms, signal);
      proxy.refuse(false);
      faults.refusedMs += ms;
    } else proxy.cut();
  }
}

/** The forge answers normally for 5-15 s, then is down (503) or hangs for 2-8 s, and so on. */
async function flapForge(
  env: ChaosEnvironment,
  random: () => number,
  faults: FaultFigures,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted) {
    await sleep(5_000 + random() * 10_000, signal);
    if (signal.aborted) break;
    const ms = 2_000 + random() * 6_000;
    const hang = random() < 0.4;
    if (hang) faults.forgeHangs++;
    else faults.forgeDown++;
    if (hang) env.forge.setHanging(true);
    else env.forge.setDown(true);
    await sleep(ms, signal);
    env.forge.setHanging(false);
    env.forge.setDown(false);
    faults.forgeBadMs += ms;
  }
}

/**
 * Waits until no run is queued, running or escalated, the outbox is empty and no delivery
 * waits for its permission check (kept pending through a forge outage); false if the time
 * ran out.
 */
async function drain(env: ChaosEnvironment, timeoutMs: number, log: (line: string) => void, signal: AbortSignal) {
  const deadline = Date.now() + timeoutMs;
  const headers = { authorization: `Bearer ${API_TOKEN}` };
  let lastLog = 0;
  while (Date.now() < deadline && !signal.aborted) {
    try {
      const timeout = AbortSignal.timeout(10_000);
      const open = await fetch(`${env.server.url}/api/runs?status=queued,running,escalated&limit=500`, {
        headers,
        signal: timeout,
      });
      const runs = ((await open.json()) as { runs?: unknown[] }).runs;
      const metrics = await (await fetch(`${env.server.url}/metrics`, { signal: timeout })).text();
      const pending = Number(/^formula_runner_outbox_pending (\d+)/m.exec(metrics)?.[1] ?? "0");
      const deliveries = Number(/^formula_runner_deliveries_pending (\d+)/m.exec(metrics)?.[1] ?? "0");
      if (open.status === 200 && runs?.length === 0 && pending === 0 && deliveries === 0) return true;
      if (Date.now() - lastLog > 10_000) {
        lastLog = Date.now();
        log(
          `draining: ${runs?.length ?? "?"} runs open, ${pending} forge writes pending, ${deliveries} deliveries pending`,
        );
      }
    } catch (error) {
      log(`draining: the server did not answer: ${(error as Error).message}`);
    }
    await sleep(2_000, signal);
  }
  return false;
}

/** Follows the server's log (error lines by message, driver faults survived) and notices an early exit. */
function watchServer(env: ChaosEnvironment) {
  const figures = { errorLines: 0, errorMessages: {} as Record<string, number>, driverFaultsSurvived: 0 };
  let exited: string | undefined;
  const onExit = (code: number | null, signal: string | null) => {
    exited = `exited with ${code ?? signal}`;
  };
  env.server.child.once("exit", onExit);
  const scan = () => {
    for (const line of env.server.lines.splice(0)) {
      let entry: { level?: number; msg?: string };
      try {
        entry = JSON.parse(line);
      } catch {
        continue;
      }
      if ((entry.level ?? 0) < 50) continue;
      figures.errorLines++;
      const msg = (entry.msg ?? "").replace(/\d+/g, "N").slice(0, 100);
      figures.errorMessages[msg] = (figures.errorMessages[msg] ?? 0) + 1;
      if (msg.includes("database driver fault outside any request")) figures.driverFaultsSurvived++;
    }
  };
  const timer = setInterval(scan, 1_000);
  return {
    figures,
    exitedEarly: () => exited,
    stop: () => {
      clearInterval(timer);
      scan();
      env.server.child.off("exit", onExit);
    },
  };
}
