import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

const TIME_COLUMNS = ["create_time", "start_time", "complete_time"] as const;

/**
 * task_hour_counts (SQLite): how many tasks have each status and a time
 * column in each hour, kept by TaskStore as it keeps task_counts. A list
 * filtered by a time range (and statuses, or nothing else) adds up the whole
 * hours inside the range and counts only the tasks of its two partial hours:
 * COUNT(*) over one day of start times (33k tasks) took 4-9 ms, every entry
 * of an index read.
 */
export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  if (dialect !== "sqlite") return;
  await db.transaction().execute(async (trx) => {
    await sql`CREATE TABLE task_hour_counts (
      time_column TEXT NOT NULL, hour INTEGER NOT NULL, status INTEGER NOT NULL, n INTEGER NOT NULL,
      PRIMARY KEY (time_column, hour, status)) WITHOUT ROWID`.execute(trx);
    for (const column of TIME_COLUMNS) {
      await sql`INSERT INTO task_hour_counts (time_column, hour, status, n)
        SELECT ${column}, ${sql.ref(column)} / 3600000, status, count(*) FROM tasks WHERE ${sql.ref(column)} > 0 GROUP BY 2, 3`.execute(trx);
    }
  });
}
