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
  /** The first round waits for this (tests hold it to see the server answer meanwhile). */
  firstRoundAfter?: Promise<void>;
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
    this.#options = {
      intervalMs: 3_600_000,
      adoptRetentionMs: 24 * 3_600_000,
      firstRoundAfter: Promise.resolve(),
      ...options,
    };
  }

  /**
   * Starts the first round in the background and returns: after a crash the scan may find
   * thousands of directories (about 40 s for 13,000), and the server must answer meanwhile.
   * The run worker's takeover records the worktrees of its own runs itself.
   */
  async start(): Promise<void> {
    if (this.#timer) return;
    this.#round = this.#options.firstRoundAfter
      .then(() => this.#roundBody())
      .finally(() => {
        this.#round = undefined;
      });
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
      if (adopted.length > 0) {
        // One line however many: a start after a crash may find thousands.
        const unrecorded = adopted.filter((w) => w.reason === "adopted").length;
        log.warn(
          { adopted: unrecorded, leaked: adopted.length - unrecorded, paths: adopted.slice(0, 10).map((w) => w.path) },
          `housekeeping: recorded ${unrecorded} unrecorded worktree director${unrecorded === 1 ? "y" : "ies"} and preserved ${adopted.length - unrecorded} left active by finished runs`,
        );
      }
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
