import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Every temp dir made by makeTempDir and not yet removed, so a forgotten one is still cleaned up. */
const registry = new Set<string>();

/** Makes a fresh directory under os.tmpdir() named `<prefix>XXXXXX` and registers it for cleanupTempDirs(). */
export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  registry.add(dir);
  return dir;
}

/** Removes one temp dir (recursively; a missing dir is fine) and forgets it. */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  registry.delete(dir);
}

/** Removes every registered temp dir; call from afterEach/afterAll. */
export async function cleanupTempDirs(): Promise<void> {
  await Promise.all([...registry].map((dir) => removeTempDir(dir)));
}

/** The temp dirs still registered (for asserting in afterEach that a test left nothing behind). */
export function pendingTempDirs(): string[] {
  return [...registry];
}
