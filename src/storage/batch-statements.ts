import { CompiledQuery, type Transaction } from "kysely";
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
      const text = statementText(`update:${dialect}:${columns.join()}:${chunk.length}`, () => {
        const sets = columns.map((column, i) => `${quote(column)} = v.column${i + 2}`).join(", ");
        const types = dialect === "postgres" ? (["task_id", ...columns] as (keyof TaskRow)[]).map((c) => POSTGRES_TYPES[c]) : undefined;
        return `update tasks set ${sets} from (values ${valuesList(dialect, chunk.length, columns.length + 1, types)}) as v where tasks.task_id = v.column1`;
      });
      await trx.executeQuery(CompiledQuery.raw(text, chunk.flatMap((u) => [u.taskId, ...columns.map((c) => u.set[c])])));
    }
  }
}

/** Inserts task rows, skipping any that would break a unique index; returns the ids it inserted. */
export async function insertNewTaskRows(trx: Transaction<Database>, dialect: DialectName, rows: TaskRow[]): Promise<Set<string>> {
  const inserted = new Set<string>();
  // PostgreSQL locks each idempotency key as it inserts it: batches that
  // share keys take them in one order, so that they wait rather than deadlock.
  const ordered = dialect === "postgres" ? [...rows].sort(byIdempotencyKey) : rows;
  for (const chunk of binaryChunks(ordered)) {
    const result = await insertRows(trx, dialect, "tasks", chunk, "on conflict do nothing returning task_id");
    for (const row of result.rows as { task_id: string }[]) inserted.add(row.task_id);
  }
  return inserted;
}

function byIdempotencyKey(a: TaskRow, b: TaskRow): number {
  const key = (row: TaskRow) => `${row.request_id ?? ""}\u0000${row.agent_id}\u0000${row.tool_call_id}`;
  const [x, y] = [key(a), key(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * Inserts rows (of one shape: the first row's keys) in one statement. Its
 * SQL is written once per shape and row count: Kysely's builder and compiler
 * spent more on a statement of 100 rows than SQLite spent running it.
 */
export function insertRows<T extends object>(trx: Transaction<Database>, dialect: DialectName, table: keyof Database, rows: T[], suffix = "") {
  const columns = Object.keys(rows[0]) as (keyof T & string)[];
  const text = statementText(`insert:${dialect}:${table}:${columns.join()}:${rows.length}:${suffix}`, () => {
    return `insert into ${quote(table)} (${columns.map(quote).join(", ")}) values ${valuesList(dialect, rows.length, columns.length)} ${suffix}`;
  });
  return trx.executeQuery(CompiledQuery.raw(text, rows.flatMap((row) => columns.map((c) => row[c]))));
}

const texts = new Map<string, string>();

/** The SQL text of a statement shape, written the first time it is asked for. */
function statementText(key: string, write: () => string): string {
  let text = texts.get(key);
  if (text === undefined) {
    text = write();
    texts.set(key, text);
  }
  return text;
}

/** `(?, ?), (?, ?)` on SQLite; `($1::text, $2::bigint), ($3, $4)` on PostgreSQL, typed by `types` when given. */
function valuesList(dialect: DialectName, rows: number, columns: number, types?: string[]): string {
  let n = 0;
  const param = (i: number) => (dialect === "postgres" ? `$${++n}` + (types && n <= columns ? `::${types[i]}` : "") : "?");
  return Array.from({ length: rows }, () => `(${Array.from({ length: columns }, (_, i) => param(i)).join(", ")})`).join(", ");
}

function quote(identifier: string): string {
  return `"${identifier}"`;
}
