import { expressionBuilder, SqliteAdapter, type ExpressionBuilder, type Kysely, type SelectQueryBuilder } from "kysely";
import { TaskStatus } from "../../gen/taskstream/v1/task_pb.js";
import type { Db } from "./connect.js";
import { filterColumns, type EventFilter } from "./event-log.js";
import type { Database, TaskRow } from "./schema.js";
import { fitBudget, fitTasks } from "./size-budget.js";
import { HOUR_MS } from "./status-counts.js";

/** A time column that lists filter and order by. */
export type TimeColumn = "create_time" | "start_time" | "complete_time";

/** Equality filters; an empty string matches any value. */
export interface TaskFilterFields extends EventFilter {
  toolCallId: string;
}

export interface TaskQuery {
  filter: TaskFilterFields;
  statuses: TaskStatus[];
  /** Tasks whose column is set and in [startMs, endMs). */
  timeRange?: { column: TimeColumn; startMs?: number; endMs?: number };
  orderBy: TimeColumn;
  descending: boolean;
  limit: number;
  /** Keyset position: the last task of the previous page. */
  after?: { value: number; taskId: string };
  countTotal: boolean;
}

export interface Page<T> {
  items: T[];
  /** Whether anything follows the last item. */
  more: boolean;
  total?: number;
}

export function getTask(db: Kysely<Database>, taskId: string): Promise<TaskRow | undefined> {
  return db.selectFrom("tasks").selectAll().where("task_id", "=", taskId).executeTakeFirst();
}

/** One page of tasks in (order column, task_id) order, found by keyset, never OFFSET. */
export async function listTasks(db: Kysely<Database>, query: TaskQuery): Promise<Page<TaskRow>> {
  // No filter must mean no WHERE at all: SQLite counts a whole table from its
  // smallest index at once, but not under `where 1 = 1` (0.2 ms against 20 ms
  // on a million tasks).
  const hasConditions = taskConditions(expressionBuilder<Database, "tasks">(), query).length > 0;
  const matching = hasConditions ? db.selectFrom("tasks").where((eb) => eb.and(taskConditions(eb, query))) : db.selectFrom("tasks");
  const direction = query.descending ? "desc" : "asc";
  let page = matching.selectAll().orderBy(query.orderBy, direction).orderBy("task_id", direction).limit(query.limit + 1);
  if (query.after) {
    const { value, taskId } = query.after;
    page = page.where((eb) =>
      eb(eb.refTuple(query.orderBy, "task_id"), query.descending ? "<" : ">", eb.tuple(value, taskId)),
    );
  }
  const rows = await page.execute();
  const items = fitTasks(rows.slice(0, query.limit));
  return {
    items,
    more: rows.length > items.length,
    total: query.countTotal ? await countTasks(db, query, matching) : undefined,
  };
}

/**
 * total_size. Filtered by statuses alone, or not at all, it is read from
 * task_counts, whatever the number of matches; on SQLite, with a time range
 * too, mostly from task_hour_counts. Other filters count the matching rows
 * over their index.
 */
function countTasks(db: Kysely<Database>, query: TaskQuery, matching: SelectQueryBuilder<Database, "tasks", object>): Promise<number> {
  const statusesOnly = filterColumns(query.filter).length === 0 && query.filter.toolCallId === "";
  if (statusesOnly && !query.timeRange) return countByStatus(db, query.statuses);
  if (statusesOnly && db.getExecutor().adapter instanceof SqliteAdapter) return countInRange(db, query);
  return count(matching);
}

/**
 * The tasks of a time range (and statuses): its whole hours summed from
 * task_hour_counts, the tasks of its partial first and last hours counted
 * over an index, at most two hours of them whatever the range.
 */
async function countInRange(db: Kysely<Database>, query: TaskQuery): Promise<number> {
  const { column, startMs = 1, endMs = Number.MAX_SAFE_INTEGER } = query.timeRange!;
  const first = Math.ceil(startMs / HOUR_MS);
  const last = Math.floor(endMs / HOUR_MS);
  const countBetween = (from: number, to: number) =>
    from >= to ? 0 : count(db.selectFrom("tasks").where((eb) => eb.and(taskConditions(eb, { ...query, timeRange: { column, startMs: from, endMs: to } }))));
  if (first >= last) return countBetween(startMs, endMs);
  let hours = db
    .selectFrom("task_hour_counts")
    .select((eb) => eb.fn.sum<number | string | null>("n").as("n"))
    .where("time_column", "=", column)
    .where("hour", ">=", first)
    .where("hour", "<", last);
  if (query.statuses.length > 0) hours = hours.where("status", "in", query.statuses);
  const whole = Number((await hours.executeTakeFirstOrThrow()).n ?? 0);
  return whole + (await countBetween(startMs, first * HOUR_MS)) + (await countBetween(last * HOUR_MS, endMs));
}

/** How many tasks have one of these statuses (any status when none is given). */
export async function countByStatus(db: Kysely<Database>, statuses: readonly number[]): Promise<number> {
  let select = db.selectFrom("task_counts").select((eb) => eb.fn.sum<number | string | null>("n").as("n"));
  if (statuses.length > 0) select = select.where("status", "in", statuses);
  const row = await select.executeTakeFirstOrThrow();
  return Number(row.n ?? 0);
}

/** One page of a task's events, in sequence order, each as its stored encoding. */
export async function listTaskEvents(
  db: Kysely<Database>,
  query: { taskId: string; afterSequence: number; limit: number; countTotal: boolean },
): Promise<Page<{ sequence: number; payload: Uint8Array }>> {
  const matching = db.selectFrom("events").where("task_id", "=", query.taskId);
  const rows = await matching
    .select(["sequence", "payload"])
    .where("sequence", ">", query.afterSequence)
    .orderBy("sequence")
    .limit(query.limit + 1)
    .execute();
  const fitting = fitBudget(rows.slice(0, query.limit), (row) => row.payload.length);
  return {
    items: fitting,
    more: rows.length > fitting.length,
    total: query.countTotal ? await count(matching) : undefined,
  };
}

function taskConditions(eb: ExpressionBuilder<Database, "tasks">, query: TaskQuery) {
  const conditions = [];
  for (const [column, value] of filterColumns(query.filter)) conditions.push(eb(column, "=", value));
  if (query.filter.toolCallId !== "") conditions.push(eb("tool_call_id", "=", query.filter.toolCallId));
  if (query.statuses.length > 0) conditions.push(eb("status", "in", query.statuses));
  const range = query.timeRange;
  if (range) {
    conditions.push(eb(range.column, ">", 0));
    if (range.startMs !== undefined) conditions.push(eb(range.column, ">=", range.startMs));
    if (range.endMs !== undefined) conditions.push(eb(range.column, "<", range.endMs));
  }
  return conditions;
}

async function count<T extends keyof Database>(matching: SelectQueryBuilder<Database, T, object>): Promise<number> {
  const row = await matching.select((eb) => eb.fn.countAll<number | string>().as("n")).executeTakeFirstOrThrow();
  return Number(row.n);
}
