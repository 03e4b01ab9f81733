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

/**
 * Fences a worker's call: the lease must be the task's current one, the task
 * still RUNNING, and the lease not past its expiry.
 */
export function requireLease(task: TaskRow, leaseId: string, action: Action, now: number): void {
  if (leaseId !== task.lease_id) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "LEASE_MISMATCH",
      `lease ${leaseId} is not the current lease of task ${task.task_id}`,
      { task_id: task.task_id, lease_id: leaseId },
    );
  }
  requireStatus(task, action);
  if (task.lease_expire_time <= now) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "LEASE_EXPIRED",
      `lease ${leaseId} of task ${task.task_id} expired`,
      { task_id: task.task_id, lease_id: leaseId },
    );
  }
}
