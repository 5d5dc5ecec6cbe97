import { readFile } from "node:fs/promises";

/** Reads available memory in MiB; injectable so tests can simulate a host under pressure. */
export type MemoryProbe = () => Promise<number>;

/**
 * MemAvailable from /proc/meminfo (what the kernel says can be used without swapping),
 * in MiB. Falls back to MemFree + Cached on kernels without MemAvailable.
 */
export async function readAvailableMemoryMb(file = "/proc/meminfo"): Promise<number> {
  const text = await readFile(file, "utf8");
  const field = (name: string) => {
    const match = new RegExp(`^${name}:\\s+(\\d+)\\s*kB`, "m").exec(text);
    return match ? Number(match[1]) : undefined;
  };
  const kb = field("MemAvailable") ?? (field("MemFree") ?? 0) + (field("Cached") ?? 0);
  return Math.floor(kb / 1024);
}
