import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { sql, type Kysely, type Transaction } from "kysely";
import { TaskEventSchema, type TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import { timestampFromMs } from "../domain/time.js";
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
  entries: { task: TaskRow; kind: EventKind }[],
  now: number,
): Promise<TaskEvent[]> {
  if (entries.length === 0) return [];
  const head = await trx
    .updateTable("log_head")
    .set({ last_sequence: sql`last_sequence + ${entries.length}` })
    .where("id", "=", 1)
    .returning("last_sequence")
    .executeTakeFirstOrThrow();
  const first = head.last_sequence - entries.length + 1;
  const events = entries.map(({ task, kind }, i) => eventFor(task, kind, first + i, now));
  await trx.insertInto("events").values(events.map((event) => eventRow(event, now))).execute();
  return events;
}

/** Reads events after a sequence, oldest first. */
export async function readEvents(
  db: Kysely<Database>,
  query: { afterSequence: number; taskId?: string; limit: number },
): Promise<TaskEvent[]> {
  let select = db.selectFrom("events").select("payload").where("sequence", ">", query.afterSequence);
  if (query.taskId !== undefined) select = select.where("task_id", "=", query.taskId);
  const rows = await select.orderBy("sequence").limit(query.limit).execute();
  return rows.map((row) => fromBinary(TaskEventSchema, row.payload));
}

/** The last sequence handed out, 0 for an empty log. */
export async function lastSequence(db: Kysely<Database>): Promise<number> {
  const head = await db.selectFrom("log_head").select("last_sequence").where("id", "=", 1).executeTakeFirstOrThrow();
  return head.last_sequence;
}

function eventFor(task: TaskRow, kind: EventKind, sequence: number, now: number): TaskEvent {
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

function eventRow(event: TaskEvent, now: number): EventRow {
  return {
    sequence: Number(event.sequence),
    task_id: event.taskId,
    tool_name: event.toolName,
    tool_call_id: event.toolCallId,
    agent_id: event.agentId,
    run_id: event.runId,
    thread_id: event.threadId,
    resource_id: event.resourceId,
    kind: event.kind.case ?? "",
    event_time: now,
    payload: toBinary(TaskEventSchema, event),
  };
}
