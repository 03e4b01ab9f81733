import { create, fromJson, fromJsonString, toBinary, toJson, toJsonString, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { WireType } from "@bufbuild/protobuf/wire";
import { TaskErrorSchema, TaskSchema, TaskStatus, type Task, type TaskError } from "../../gen/taskstream/v1/task_pb.js";
import { durationFromMs, timestampFromMs } from "../domain/time.js";
import { writeStructField, writeValueField } from "./json-wire.js";
import { WireWriter } from "./wire-writer.js";
import type { TaskRow } from "./schema.js";

/** Converts a stored row into the Task message clients see. */
export function taskFromRow(row: TaskRow): Task {
  return create(TaskSchema, {
    taskId: row.task_id,
    status: row.status,
    toolName: row.tool_name,
    toolCallId: row.tool_call_id,
    args: JSON.parse(row.args),
    agentId: row.agent_id,
    runId: row.run_id,
    threadId: row.thread_id,
    resourceId: row.resource_id,
    result: valueFromColumn(row.result),
    error: row.error === null ? undefined : fromJsonString(TaskErrorSchema, row.error),
    createTime: timestampFromMs(row.create_time),
    startTime: timestampFromMs(row.start_time),
    suspendTime: timestampFromMs(row.suspend_time),
    completeTime: timestampFromMs(row.complete_time),
    attempt: row.attempt,
    maxRetries: row.max_retries,
    timeout: durationFromMs(row.timeout_ms),
    sequence: BigInt(row.sequence),
    cancelRequested: row.cancel_requested === 1,
    suspendPayload: valueFromColumn(row.suspend_payload),
    resumeData: valueFromColumn(row.resume_data),
    workerId: row.worker_id,
    retryTime: row.status === TaskStatus.PENDING && row.ready_time > row.create_time ? timestampFromMs(row.ready_time) : undefined,
    retryPolicy: {
      initialDelay: durationFromMs(row.retry_delay_ms),
      backoffMultiplier: row.retry_backoff,
      maxDelay: durationFromMs(row.max_retry_delay_ms),
    },
  });
}

/**
 * The binary encoding of `taskFromRow(row)`, written straight from the row:
 * decoding it gives exactly `taskFromRow(row)`. protobuf-es builds a message
 * per JSON value and encodes by reflection, which made encoding most of a
 * list call's time; this is about ten times faster. The tests check it
 * against taskFromRow field by field, on random and edge rows.
 */
export function taskBytes(row: TaskRow): Uint8Array {
  const w = new WireWriter(1024);
  writeTask(w, row);
  return w.finish();
}

/**
 * A set of Task fields, by field number (bit n for field n): what a read
 * mask leaves in an answer.
 */
export type TaskFields = number;

/** Every field of Task. */
export const ALL_TASK_FIELDS: TaskFields = TaskSchema.fields.reduce((fields, field) => {
  if (field.number > 30) throw new Error(`Task field ${field.name} (${field.number}) does not fit a TaskFields bit`);
  return fields | (1 << field.number);
}, 0);

/** Whether `fields` holds the field numbered `n`. */
export function hasField(fields: TaskFields, n: number): boolean {
  return (fields & (1 << n)) !== 0;
}

/** Writes the content (no tag, no length) of the Task of `row`, or of its `fields` alone. */
export function writeTask(w: WireWriter, row: TaskRow, fields: TaskFields = ALL_TASK_FIELDS): void {
  const has = (n: number) => hasField(fields, n);
  if (has(1)) string(w, 1, row.task_id);
  if (has(2) && row.status !== 0) w.uint32(tag(2, Varint)).int32(row.status);
  if (has(3)) string(w, 3, row.tool_name);
  if (has(4)) string(w, 4, row.tool_call_id);
  if (has(5)) writeStructField(w, 5, jsonObject(row.args));
  if (has(6)) string(w, 6, row.agent_id);
  if (has(7)) string(w, 7, row.run_id);
  if (has(8)) string(w, 8, row.thread_id);
  if (has(9)) string(w, 9, row.resource_id);
  if (has(10) && row.result !== null) writeValueField(w, 10, JSON.parse(row.result) as JsonValue);
  if (has(11) && row.error !== null) writeError(w, 11, row.error);
  if (has(12)) timestamp(w, 12, row.create_time);
  if (has(13)) timestamp(w, 13, row.start_time);
  if (has(14)) timestamp(w, 14, row.suspend_time);
  if (has(15)) timestamp(w, 15, row.complete_time);
  if (has(16) && row.attempt !== 0) w.uint32(tag(16, Varint)).int32(row.attempt);
  if (has(17) && row.max_retries !== 0) w.uint32(tag(17, Varint)).int32(row.max_retries);
  if (has(18)) duration(w, 18, row.timeout_ms);
  if (has(19) && row.sequence !== 0) w.uint32(tag(19, Varint)).int64(row.sequence);
  if (has(20) && row.cancel_requested === 1) w.uint32(tag(20, Varint)).bool(true);
  if (has(21) && row.suspend_payload !== null) writeValueField(w, 21, JSON.parse(row.suspend_payload) as JsonValue);
  if (has(22) && row.resume_data !== null) writeValueField(w, 22, JSON.parse(row.resume_data) as JsonValue);
  if (has(23)) string(w, 23, row.worker_id);
  if (has(24) && row.status === TaskStatus.PENDING && row.ready_time > row.create_time) timestamp(w, 24, row.ready_time);
  if (has(25)) writeRetryPolicy(w, row);
}

/** RetryPolicy { initial_delay = 1; backoff_multiplier = 2; max_delay = 3; }, as field 25. */
function writeRetryPolicy(w: WireWriter, row: TaskRow): void {
  w.uint32(tag(25, LEN));
  const policy = w.begin();
  duration(w, 1, row.retry_delay_ms);
  if (row.retry_backoff !== 0) w.uint32(tag(2, WireType.Bit64)).double(row.retry_backoff);
  duration(w, 3, row.max_retry_delay_ms);
  w.end(policy);
}

function jsonObject(json: string): JsonObject {
  const value = JSON.parse(json) as JsonValue;
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error("args: not a JSON object");
  return value;
}

const LEN = WireType.LengthDelimited;
const Varint = WireType.Varint;
const tag = (no: number, wireType: WireType) => (no << 3) | wireType;

function string(w: WireWriter, no: number, value: string): void {
  w.stringField(no, value);
}

/** A Timestamp field as timestampFromMs makes it: left out for 0 (not set). */
function timestamp(w: WireWriter, no: number, ms: number): void {
  if (ms !== 0) secondsAndNanos(w, no, ms);
}

/** A Duration field as durationFromMs makes it: always set. */
function duration(w: WireWriter, no: number, ms: number): void {
  secondsAndNanos(w, no, ms);
}

function secondsAndNanos(w: WireWriter, no: number, ms: number): void {
  w.secondsNanosField(no, ms);
}

/**
 * Field `no` as the TaskError stored as protobuf JSON (errorToColumn wrote
 * it: TaskError { message = 1; stack = 2; code = 3; retryable = 4;
 * Struct details = 5; }). A column of any other shape takes protobuf-es's way.
 */
function writeError(w: WireWriter, no: number, json: string): void {
  const error = JSON.parse(json) as unknown;
  w.uint32(tag(no, LEN));
  const start = w.begin();
  if (!isPlainError(error)) {
    w.raw(toBinary(TaskErrorSchema, fromJsonString(TaskErrorSchema, json)));
  } else {
    for (const key of Object.keys(error)) {
      const value = error[key];
      if (value === null) continue;
      if (key === "retryable") {
        if (value === true) w.uint32(tag(4, Varint)).bool(true);
      } else if (key === "details") {
        writeStructField(w, 5, value as JsonObject); // isPlainError checked it is an object
      } else {
        string(w, ERROR_STRING_FIELDS[key], value as string);
      }
    }
  }
  w.end(start);
}

const ERROR_STRING_FIELDS: Record<string, number> = { message: 1, stack: 2, code: 3 };

/** A TaskError's JSON with only its own fields, each of the JSON type protobuf JSON gives it, each once. */
function isPlainError(error: unknown): error is Record<string, JsonValue> {
  if (typeof error !== "object" || error === null || Array.isArray(error)) return false;
  for (const [key, value] of Object.entries(error)) {
    if (value === null) continue;
    if (Object.prototype.hasOwnProperty.call(ERROR_STRING_FIELDS, key)) {
      if (typeof value !== "string") return false;
    } else if (key === "retryable") {
      if (typeof value !== "boolean") return false;
    } else if (key === "details") {
      if (typeof value !== "object" || Array.isArray(value)) return false;
    } else {
      return false;
    }
  }
  return true;
}

/** A google.protobuf.Value as a JSON column, or null when absent. */
export function valueToColumn(value: Value | undefined): string | null {
  return value === undefined ? null : JSON.stringify(toJson(ValueSchema, value));
}

export function valueFromColumn(column: string | null): Value | undefined {
  return column === null ? undefined : fromJson(ValueSchema, JSON.parse(column) as JsonValue);
}

export function errorToColumn(error: TaskError): string {
  return toJsonString(TaskErrorSchema, error);
}
