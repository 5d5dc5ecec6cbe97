/**
 * Small concurrency tools for work on many worktrees: one git command per clone at a
 * time (KeyedQueue), a bounded number of file system walks at once (mapLimit), and id
 * lists cut to a size a statement takes (chunks).
 */

/**
 * Runs tasks one at a time per key, different keys in parallel. git takes locks inside a
 * clone (`index.lock`, ref locks, `worktrees/`); two commands in one clone at once make
 * one fail, so every git operation on a clone goes through its key here.
 */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(task);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}

/** `items` cut into arrays of at most `size`. */
export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Runs `task` over `items`, at most `limit` at once; rejects with the first failure after all settle. */
export async function mapLimit<T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const item = items[next++] as T;
      try {
        await task(item);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
}

/**
 * The idle wait of a polling loop that another part of its component can cut short (rows
 * were just queued, the component is stopping). A wake while nothing sleeps is a no-op.
 */
export class WakeableSleep {
  #wake: (() => void) | undefined;

  /** Resolves after `ms`, or at the next wake(), whichever is first. */
  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  wake(): void {
    this.#wake?.();
  }
}
