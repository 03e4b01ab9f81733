import { create, fromJson, fromJsonString, toJson, toJsonString, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { TaskErrorSchema, TaskSchema, TaskStatus, type Task, type TaskError } from "../../gen/taskstream/v1/task_pb.js";
import { durationFromMs, timestampFromMs } from "../domain/time.js";
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
