import { create, fromBinary, fromJson, type JsonObject, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { CompiledQuery, sql, type Kysely, type Transaction } from "kysely";
import { TaskEventSchema, TaskStatus, type TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import { timestampFromMs } from "../domain/time.js";
import { binaryChunks, insertRows } from "./batch-statements.js";
import type { Db, DialectName } from "./connect.js";
import { eventBytes } from "./event-wire.js";
import { WireWriter } from "./wire-writer.js";
import type { Database, EventRow, TaskRow } from "./schema.js";

/** The payload of one event: which oneof case, and its message. */
export type EventKind = NonNullable<MessageInitShape<typeof TaskEventSchema>["kind"]>;

/**
 * Appends events for one or more task states, in order, inside the caller's
 * transaction, and returns them with their sequences.
 *
 * The sequence comes from incrementing the single log_head row. Its row lock
 * is held until the transaction commits, so writers take sequences in commit
 * order: no smaller sequence can become visible after a larger one, which is
 * what lets readers tail the log by `sequence > last` (DESIGN guarantee 2).
 * Callers append last, just before commit, to keep that lock short.
 */
export async function appendEvents(
  trx: Transaction<Database>,
  dialect: DialectName,
  entries: { task: TaskRow; kind: EventKind }[],
  now: number,
): Promise<AppendedEvent[]> {
  if (entries.length === 0) return [];
  const head = (await trx.executeQuery<{ last_sequence: number }>(CompiledQuery.raw(ADVANCE_HEAD[dialect], [entries.length]))).rows[0];
  const first = Number(head.last_sequence) - entries.length + 1;
  const rows = entries.map(({ task, kind }, i) => eventRow(task, kind, first + i, now));
  for (const chunk of binaryChunks(rows)) await insertRows(trx, dialect, "events", chunk);
  return rows.map((row) => ({ taskId: row.task_id, sequence: row.sequence }));
}

/*
 * The statements run at every commit and every tail read, written out once:
 * Kysely built and compiled each anew per call, which cost more than SQLite
 * spent running them.
 */
const ADVANCE_HEAD: Record<DialectName, string> = {
  sqlite: 'update "log_head" set "last_sequence" = "last_sequence" + ? where "id" = 1 returning "last_sequence"',
  postgres: 'update "log_head" set "last_sequence" = "last_sequence" + $1 where "id" = 1 returning "last_sequence"',
};
/** What a LogEntry is read from. */
const ENTRY_COLUMNS = ["sequence", "task_id", "tool_name", "agent_id", "run_id", "thread_id", "resource_id", "event_time", "payload"] as const;
const ENTRY_COLUMN_LIST = ENTRY_COLUMNS.map((column) => `"${column}"`).join(", ");
const READ_TAIL: Record<DialectName, string> = {
  sqlite: `select ${ENTRY_COLUMN_LIST} from "events" where "sequence" > ? and "sequence" <= ? order by "sequence" limit ?`,
  postgres: `select ${ENTRY_COLUMN_LIST} from "events" where "sequence" > $1 and "sequence" <= $2 order by "sequence" limit $3`,
};

/** Every log entry in (after, through], oldest first, up to `limit`: the tail's read. */
export async function readTail(db: Db, after: number, through: number, limit: number): Promise<LogEntry[]> {
  const { rows } = await db.kysely.executeQuery<EventRow>(CompiledQuery.raw(READ_TAIL[db.dialect], [after, through, limit]));
  return rows.map(logEntry);
}

/** Where an appended event went in the log. */
export interface AppendedEvent {
  taskId: string;
  sequence: number;
}

/** The `running` event of a task as its row stands: what it runs, since when, and where. */
export function runningKind(task: TaskRow): EventKind {
  return {
    case: "running",
    value: {
      args: JSON.parse(task.args) as JsonObject,
      startTime: timestampFromMs(task.start_time),
      workerId: task.worker_id,
      resumeData: task.resume_data === null ? undefined : fromJson(ValueSchema, JSON.parse(task.resume_data) as JsonValue),
    },
  };
}

/** The identity fields a stream filters on; empty strings match anything. */
export interface EventFilter {
  agentId: string;
  runId: string;
  threadId: string;
  resourceId: string;
  taskId: string;
  toolName: string;
}

const FILTER_COLUMNS = {
  agentId: "agent_id",
  runId: "run_id",
  threadId: "thread_id",
  resourceId: "resource_id",
  taskId: "task_id",
  toolName: "tool_name",
} as const satisfies Record<keyof EventFilter, keyof EventRow & keyof TaskRow>;

/** The set filter fields as [column, value] pairs, for SQL on events or tasks. */
export function filterColumns(filter: EventFilter | undefined): [keyof EventRow & keyof TaskRow, string][] {
  if (!filter) return [];
  return (Object.keys(FILTER_COLUMNS) as (keyof EventFilter)[])
    .filter((field) => filter[field] !== "")
    .map((field) => [FILTER_COLUMNS[field], filter[field]]);
}

/** The fields that identify an event's task, which filters compare. */
export type EventIdentity = Pick<TaskEvent, "taskId" | "toolName" | "agentId" | "runId" | "threadId" | "resourceId">;

/** One event as the log holds it: its identity, to filter on, and its encoding, to send as is. */
export interface LogEntry extends EventIdentity {
  sequence: number;
  /** When the writing transaction began, ms since the epoch, by the writer's clock. */
  eventTime: number;
  /** The binary TaskEvent, encoded once when it was appended. */
  payload: Uint8Array;
}

/** Whether an event's identity matches a filter, for filtering in memory. */
export function matchesFilter(event: EventIdentity, filter: EventFilter): boolean {
  return (
    (filter.agentId === "" || filter.agentId === event.agentId) &&
    (filter.runId === "" || filter.runId === event.runId) &&
    (filter.threadId === "" || filter.threadId === event.threadId) &&
    (filter.resourceId === "" || filter.resourceId === event.resourceId) &&
    (filter.taskId === "" || filter.taskId === event.taskId) &&
    (filter.toolName === "" || filter.toolName === event.toolName)
  );
}

/** A range of the log to read: the events in (after, through] that match the filter. */
export interface LogRange {
  after: number;
  through?: number;
  filter?: EventFilter;
}

/** The events of a range, oldest first, filtered in SQL: a query to choose columns and a limit for. */
function eventsIn(db: Kysely<Database>, range: LogRange) {
  let select = db.selectFrom("events").where("sequence", ">", range.after);
  if (range.through !== undefined) select = select.where("sequence", "<=", range.through);
  for (const [column, value] of filterColumns(range.filter)) select = select.where(column, "=", value);
  return select.orderBy("sequence");
}

/** Reads log entries of a range, oldest first, up to `limit`; nothing is decoded. */
export async function readLogEntries(db: Kysely<Database>, query: LogRange & { limit: number }): Promise<LogEntry[]> {
  const rows = await eventsIn(db, query).select(ENTRY_COLUMNS).limit(query.limit).execute();
  return rows.map(logEntry);
}

/** The sequences and stored bytes of a range's events, oldest first: what a stream sends of them. */
export async function readStoredEvents(db: Kysely<Database>, range: LogRange): Promise<Pick<LogEntry, "sequence" | "payload">[]> {
  return eventsIn(db, range).select(["sequence", "payload"]).execute();
}

/** A log entry from an events row's identity columns and payload. */
export function logEntry(row: Pick<EventRow, (typeof ENTRY_COLUMNS)[number]>): LogEntry {
  return {
    sequence: row.sequence,
    eventTime: Number(row.event_time),
    taskId: row.task_id,
    toolName: row.tool_name,
    agentId: row.agent_id,
    runId: row.run_id,
    threadId: row.thread_id,
    resourceId: row.resource_id,
    payload: row.payload,
  };
}

/** Reads events of a range, decoded, oldest first. */
export async function readEvents(db: Kysely<Database>, query: LogRange & { limit: number }): Promise<TaskEvent[]> {
  return (await readLogEntries(db, query)).map((entry) => fromBinary(TaskEventSchema, entry.payload));
}

/** Where an event sits in the log, and how many bytes its payload takes: enough to plan a read by size. */
export interface EventSize {
  sequence: number;
  size: number;
}

/** The stored size of a payload, read without loading it (SQLite's length() and PostgreSQL's octet_length() of a blob skip its content). */
const payloadSize = (dialect: DialectName, column = "payload") =>
  dialect === "postgres" ? sql<number>`octet_length(${sql.ref(column)})` : sql<number>`length(${sql.ref(column)})`;

/** The sequences and payload sizes of a range's events, oldest first, up to `limit`. */
export async function readEventSizes(db: Db, query: LogRange & { limit: number }): Promise<EventSize[]> {
  const rows = await eventsIn(db.kysely, query).select(["sequence", payloadSize(db.dialect).as("size")]).limit(query.limit).execute();
  return rows.map((row) => ({ sequence: Number(row.sequence), size: Number(row.size) }));
}

/** The stored events with these sequences, in the order given; an event the log no longer holds is left out. */
export async function readPayloads(db: Kysely<Database>, sequences: readonly number[]): Promise<Pick<LogEntry, "sequence" | "payload">[]> {
  if (sequences.length === 0) return [];
  const rows = await db.selectFrom("events").select(["sequence", "payload"]).where("sequence", "in", sequences).execute();
  const bySequence = new Map(rows.map((row) => [Number(row.sequence), row]));
  return sequences.flatMap((sequence) => bySequence.get(sequence) ?? []);
}

/**
 * The running tasks matching a filter, as each one's latest `running` event,
 * and the log sequence S they are read at, in one consistent snapshot: every
 * event after S is a change the snapshot does not show yet. Only the events'
 * sequences and sizes (oldest start first): a stream reads their payloads a
 * page at a time, however many tasks run.
 */
export async function runningSnapshotSizes(db: Db, filter: EventFilter): Promise<{ sequence: number; entries: EventSize[] }> {
  const read = async (k: Kysely<Database>) => {
    const { last } = await logBounds(k);
    let select = k
      .selectFrom("tasks as t")
      .innerJoin("events as e", "e.task_id", "t.task_id")
      .select(["e.sequence", payloadSize(db.dialect, "e.payload").as("size")])
      .where("t.status", "=", TaskStatus.RUNNING)
      .where("e.sequence", "=", (eb) =>
        eb.selectFrom("events as r").select((r) => r.fn.max("r.sequence").as("s")).whereRef("r.task_id", "=", "t.task_id").where("r.kind", "=", "running"),
      );
    for (const [column, value] of filterColumns(filter)) select = select.where(`t.${column}`, "=", value);
    const rows = await select.orderBy("t.start_time").orderBy("t.task_id").execute();
    return { sequence: last, entries: rows.map((row) => ({ sequence: Number(row.sequence), size: Number(row.size) })) };
  };
  // PostgreSQL: one snapshot for both reads. SQLite: the transaction holds the
  // only connection, so no write lands between them.
  const transaction = db.kysely.transaction();
  return db.dialect === "postgres" ? transaction.setIsolationLevel("repeatable read").execute(read) : transaction.execute(read);
}

/** The log's bounds: the last sequence handed out, and how far retention trimmed it. */
export async function logBounds(db: Kysely<Database>): Promise<{ last: number; trimmedThrough: number }> {
  const head = await db
    .selectFrom("log_head")
    .select(["last_sequence", "trimmed_through"])
    .where("id", "=", 1)
    .executeTakeFirstOrThrow();
  return { last: head.last_sequence, trimmedThrough: head.trimmed_through };
}

/** A task's event: its identity and status from the row, with the given kind (what eventBytes encodes). */
export function eventFor(task: TaskRow, kind: EventKind, sequence: number, now: number): TaskEvent {
  return create(TaskEventSchema, {
    sequence: BigInt(sequence),
    eventTime: timestampFromMs(now),
    taskId: task.task_id,
    toolName: task.tool_name,
    toolCallId: task.tool_call_id,
    agentId: task.agent_id,
    runId: task.run_id,
    threadId: task.thread_id,
    resourceId: task.resource_id,
    status: task.status,
    attempt: task.attempt,
    kind,
  });
}

/** One writer for every payload: eventBytes copies its bytes out. */
const payloadWriter = new WireWriter(1024);

function eventRow(task: TaskRow, kind: EventKind, sequence: number, now: number): EventRow {
  return {
    sequence,
    task_id: task.task_id,
    tool_name: task.tool_name,
    tool_call_id: task.tool_call_id,
    agent_id: task.agent_id,
    run_id: task.run_id,
    thread_id: task.thread_id,
    resource_id: task.resource_id,
    kind: kind.case ?? "",
    event_time: now,
    payload: eventBytes(payloadWriter, task, kind, sequence, now),
  };
}
