/**
 * Retries a database write that must not be lost (a session's end, a run's final status)
 * while the database is out of reach. The caller keeps what it is recording in memory
 * meanwhile; the phase file and the session log in the run directory hold it on disk. A
 * failure that is not about reaching the database is thrown at once: retrying a bad
 * statement would only repeat it.
 */
import { isDatabaseUnavailable } from "../../db/unavailable.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";

export interface RetryOptions {
  log: Logger;
  /** What is being recorded, for the log ("record the end of session 2"). */
  what: string;
  /** Give up (and throw the last error) after this long; the run sweep settles the run then. Default 10 min. */
  giveUpAfterMs?: number;
  /** First wait; doubled each time up to `maxDelayMs`. Default 100 ms. */
  firstDelayMs?: number;
  /** Default 5 s. */
  maxDelayMs?: number;
}

export async function retryWhileUnavailable<T>(task: () => Promise<T>, options: RetryOptions): Promise<T> {
  const giveUpAt = Date.now() + (options.giveUpAfterMs ?? 10 * 60_000);
  let delay = options.firstDelayMs ?? 100;
  for (let attempt = 1; ; attempt++) {
    try {
      const result = await task();
      if (attempt > 1) options.log.info({ attempts: attempt }, `could ${options.what} again; recorded`);
      return result;
    } catch (error) {
      if (!isDatabaseUnavailable(error) || Date.now() + delay > giveUpAt) throw error;
      options.log.warn(
        { err: error, attempt, retryInMs: delay },
        `could not ${options.what}: ${errorMessage(error)}; retrying`,
      );
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, options.maxDelayMs ?? 5_000);
    }
  }
}
