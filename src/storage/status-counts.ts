import { sql, type Transaction } from "kysely";
import { insertRows } from "./batch-statements.js";
import type { Db, DialectName } from "./connect.js";
import type { Database, TaskHourCountRow, TaskRow } from "./schema.js";

/** What the counts read of a task. */
export type CountedTask = Pick<TaskRow, "status" | "create_time" | "start_time" | "complete_time">;

type TimeColumn = TaskHourCountRow["time_column"];
const TIME_COLUMNS: TimeColumn[] = ["create_time", "start_time", "complete_time"];
export const HOUR_MS = 3_600_000;

/**
 * How one transaction changed the counts of tasks, by status (task_counts)
 * and by status and hour of each time column (task_hour_counts), written
 * before it commits. Only SQLite is counted here (see the migrations
 * 2026-11-24T1500 and T1510); on PostgreSQL, triggers keep task_counts and
 * there are no hour counts.
 */
export class CountDeltas {
  private readonly statuses = new Map<number, number>();
  /** By "column hour status". */
  private readonly hours = new Map<string, number>();

  constructor(private readonly dialect: DialectName) {}

  added(task: CountedTask): void {
    this.count(task, 1);
  }

  removed(task: CountedTask): void {
    this.count(task, -1);
  }

  changed(before: CountedTask, after: CountedTask): void {
    if (before.status !== after.status) {
      this.add(this.statuses, before.status, -1);
      this.add(this.statuses, after.status, 1);
    }
    for (const column of TIME_COLUMNS) {
      const from = hourKey(before, column);
      const to = hourKey(after, column);
      if (from === to) continue;
      if (from) this.add(this.hours, from, -1);
      if (to) this.add(this.hours, to, 1);
    }
  }

  async write(trx: Transaction<Database>): Promise<void> {
    if (this.dialect !== "sqlite") return;
    const statuses = [...this.statuses].filter(([, n]) => n !== 0).map(([status, n]) => ({ status, n }));
    const hours = [...this.hours].filter(([, n]) => n !== 0).map(([key, n]) => hourRow(key, n));
    this.statuses.clear();
    this.hours.clear();
    // SQL written once per shape (insertRows): a change of one task writes
    // these two statements, and building them with Kysely cost more than running them.
    if (statuses.length > 0) {
      await insertRows(trx, this.dialect, "task_counts", statuses, "on conflict (status) do update set n = n + excluded.n");
    }
    if (hours.length > 0) {
      await insertRows(trx, this.dialect, "task_hour_counts", hours, "on conflict (time_column, hour, status) do update set n = n + excluded.n");
    }
  }

  private count(task: CountedTask, n: number): void {
    this.add(this.statuses, task.status, n);
    for (const column of TIME_COLUMNS) {
      const key = hourKey(task, column);
      if (key) this.add(this.hours, key, n);
    }
  }

  private add<K>(counts: Map<K, number>, key: K, n: number): void {
    counts.set(key, (counts.get(key) ?? 0) + n);
  }
}

/** The hour count a task is in for a time column; none while the column is unset (0). */
function hourKey(task: CountedTask, column: TimeColumn): string | undefined {
  const ms = task[column];
  return ms > 0 ? `${column} ${Math.floor(ms / HOUR_MS)} ${task.status}` : undefined;
}

function hourRow(key: string, n: number): TaskHourCountRow {
  const [column, hour, status] = key.split(" ");
  return { time_column: column as TimeColumn, hour: Number(hour), status: Number(status), n };
}

/**
 * Counts the tasks afresh. For bulk loads that write rows without
 * TaskStore (benchmarks' seeding), while nothing else writes. The hour is a
 * literal: divided by a bound parameter (a REAL), each time made its own hour.
 */
export async function recountTasks(db: Db): Promise<void> {
  await db.kysely.transaction().execute(async (trx) => {
    await trx.deleteFrom("task_counts").execute();
    await sql`INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status`.execute(trx);
    if (db.dialect !== "sqlite") return;
    await trx.deleteFrom("task_hour_counts").execute();
    for (const column of TIME_COLUMNS) {
      await sql`INSERT INTO task_hour_counts (time_column, hour, status, n)
        SELECT ${column}, ${sql.ref(column)} / ${sql.lit(HOUR_MS)}, status, count(*) FROM tasks WHERE ${sql.ref(column)} > 0 GROUP BY 2, 3`.execute(trx);
    }
  });
}
