import { chmod, mkdir } from "node:fs/promises";
import path from "node:path";

/**
 * Files of one run under `$DATA_DIR/runs/<id>/`. The run directory is the server's: the
 * log, the prompt, the launch files. `agent/` is the only part the agent may write (and,
 * inside the sandbox, the only part of DATA_DIR it can see): its phase file, scratch file,
 * outputs file, temp dir, the agent CLI's state (`CLAUDE_CONFIG_DIR`) and the run's own
 * git object store, which borrows the clone's objects through alternates.
 */
export function runPaths(dataDir: string, runId: number) {
  const dir = path.join(dataDir, "runs", String(runId));
  const agentDir = path.join(dir, "agent");
  return {
    dir,
    log: path.join(dir, "log"),
    prompt: path.join(dir, "prompt.md"),
    /** Files the server writes for the agent to read (Claude settings, phase protocol). */
    launchDir: path.join(dir, "launch"),
    agentDir,
    phaseFile: path.join(agentDir, "phase"),
    scratchFile: path.join(agentDir, "scratch.md"),
    outputsFile: path.join(agentDir, "outputs.jsonl"),
    tmpDir: path.join(agentDir, "tmp"),
    claudeConfigDir: path.join(agentDir, "claude"),
    objectsDir: path.join(agentDir, "objects"),
  };
}

export type RunPaths = ReturnType<typeof runPaths>;

/** Makes the run's directories, private to the server's user (prompts and raw output live here). */
export async function makeRunDirs(paths: RunPaths): Promise<void> {
  for (const dir of [paths.dir, paths.launchDir, paths.agentDir, paths.tmpDir, paths.claudeConfigDir]) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  }
  await mkdir(path.join(paths.objectsDir, "info"), { recursive: true, mode: 0o700 });
  await mkdir(path.join(paths.objectsDir, "pack"), { recursive: true, mode: 0o700 });
}

/**
 * What git needs to see a run's commits: the run's own object store, with the clone's
 * objects (`<commonDir>/objects`) as alternates. The agent gets these variables; the
 * server's own git commands on the run's work (recovery state, the pull-request push) too.
 */
export function runObjectsEnv(objectsDir: string, commonDir: string | undefined): Record<string, string> {
  return {
    GIT_OBJECT_DIRECTORY: objectsDir,
    ...(commonDir ? { GIT_ALTERNATE_OBJECT_DIRECTORIES: path.join(commonDir, "objects") } : {}),
  };
}
