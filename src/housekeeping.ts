import type { ProjectConfig } from "./config.js";
import { errorMessage } from "./errors.js";
import type { Logger } from "./logger.js";
import type { WorktreeManager } from "./worktrees/worktree-manager.js";

export interface HousekeepingOptions {
  worktrees: WorktreeManager;
  projects: readonly ProjectConfig[];
  log: Logger;
  /** How often it runs (hourly by default); it also runs once at start. */
  intervalMs?: number;
  /** Expiry given to adopted worktrees. */
  adoptRetentionMs?: number;
}

/**
 * The built-in clean-up the bash design's supervisor did every 24 h: adopt worktree
 * directories nobody recorded, then purge preserved worktrees past their expiry. Never
 * throws: a failed round is logged and the next one tries again.
 */
export class Housekeeping {
  #timer: NodeJS.Timeout | undefined;
  #round: Promise<void> | undefined;
  readonly #options: Required<HousekeepingOptions>;

  constructor(options: HousekeepingOptions) {
    this.#options = { intervalMs: 3_600_000, adoptRetentionMs: 24 * 3_600_000, ...options };
  }

  async start(): Promise<void> {
    if (this.#timer) return;
    await this.runOnce();
    this.#timer = setInterval(() => {
      void this.runOnce();
    }, this.#options.intervalMs);
    this.#timer.unref();
  }

  /** One round; concurrent calls share the round in progress. */
  runOnce(): Promise<void> {
    this.#round ??= this.#roundBody().finally(() => {
      this.#round = undefined;
    });
    return this.#round;
  }

  async #roundBody(): Promise<void> {
    const { worktrees, projects, log } = this.#options;
    try {
      const adopted = await worktrees.adoptOrphans(projects, this.#options.adoptRetentionMs);
      for (const w of adopted)
        log.warn({ worktreeId: w.id, path: w.path, reason: w.reason }, `adopted unrecorded worktree ${w.path}`);
      const { purged, kept } = await worktrees.purge({ expiredOnly: true, by: "housekeeping", projects });
      if (purged.length > 0 || kept.length > 0) {
        log.info(
          { purged: purged.map((p) => p.path), kept: kept.map((k) => ({ path: k.path, reason: k.reason })) },
          `housekeeping: purged ${purged.length} expired worktree(s)`,
        );
      } else {
        log.debug("housekeeping: nothing to purge");
      }
    } catch (error) {
      log.error({ err: error }, `housekeeping failed: ${errorMessage(error)}`);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#round;
  }
}
