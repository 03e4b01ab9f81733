import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "./schema.js";

/** Runs a unit of writing work inside a transaction it is given. */
export type WriteWork<T> = (trx: Transaction<Database>) => Promise<T>;

/** How write transactions reach the database. */
export interface Writer {
  /** Runs `work` in a transaction; resolves once it committed, rejects if it rolled back. */
  run<T>(work: WriteWork<T>): Promise<T>;
}

/**
 * One database transaction per unit of work: what several processes sharing
 * PostgreSQL need. PostgreSQL ends one of two transactions that wait on each
 * other (two batch dispatches inserting the same idempotency keys in other
 * orders, say) with a deadlock, and a unit of work only reads and writes
 * inside its transaction, so the loser runs again, a few times at most.
 */
export function transactionPerWork(db: Kysely<Database>): Writer {
  return {
    async run(work) {
      for (let attempt = 1; ; attempt++) {
        try {
          return await db.transaction().execute(work);
        } catch (error) {
          if (attempt === CONFLICT_ATTEMPTS || !isConflict(error)) throw error;
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 10 * 2 ** attempt));
        }
      }
    },
  };
}

/** How often a unit of work runs before its conflict is the caller's (ABORTED). */
const CONFLICT_ATTEMPTS = 5;

/** SQLSTATEs of a transaction PostgreSQL ended for a conflict with another: deadlock_detected, serialization_failure. */
export const CONFLICT_CODES = new Set(["40P01", "40001"]);

function isConflict(error: unknown): boolean {
  return CONFLICT_CODES.has((error as { code?: unknown })?.code as string);
}

/** How one unit of a batch ended. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

interface Queued {
  work: WriteWork<unknown>;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/**
 * Group commit for a database with one writer (SQLite): work that arrives
 * while a transaction runs waits, and the next transaction runs all of it, each
 * unit in its own savepoint. A commit (a WAL write) and the statements around
 * it then serve many units instead of one, which is most of what a small
 * transaction costs. A unit that throws rolls back to its savepoint and fails
 * alone; if the commit itself fails, every unit of the batch fails.
 *
 * Units of a batch run one after another, in arrival order, so their log
 * sequences and clock readings follow that order, and nothing is visible to
 * readers before the batch commits.
 */
export class GroupCommit implements Writer {
  private queue: Queued[] = [];
  private draining = false;

  constructor(
    private readonly db: Kysely<Database>,
    /** Units per transaction at most, which bounds how long readers wait for the connection. */
    private readonly maxBatch = 128,
  ) {}

  run<T>(work: WriteWork<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (value: unknown) => void, reject });
      // Wait for this turn of the event loop to end: on SQLite a transaction
      // runs without yielding to I/O, so requests that arrived together
      // would otherwise commit one by one.
      if (!this.draining) {
        this.draining = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) await this.commit(this.queue.splice(0, this.maxBatch));
    } finally {
      this.draining = false;
    }
  }

  private async commit(batch: Queued[]): Promise<void> {
    const outcomes: Outcome[] = [];
    try {
      await this.db.transaction().execute(async (trx) => {
        // A lone unit needs no savepoint: its failure rolls back the transaction.
        if (batch.length === 1) return outcomes.push({ ok: true, value: await batch[0].work(trx) });
        for (const { work } of batch) outcomes.push(await inSavepoint(trx, work));
      });
    } catch (error) {
      // The transaction rolled back: no unit's work was kept.
      for (const item of batch) item.reject(error);
      return;
    }
    batch.forEach((item, i) => {
      const outcome = outcomes[i];
      if (outcome.ok) item.resolve(outcome.value);
      else item.reject(outcome.error);
    });
  }
}

async function inSavepoint(trx: Transaction<Database>, work: WriteWork<unknown>): Promise<Outcome> {
  await sql`savepoint unit`.execute(trx);
  try {
    const value = await work(trx);
    await sql`release savepoint unit`.execute(trx);
    return { ok: true, value };
  } catch (error) {
    await sql`rollback to savepoint unit`.execute(trx);
    await sql`release savepoint unit`.execute(trx);
    return { ok: false, error };
  }
}
