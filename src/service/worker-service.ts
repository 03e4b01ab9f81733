import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  ClaimTasksResponseSchema,
  WorkerService,
  type ClaimTasksRequest,
  type CompleteTaskRequest,
  type FailTaskRequest,
} from "../../gen/taskstream/v1/worker_service_pb.js";
import { TaskErrorSchema, TaskStatus, type TaskError } from "../../gen/taskstream/v1/task_pb.js";
import { create, toBinary } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { invalidArgument } from "../errors.js";
import { msFromDuration } from "../domain/time.js";
import { requireOutputFits } from "../storage/size-budget.js";
import { taskFromRow } from "../storage/task-rows.js";
import type { LeasedItem } from "../storage/task-store.js";
import { taskOutcome, validateBatch } from "./batches.js";
import type { ServiceDeps } from "./deps.js";
import { speaksJson, withEncodedField } from "./encoded-response.js";
import { leaseMessage, writeClaimedTask } from "./leases.js";
import { durationMs, intInRange, requireId, requireJsonObject, requireJsonValue } from "./validate.js";

export const MAX_CLAIM_BATCH = 100;
/**
 * The most distinct tools one claim may name. Each is a bound parameter of
 * the claim's query, and past the database's limit (32,766 on SQLite, 65,535
 * on PostgreSQL) every claim failed INTERNAL.
 */
export const MAX_CLAIM_TOOLS = 1000;
/** The most requests one DispatchTasks, CompleteTasks or FailTasks call may carry. */
export const MAX_BATCH_REQUESTS = 1000;
/** Claimers look again this often even unwoken: for work other replicas queue, and retries whose delay ran out. */
const CLAIM_POLL_MS = 250;
/** A long-poll answers this long before the client's deadline, so an empty answer beats DEADLINE_EXCEEDED. */
const DEADLINE_MARGIN_MS = 100;

/** Workers' calls: claim, then heartbeat, report and finish under a lease. */
export function workerService(deps: ServiceDeps): ServiceImpl<typeof WorkerService> {
  const { store, settings } = deps;
  const leaseMs = (field: string, value: Parameters<typeof durationMs>[1]) =>
    durationMs(field, value, { default: settings.leaseMs, max: settings.maxLeaseMs });

  return {
    async claimTasks(req, ctx) {
      const request = {
        workerId: requireId("worker_id", req.workerId),
        toolNames: toolNames(req.toolNames),
        maxTasks: req.maxTasks === 0 ? 1 : intInRange("max_tasks", req.maxTasks, 1, MAX_CLAIM_BATCH),
        leaseMs: leaseMs("lease_duration", req.leaseDuration),
      };
      const deadline = Date.now() + waitMs(req, ctx, settings.maxClaimWaitMs);
      for (;;) {
        if (ctx.signal.aborted) return { tasks: [] };
        const claimed = await store.claim(request, ctx.signal);
        const left = deadline - Date.now();
        if (claimed.length > 0 || left <= 0) {
          if (speaksJson(ctx)) {
            return { tasks: claimed.map(({ task, lease }) => ({ task: taskFromRow(task), lease: leaseMessage(lease) })) };
          }
          return withEncodedField(ClaimTasksResponseSchema, {}, ClaimTasksResponseSchema.field.tasks, claimed, writeClaimedTask);
        }
        await deps.pendingSignal.next(Math.min(left, CLAIM_POLL_MS), ctx.signal);
      }
    },

    async heartbeat(req) {
      const { task, stop } = await store.heartbeat(
        requireId("task_id", req.taskId),
        requireId("lease_id", req.leaseId),
        leaseMs("lease_duration", req.leaseDuration),
      );
      return {
        lease: leaseMessage({ leaseId: task.lease_id, expireTime: task.lease_expire_time }),
        cancelRequested: stop || task.status !== TaskStatus.RUNNING,
      };
    },

    async reportOutput(req) {
      if (req.output === undefined) throw invalidArgument("output", "is required");
      const output = requireJsonValue("output", req.output)!;
      requireOutputFits(toBinary(ValueSchema, output).length);
      const task = await store.reportOutput(requireId("task_id", req.taskId), requireId("lease_id", req.leaseId), output);
      return { sequence: BigInt(task.sequence) };
    },

    async completeTask(req) {
      const { taskId, leaseId, value } = completion(req);
      return { task: taskFromRow(await store.complete(taskId, leaseId, value)) };
    },

    async completeTasks(req) {
      const outcomes = await store.completeMany(validateBatch(req.requests, MAX_BATCH_REQUESTS, completion));
      return { results: outcomes.map(taskOutcome) };
    },

    async failTask(req) {
      const { taskId, leaseId, value } = failure(req);
      return { task: taskFromRow(await store.fail(taskId, leaseId, value)) };
    },

    async failTasks(req) {
      const outcomes = await store.failMany(validateBatch(req.requests, MAX_BATCH_REQUESTS, failure));
      return { results: outcomes.map(taskOutcome) };
    },

    async suspendTask(req) {
      const payload = requireJsonValue("payload", req.payload);
      const task = await store.suspend(requireId("task_id", req.taskId), requireId("lease_id", req.leaseId), payload);
      return { task: taskFromRow(task) };
    },
  };
}

/** A validated CompleteTask request (alone or in CompleteTasks). */
function completion(req: CompleteTaskRequest): LeasedItem<Value | undefined> {
  const value = requireJsonValue("result", req.result);
  return { taskId: requireId("task_id", req.taskId), leaseId: requireId("lease_id", req.leaseId), value };
}

/** A validated FailTask request (alone or in FailTasks); a missing error gets a message. */
function failure(req: FailTaskRequest): LeasedItem<TaskError> {
  const value = req.error ?? create(TaskErrorSchema, { message: "failed without an error" });
  requireJsonObject("error.details", value.details);
  return { taskId: requireId("task_id", req.taskId), leaseId: requireId("lease_id", req.leaseId), value };
}

/** A claim's tools, each an identifier, repeats dropped. */
function toolNames(names: string[]): string[] {
  const distinct = [...new Set(names.map((name, i) => requireId(`tool_names[${i}]`, name)))];
  if (distinct.length > MAX_CLAIM_TOOLS) throw invalidArgument("tool_names", `must name at most ${MAX_CLAIM_TOOLS} distinct tools, not ${distinct.length}`);
  return distinct;
}

/** How long this claim may wait: what the worker asked, capped by the server and the call's deadline. */
function waitMs(req: ClaimTasksRequest, ctx: HandlerContext, maxWaitMs: number): number {
  if (req.wait === undefined) return 0;
  const wait = msFromDuration(req.wait);
  if (wait < 0 || req.wait.nanos < 0 || req.wait.nanos > 999_999_999) throw invalidArgument("wait", "must not be negative, with nanos under 1e9");
  const asked = Math.min(wait, maxWaitMs);
  const budget = ctx.timeoutMs();
  return budget === undefined ? asked : Math.max(0, Math.min(asked, budget - DEADLINE_MARGIN_MS));
}
