import { sql, type RawBuilder, type Transaction } from "kysely";
import type { DialectName } from "./connect.js";
import type { Database, TaskRow } from "./schema.js";

/** Rows per statement at most: 128 task rows are 4,224 parameters, far below either database's limit. */
const MAX_ROWS_PER_STATEMENT = 128;

/**
 * Splits items into runs of 128, 64, ..., 2, 1, largest first. A statement's
 * SQL text depends on its row count, and SQLite keeps one prepared statement
 * per text: power-of-two runs keep that to eight texts per statement shape
 * instead of one per batch size.
 */
export function binaryChunks<T>(items: T[], max = MAX_ROWS_PER_STATEMENT): T[][] {
  const chunks: T[][] = [];
  for (let at = 0; at < items.length; ) {
    let size = max;
    while (size > items.length - at) size >>= 1;
    chunks.push(items.slice(at, at + size));
    at += size;
  }
  return chunks;
}

/** Column types on PostgreSQL, for the casts a VALUES list needs there (SQLite takes any value). */
const POSTGRES_TYPES: Record<keyof TaskRow, string> = {
  task_id: "text",
  request_id: "text",
  status: "integer",
  tool_name: "text",
  tool_call_id: "text",
  agent_id: "text",
  run_id: "text",
  thread_id: "text",
  resource_id: "text",
  args: "text",
  result: "text",
  error: "text",
  create_time: "bigint",
  start_time: "bigint",
  suspend_time: "bigint",
  complete_time: "bigint",
  attempt: "integer",
  max_retries: "integer",
  timeout_ms: "bigint",
  sequence: "bigint",
  cancel_requested: "integer",
  cancel_reason: "text",
  suspend_payload: "text",
  resume_data: "text",
  worker_id: "text",
  lease_id: "text",
  lease_expire_time: "bigint",
  ready_time: "bigint",
  timeout_time: "bigint",
  retry_delay_ms: "bigint",
  retry_backoff: "real",
  max_retry_delay_ms: "bigint",
};

/** One task row's new values: the columns that changed. */
export interface RowUpdate {
  taskId: string;
  set: Partial<TaskRow>;
}

/**
 * Updates task rows, one statement per set of changed columns and run of
 * rows, instead of one per row:
 * `UPDATE tasks SET c = v.column2, ... FROM (VALUES (id, c, ...), ...) AS v WHERE tasks.task_id = v.column1`.
 */
export async function updateTaskRows(trx: Transaction<Database>, dialect: DialectName, updates: RowUpdate[]): Promise<void> {
  const byColumns = new Map<string, RowUpdate[]>();
  for (const update of updates) {
    const key = Object.keys(update.set).join();
    if (key === "") continue;
    const group = byColumns.get(key);
    if (group) group.push(update);
    else byColumns.set(key, [update]);
  }
  for (const group of byColumns.values()) {
    const columns = Object.keys(group[0].set) as (keyof TaskRow)[];
    for (const chunk of binaryChunks(group)) {
      if (chunk.length === 1) {
        await trx.updateTable("tasks").set(chunk[0].set).where("task_id", "=", chunk[0].taskId).execute();
        continue;
      }
      const rows = chunk.map((update, i) => valuesRow(dialect, i === 0, ["task_id", ...columns], { ...update.set, task_id: update.taskId }));
      const sets = columns.map((column, i) => sql`${sql.ref(column)} = ${sql.raw(`v.column${i + 2}`)}`);
      await sql`update tasks set ${sql.join(sets)} from (values ${sql.join(rows)}) as v where tasks.task_id = v.column1`.execute(trx);
    }
  }
}

/** One row of a VALUES list; PostgreSQL types its columns by the first row's casts. */
function valuesRow(dialect: DialectName, first: boolean, columns: (keyof TaskRow)[], row: Partial<TaskRow>): RawBuilder<unknown> {
  const typed = dialect === "postgres" && first;
  return sql`(${sql.join(columns.map((c) => (typed ? sql`cast(${row[c]} as ${sql.raw(POSTGRES_TYPES[c])})` : sql`${row[c]}`)))})`;
}

/** Inserts task rows, skipping any that would break a unique index; returns the ids it inserted. */
export async function insertNewTaskRows(trx: Transaction<Database>, rows: TaskRow[]): Promise<Set<string>> {
  const inserted = new Set<string>();
  for (const chunk of binaryChunks(rows)) {
    const ids = await trx.insertInto("tasks").values(chunk).onConflict((oc) => oc.doNothing()).returning("task_id").execute();
    for (const { task_id } of ids) inserted.add(task_id);
  }
  return inserted;
}
