import { chmod, mkdir, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "./logger.js";

/**
 * Makes DATA_DIR and its `runs/` directory (prompts, raw agent output, outputs) private to
 * the server's user: created 0700, and tightened to 0700 when an earlier version or an
 * operator left them readable by others. Files in them are created 0600 where they are
 * written (api-token, instance-id, run logs, prompts, phase and outputs files).
 */
export async function prepareDataDir(dataDir: string, log: Logger): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await makePrivate(dataDir, log);
  const runsDir = path.join(dataDir, "runs");
  await mkdir(runsDir, { recursive: true, mode: 0o700 });
  await makePrivate(runsDir, log);
}

/** Sets a directory of the server's to 0700 when group or others may enter it, saying so. */
export async function makePrivate(dir: string, log: Logger): Promise<void> {
  const mode = (await stat(dir)).mode & 0o777;
  if ((mode & 0o077) === 0) return;
  await chmod(dir, 0o700);
  log.warn(
    { dir, mode: mode.toString(8) },
    `${dir} was open to other users (mode ${mode.toString(8)}); set it to 0700`,
  );
}
