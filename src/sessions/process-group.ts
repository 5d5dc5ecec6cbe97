/**
 * Process groups: an agent is started as the leader of its own group, so the agent and
 * every tool subprocess it starts are signalled together (a lesson from the bash design:
 * tool subprocesses of a killed agent lived on and held locks).
 *
 * Liveness ignores zombies. An orphaned grandchild is re-parented to PID 1, and a PID 1
 * that does not reap (a bare container init, or node itself as PID 1) leaves it a zombie
 * forever; `kill(-pgid, 0)` would call such a group alive and a stop would never end.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

const POLL_MS = 50;
/** Linux-style /proc, where zombies can be told apart and environments read. */
const HAS_PROC = existsSync("/proc/self/stat");
/**
 * How long stopGroup waits for the group to vanish after SIGKILL. Only a process stuck in
 * uninterruptible sleep (a hung NFS mount) survives that long, and no wait helps it.
 */
const AFTER_KILL_MS = 5_000;

function errnoCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Signal a whole process group (negative pid). Returns false if the group no longer
 * exists (ESRCH). Throws for anything else (EPERM: no member of the group is ours).
 */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  assertGroupId(pgid);
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (error) {
    if (errnoCode(error) === "ESRCH") return false;
    throw error;
  }
}

/**
 * Whether the group still has a member that is not a zombie: `kill(-pgid, 0)`, then on
 * Linux a look through /proc to leave out zombies (see the module comment).
 */
export function groupAlive(pgid: number): boolean {
  assertGroupId(pgid);
  try {
    process.kill(-pgid, 0);
  } catch (error) {
    // EPERM: the group exists but is not ours to signal; it is alive all the same.
    return errnoCode(error) !== "ESRCH";
  }
  const members = liveGroupMembers(pgid);
  return members === undefined || members.length > 0;
}

/**
 * The pids of the non-zombie processes in group `pgid`, read from /proc; undefined where
 * /proc is not available (not Linux).
 */
export function liveGroupMembers(pgid: number): number[] | undefined {
  if (!HAS_PROC) return undefined;
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return undefined;
  }
  const members: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readProcStat(Number(entry));
    if (stat && stat.pgrp === pgid && !isDeadState(stat.state)) members.push(Number(entry));
  }
  return members;
}

/**
 * Whether process `pid` exists and is not a zombie. Where /proc is not available this is
 * `kill(pid, 0)`.
 */
export function processRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return errnoCode(error) === "EPERM";
  }
  if (!HAS_PROC) return true;
  const stat = readProcStat(pid);
  return stat !== undefined && !isDeadState(stat.state);
}

/**
 * SIGTERM the group, wait up to `graceMs` for every member to go, then SIGKILL; resolves
 * when the group is gone (polled every 50 ms): `gone` if it was gone before any signal,
 * `terminated` if SIGTERM was enough, `killed` if SIGKILL was needed.
 */
export async function stopGroup(pgid: number, graceMs: number): Promise<"gone" | "terminated" | "killed"> {
  if (!groupAlive(pgid) || !signalGroup(pgid, "SIGTERM")) return "gone";
  const termDeadline = Date.now() + graceMs;
  while (Date.now() < termDeadline) {
    await sleep(Math.min(POLL_MS, Math.max(1, termDeadline - Date.now())));
    if (!groupAlive(pgid)) return "terminated";
  }
  if (!signalGroup(pgid, "SIGKILL")) return "terminated";
  const killDeadline = Date.now() + AFTER_KILL_MS;
  while (groupAlive(pgid) && Date.now() < killDeadline) await sleep(POLL_MS);
  return "killed";
}

/**
 * Linux: whether process `pid` is alive (not a zombie) AND its /proc/<pid>/environ
 * contains `NAME=value`. Used after a server restart to make sure a recorded pid is still
 * our agent (pids are reused) before killing its group. False wherever it cannot tell
 * (no /proc, a process of another user): killing a stranger is worse than leaving one.
 */
export async function processHasEnv(pid: number, name: string, value: string): Promise<boolean> {
  if (!HAS_PROC || !Number.isSafeInteger(pid) || pid <= 0) return false;
  if (!processRunning(pid)) return false;
  let environ: string;
  try {
    environ = await readFile(`/proc/${pid}/environ`, "utf8");
  } catch {
    return false;
  }
  const wanted = `${name}=${value}`;
  return environ.split("\0").includes(wanted);
}

interface ProcStat {
  state: string;
  ppid: number;
  pgrp: number;
}

/** Fields of /proc/<pid>/stat; the command name may hold spaces and parentheses, so parse after the last `)`. */
function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const [state, ppid, pgrp] = fields;
  if (state === undefined || ppid === undefined || pgrp === undefined) return undefined;
  return { state, ppid: Number(ppid), pgrp: Number(pgrp) };
}

/** Z: zombie, X: dead (being removed). */
function isDeadState(state: string): boolean {
  return state === "Z" || state === "X";
}

/** Signalling pid 0 or 1 as a group (-0, -1) would hit our own group or every process we may signal. */
function assertGroupId(pgid: number): void {
  if (!Number.isSafeInteger(pgid) || pgid <= 1) {
    throw new RangeError(`not a process group id: ${pgid}`);
  }
}
