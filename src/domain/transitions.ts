import { Code } from "@connectrpc/connect";
import { TaskStatus } from "../../gen/taskstream/v1/task_pb.js";
import { taskstreamError } from "../errors.js";
import type { TaskRow } from "../storage/schema.js";

/**
 * The state machine: which status each action may start from.
 *
 *   PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED | TIMED_OUT
 *   RUNNING -> SUSPENDED -> PENDING, or RUNNING when resumed with a claim
 *   PENDING | SUSPENDED -> CANCELLED
 */
const ALLOWED_FROM = {
  claim: [TaskStatus.PENDING],
  heartbeat: [TaskStatus.RUNNING],
  report_output: [TaskStatus.RUNNING],
  complete: [TaskStatus.RUNNING],
  fail: [TaskStatus.RUNNING],
  suspend: [TaskStatus.RUNNING],
  cancel: [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED],
  resume: [TaskStatus.SUSPENDED],
} satisfies Record<string, TaskStatus[]>;

export type Action = keyof typeof ALLOWED_FROM;

const TERMINAL = new Set([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT]);

export function isTerminal(status: TaskStatus): boolean {
  return TERMINAL.has(status);
}

export function statusName(status: TaskStatus): string {
  return TaskStatus[status] ?? String(status);
}

/** Refuses, with FAILED_PRECONDITION, an action the task's status does not allow. */
export function requireStatus(task: TaskRow, action: Action): void {
  if ((ALLOWED_FROM[action] as TaskStatus[]).includes(task.status)) return;
  throw taskstreamError(
    Code.FailedPrecondition,
    "INVALID_TRANSITION",
    `cannot ${action.replace("_", " ")} task ${task.task_id}: it is ${statusName(task.status)}`,
    { task_id: task.task_id, status: statusName(task.status), action },
  );
}

/** Whether the task's current attempt ran past its timeout (the sweeper may not have ended it yet). */
export function timedOut(task: Pick<TaskRow, "timeout_time">, now: number): boolean {
  return task.timeout_time > 0 && task.timeout_time <= now;
}

/**
 * Fences a worker's call: the lease must be the task's current one, the task
 * still RUNNING, and neither the lease past its expiry nor the attempt past
 * its timeout (a lease is void from then on, not from when the sweeper acts).
 */
export function requireLease(task: TaskRow, leaseId: string, action: Action, now: number): void {
  // A pending task keeps the lease of the attempt that ended (retried, or
  // resumed after a suspend), but holds none: that lease is stale, not a
  // lease of a task in the wrong state.
  const stale = task.status === TaskStatus.PENDING;
  if (leaseId !== task.lease_id || (stale && task.lease_expire_time > now)) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "LEASE_MISMATCH",
      `lease ${leaseId} is not the current lease of task ${task.task_id}`,
      { task_id: task.task_id, lease_id: leaseId },
    );
  }
  if (!stale) requireStatus(task, action);
  if (task.lease_expire_time <= now) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "LEASE_EXPIRED",
      `lease ${leaseId} of task ${task.task_id} expired`,
      { task_id: task.task_id, lease_id: leaseId },
    );
  }
  if (timedOut(task, now)) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "LEASE_EXPIRED",
      `lease ${leaseId} of task ${task.task_id} expired: attempt ${task.attempt} ran past its timeout of ${task.timeout_ms} ms`,
      { task_id: task.task_id, lease_id: leaseId },
    );
  }
}
