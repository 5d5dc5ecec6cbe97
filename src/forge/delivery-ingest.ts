import { inArray, sql } from "drizzle-orm";
import { type Database, type Db, rowsOf, type Tx } from "../../db/client.js";
import { deliveries, type NewDelivery } from "../../db/schema/index.js";
import { errorMessage } from "../errors.js";
import type { Logger } from "../logger.js";
import { type EnqueueRequest, enqueueRun } from "../runs/run-queue.js";

/** One accepted delivery and the runs it fires, stored together or not at all. */
export interface DeliveryItem {
  delivery: NewDelivery & { id: string };
  runs: EnqueueRequest[];
}

export interface IngestResult {
  /** The delivery id was stored before (forges redeliver): nothing was created. */
  duplicate: boolean;
  runIds: number[];
}

interface Pending {
  item: DeliveryItem;
  resolve: (result: IngestResult) => void;
  reject: (error: unknown) => void;
}

/**
 * Stores deliveries with group commit: requests that arrive while a transaction is in
 * flight are written together in the next one (one multi-row INSERT ... ON CONFLICT DO
 * NOTHING, then their runs), so a burst costs a few commits instead of one per request,
 * and nothing is answered before it is durable. The delivery id's primary key decides
 * duplicates, also between two copies in the same batch or on two instances.
 */
export class DeliveryIngest {
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;

  constructor(
    private readonly database: Database,
    private readonly log: Logger,
    private readonly maxBatch = 500,
  ) {}

  submit(item: DeliveryItem): Promise<IngestResult> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ item, resolve, reject });
      this.#flushing ??= this.#drain();
    });
  }

  /** Resolves when everything submitted so far is written (or failed). */
  async idle(): Promise<void> {
    while (this.#flushing) await this.#flushing;
  }

  async #drain(): Promise<void> {
    // Let the requests that are being parsed right now join the first batch.
    await new Promise((resolve) => setImmediate(resolve));
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.maxBatch);
        await this.#write(batch);
      }
    } finally {
      this.#flushing = undefined;
      if (this.#queue.length > 0) this.#flushing = this.#drain();
    }
  }

  async #write(batch: Pending[]): Promise<void> {
    try {
      const items = batch.map((p) => p.item);
      // A batch that fires no run is one INSERT, atomic by itself: no BEGIN/COMMIT round trips.
      const results = items.some((item) => item.runs.length > 0)
        ? await this.database.db.transaction((tx) => this.#insert(tx, items))
        : await this.#insert(this.database.db, items);
      for (const [i, pending] of batch.entries()) pending.resolve(results[i] as IngestResult);
    } catch (error) {
      if (batch.length === 1) {
        (batch[0] as Pending).reject(error);
        return;
      }
      // One bad item must not fail its neighbours: write them one by one.
      this.log.warn(
        { err: error, batch: batch.length },
        `delivery batch failed (${errorMessage(error)}); retrying one by one`,
      );
      for (const pending of batch) await this.#write([pending]);
    }
  }

  async #insert(tx: Db | Tx, items: DeliveryItem[]): Promise<IngestResult[]> {
    // The first copy of an id in the batch is the one that counts.
    const first = new Map<string, number>();
    items.forEach((item, i) => {
      if (!first.has(item.delivery.id)) first.set(item.delivery.id, i);
    });
    const unique = [...first.values()].map((i) => {
      const d = (items[i] as DeliveryItem).delivery;
      return {
        id: d.id,
        forge: d.forge,
        event: d.event,
        action: d.action ?? null,
        project: d.project ?? null,
        repository: d.repository ?? null,
        sender: d.sender ?? null,
        payload: d.payload,
        outcome: d.outcome,
        reason: d.reason ?? null,
        next_attempt_at: d.nextAttemptAt ?? null,
      };
    });
    // The whole batch as ONE parameter: building a multi-row INSERT value by value cost
    // more CPU than the database spends on it.
    const inserted = new Set(
      rowsOf<{ id: string }>(
        await tx.execute(sql`
          insert into deliveries (id, forge, event, action, project, repository, sender, payload, outcome, reason, next_attempt_at)
          select id, forge, event, action, project, repository, sender, payload, outcome, reason, next_attempt_at
          from json_to_recordset(${JSON.stringify(unique)}::json) as d(
            id text, forge text, event text, action text, project text, repository text,
            sender text, payload jsonb, outcome text, reason text, next_attempt_at timestamptz)
          on conflict (id) do nothing
          returning id`),
      ).map((r) => r.id),
    );
    const results: IngestResult[] = [];
    for (const [i, item] of items.entries()) {
      const stored = first.get(item.delivery.id) === i && inserted.has(item.delivery.id);
      if (!stored) {
        results.push({ duplicate: true, runIds: [] });
        continue;
      }
      const runIds: number[] = [];
      for (const request of item.runs)
        runIds.push((await enqueueRun(tx, { ...request, deliveryId: item.delivery.id })).id);
      results.push({ duplicate: false, runIds });
    }
    return results;
  }

  /** Whether a delivery id is already stored (a cheap early answer for redeliveries). */
  async seen(id: string): Promise<boolean> {
    const rows = await this.database.db
      .select({ id: deliveries.id })
      .from(deliveries)
      .where(inArray(deliveries.id, [id]));
    return rows.length > 0;
  }
}
