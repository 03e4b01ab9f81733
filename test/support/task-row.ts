import { randomUUID } from "node:crypto";
import { TaskStatus } from "../../gen/taskstream/v1/task_pb.js";
import type { TaskRow } from "../../src/storage/schema.js";
import type { NewTask } from "../../src/storage/task-store.js";

/** A stored task row for tests that write or encode rows directly: a fresh pending task, with `overrides`. */
export function taskRow(overrides: Partial<TaskRow> = {}): TaskRow {
  return {
    task_id: randomUUID(),
    request_id: null,
    status: TaskStatus.PENDING,
    tool_name: "tool",
    tool_call_id: "",
    agent_id: "",
    run_id: "",
    thread_id: "",
    resource_id: "",
    args: "{}",
    result: null,
    error: null,
    create_time: 1_000_000,
    start_time: 0,
    suspend_time: 0,
    complete_time: 0,
    attempt: 0,
    max_retries: 0,
    timeout_ms: 60_000,
    sequence: 0,
    cancel_requested: 0,
    cancel_reason: "",
    suspend_payload: null,
    resume_data: null,
    worker_id: "",
    lease_id: "",
    lease_expire_time: 0,
    ready_time: 0,
    timeout_time: 0,
    retry_delay_ms: 1000,
    retry_backoff: 2,
    max_retry_delay_ms: 60_000,
    ...overrides,
  };
}

/** What a dispatch stores, for tests that drive TaskStore directly: a task of tool "tool" with the defaults, and `overrides`. */
export function newTask(overrides: Partial<NewTask> = {}): NewTask {
  return {
    requestId: "",
    toolName: "tool",
    toolCallId: "",
    args: {},
    agentId: "",
    runId: "",
    threadId: "",
    resourceId: "",
    maxRetries: 0,
    timeoutMs: 60_000,
    retryDelayMs: 1000,
    retryBackoff: 2,
    maxRetryDelayMs: 60_000,
    backpressure: "queue",
    ...overrides,
  };
}
