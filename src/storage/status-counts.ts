import { sql, type Kysely, type Transaction } from "kysely";
import type { DialectName } from "./connect.js";
import type { Database } from "./schema.js";

/**
 * How one transaction changed the number of tasks in each status, written
 * to task_counts before it commits. Only SQLite is counted here (see the
 * migration 2026-11-24T1500-sqlite-counts-by-writers); on PostgreSQL,
 * triggers count every writer.
 */
export class StatusDeltas {
  private readonly deltas = new Map<number, number>();

  constructor(private readonly dialect: DialectName) {}

  add(status: number, n: number): void {
    this.deltas.set(status, (this.deltas.get(status) ?? 0) + n);
  }

  /** One task moved from one status to another. */
  move(from: number, to: number): void {
    if (from === to) return;
    this.add(from, -1);
    this.add(to, 1);
  }

  async write(trx: Transaction<Database>): Promise<void> {
    if (this.dialect !== "sqlite") return;
    const rows = [...this.deltas].filter(([, n]) => n !== 0).map(([status, n]) => ({ status, n }));
    this.deltas.clear();
    if (rows.length === 0) return;
    await trx
      .insertInto("task_counts")
      .values(rows)
      .onConflict((oc) => oc.column("status").doUpdateSet({ n: sql`n + excluded.n` }))
      .execute();
  }
}

/**
 * Counts the tasks afresh. For bulk loads that write rows without
 * TaskStore (benchmarks' seeding), while nothing else writes.
 */
export async function recountTasks(db: Kysely<Database>): Promise<void> {
  await db.transaction().execute(async (trx) => {
    await trx.deleteFrom("task_counts").execute();
    await sql`INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status`.execute(trx);
  });
}
