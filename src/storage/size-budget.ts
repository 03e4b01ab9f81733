import { Code } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";
import { taskstreamError } from "../errors.js";
import type { TaskRow } from "./schema.js";
import { writeStructContent } from "./json-wire.js";
import { taskBytes } from "./task-rows.js";
import { WireWriter } from "./wire-writer.js";

const KiB = 1024;

/**
 * What one response may carry: gRPC's 4 MiB message limit, less room for the
 * response's own fields (a lease, a page token, framing).
 */
export const RESPONSE_BUDGET_BYTES = 4 * 1024 * KiB - 64 * KiB;

/**
 * The most one task may take encoded. A task that fits alone in a response
 * can always be read (GetTask, a page of one, a claim of one), and each of its
 * events, which carries one of its payloads and its identity, fits as well.
 */
export const MAX_TASK_BYTES = RESPONSE_BUDGET_BYTES - 4 * KiB;

/** What a task takes besides its ids and JSON payloads, at most: times, counters, tags. */
const TASK_SCALARS_BYTES = 256;

/** What a task takes besides its JSON payloads, at most: eight ids of up to 256 characters, as UTF-8. */
const TASK_FIXED_BYTES = 8 * KiB;

/** What an item of a batch's answer adds to its task: a lease, the item's framing. */
const ANSWER_ITEM_BYTES = 128;

/**
 * Struct/Value wire bytes per byte of JSON text, at most: a one-digit number
 * in a list is 2 bytes of text ("0,") and 11 on the wire.
 */
const WIRE_BYTES_PER_JSON_BYTE = 5.5;

/**
 * The longest prefix of `items` that fits the budget, and never less than one
 * item. `boundOf` is a cheap upper bound of an item's size; only when the
 * bounds overflow is `exactOf` paid for.
 */
export function fitBudget<T>(items: T[], boundOf: (item: T) => number, exactOf = boundOf, budget = RESPONSE_BUDGET_BYTES): T[] {
  let bound = 0;
  for (const item of items) bound += boundOf(item);
  if (bound <= budget) return items;
  let used = 0;
  for (let i = 0; i < items.length; i++) {
    used += exactOf(items[i]);
    if (used > budget && i > 0) return items.slice(0, i);
  }
  return items;
}

/** The longest prefix of `tasks` one response can carry. */
export function fitTasks(tasks: TaskRow[]): TaskRow[] {
  return fitBudget(tasks, taskSizeBound, (task) => taskBytes(task).length);
}

/**
 * At least the encoded size of the task, from the lengths of its strings (a
 * UTF-16 unit takes at most 3 bytes of UTF-8) and of its JSON columns.
 */
export function taskSizeBound(task: TaskRow): number {
  const ids = task.task_id.length + task.tool_name.length + task.tool_call_id.length + task.agent_id.length + task.run_id.length + task.thread_id.length + task.resource_id.length + task.worker_id.length;
  const json = task.args.length + (task.result?.length ?? 0) + (task.error?.length ?? 0) + (task.suspend_payload?.length ?? 0) + (task.resume_data?.length ?? 0);
  return TASK_SCALARS_BYTES + 3 * ids + json * WIRE_BYTES_PER_JSON_BYTE;
}

/**
 * Refuses a change that would make the task too large to read back: its
 * encoding must fit one response. `field` names the payload the change adds.
 */
export function requireTaskFits(task: TaskRow, field: () => string): void {
  if (taskSizeBound(task) <= MAX_TASK_BYTES) return;
  const size = taskBytes(task).length;
  if (size > MAX_TASK_BYTES) throw taskTooLarge(field(), size, task.task_id);
}

/**
 * Refuses a batch whose answer, carrying these tasks, would not fit one
 * response: checked before anything commits, so no dispatch is left without
 * its answer.
 */
export function requireAnswerFits(tasks: TaskRow[]): void {
  let bound = 0;
  for (const task of tasks) bound += taskSizeBound(task) + ANSWER_ITEM_BYTES;
  if (bound <= RESPONSE_BUDGET_BYTES) return;
  let size = 0;
  for (const task of tasks) size += taskBytes(task).length + ANSWER_ITEM_BYTES;
  if (size <= RESPONSE_BUDGET_BYTES) return;
  throw taskstreamError(
    Code.InvalidArgument,
    "RESPONSE_TOO_LARGE",
    `requests: the answer would take ${size} bytes, over the ${RESPONSE_BUDGET_BYTES} that one response can carry; send fewer per call`,
    { field: "requests", size: String(size), limit: String(RESPONSE_BUDGET_BYTES) },
  );
}

/** Refuses dispatch args too large for a task to hold. */
export function requireArgsFit(args: JsonObject): JsonObject {
  if (TASK_FIXED_BYTES + JSON.stringify(args).length * WIRE_BYTES_PER_JSON_BYTE <= MAX_TASK_BYTES) return args;
  const w = new WireWriter(64 * KiB);
  writeStructContent(w, args);
  if (TASK_FIXED_BYTES + w.pos > MAX_TASK_BYTES) throw taskTooLarge("args", TASK_FIXED_BYTES + w.pos);
  return args;
}

/** Refuses an output too large for its event to be delivered. */
export function requireOutputFits(encodedBytes: number): void {
  if (TASK_FIXED_BYTES + encodedBytes > MAX_TASK_BYTES) throw taskTooLarge("output", TASK_FIXED_BYTES + encodedBytes);
}

function taskTooLarge(field: string, size: number, taskId?: string) {
  const metadata: Record<string, string> = { field, size: String(size), limit: String(MAX_TASK_BYTES) };
  if (taskId !== undefined) metadata.task_id = taskId;
  return taskstreamError(
    Code.InvalidArgument,
    "TASK_TOO_LARGE",
    `${field}: would make the task ${size} bytes encoded, over the ${MAX_TASK_BYTES} that one response can carry; store large data elsewhere and pass a reference`,
    metadata,
  );
}
