import type { ServiceImpl } from "@connectrpc/connect";
import { fromBinary } from "@bufbuild/protobuf";
import { TaskEventSchema, TaskStatus, type RetryPolicy } from "../../gen/taskstream/v1/task_pb.js";
import {
  DispatchTasksResponseSchema,
  GetTaskResponseSchema,
  ListTasksRequestSchema,
  ListTasksResponseSchema,
  ListTaskEventsRequestSchema,
  ListTaskEventsResponseSchema,
  Backpressure,
  TaskService,
  TaskTimeField,
  type ClaimOptions,
  type DispatchTaskRequest,
  type ListTasksRequest,
} from "../../gen/taskstream/v1/task_service_pb.js";
import type { Settings } from "../config.js";
import { invalidArgument, taskNotFound } from "../errors.js";
import { requireArgsFit } from "../storage/size-budget.js";
import { getTask, listTaskEvents, listTasks, type TimeColumn } from "../storage/task-queries.js";
import type { ClaimBy, Dispatched, NewTask } from "../storage/task-store.js";
import { taskFromRow, writeTask } from "../storage/task-rows.js";
import { itemError, validateBatch } from "./batches.js";
import type { ServiceDeps } from "./deps.js";
import { rawBytes, speaksJson, withEncodedField } from "./encoded-response.js";
import { leaseMessage, writeDispatchResult } from "./leases.js";
import { maskTask, taskFields } from "./read-mask.js";
import { streamTasks } from "./stream-tasks.js";
import { MAX_BATCH_REQUESTS } from "./worker-service.js";
import { decodePageToken, encodePageToken, pageSize, requestFingerprint } from "./pagination.js";
import { durationMs, intInRange, optionalId, requireEnum, requireId, requireJsonObject, requireJsonValue, taskFilter, timestampMs } from "./validate.js";

/** A day: the longest delay a retry policy may ask for. */
const MAX_RETRY_DELAY_MS = 86_400_000;

const TIME_COLUMNS: Record<TaskTimeField, TimeColumn> = {
  [TaskTimeField.UNSPECIFIED]: "create_time",
  [TaskTimeField.CREATE_TIME]: "create_time",
  [TaskTimeField.START_TIME]: "start_time",
  [TaskTimeField.COMPLETE_TIME]: "complete_time",
};

/** Producers' and observers' calls. */
export function taskService(deps: ServiceDeps): ServiceImpl<typeof TaskService> {
  const { store } = deps;
  return {
    streamTasks: streamTasks(deps),

    async dispatchTask(req) {
      const { input, claim } = dispatchRequest(req, deps);
      return dispatchedMessage(await store.dispatch(input, claim));
    },

    async dispatchTasks(req, ctx) {
      const outcomes = await store.dispatchMany(validateBatch(req.requests, MAX_BATCH_REQUESTS, (r) => dispatchRequest(r, deps)));
      if (!speaksJson(ctx)) {
        return withEncodedField(DispatchTasksResponseSchema, {}, DispatchTasksResponseSchema.field.results, outcomes, writeDispatchResult);
      }
      return {
        results: outcomes.map((o) => ({
          outcome: o.ok ? { case: "dispatched" as const, value: dispatchedMessage(o.value) } : { case: "error" as const, value: itemError(o.error) },
        })),
      };
    },

    async cancelTask(req) {
      const task = await store.cancel(requireId("task_id", req.taskId), optionalId("reason", req.reason, 1024));
      return { task: taskFromRow(task) };
    },

    async resumeTask(req) {
      const claim = req.claim && claimBy(req.claim, deps);
      const { task, lease } = await store.resume(requireId("task_id", req.taskId), requireJsonValue("resume_data", req.resumeData), claim);
      return { task: taskFromRow(task), lease: lease && leaseMessage(lease) };
    },

    // GetTask, ListTasks and ListTaskEvents answer binary calls with bytes
    // written straight from storage (see encoded-response.ts): encoding tasks
    // with protobuf-es cost more than the query.
    async getTask(req, ctx) {
      const taskId = requireId("task_id", req.taskId);
      const fields = taskFields(req.readMask);
      const task = await getTask(deps.db.kysely, taskId);
      if (!task) throw taskNotFound(taskId);
      if (speaksJson(ctx)) return { task: maskTask(taskFromRow(task), fields) };
      return withEncodedField(GetTaskResponseSchema, {}, GetTaskResponseSchema.field.task, [task], (w, row) => writeTask(w, row, fields));
    },

    async listTasks(req, ctx) {
      const fields = taskFields(req.readMask);
      const fingerprint = requestFingerprint(ListTasksRequestSchema, req);
      const token = req.pageToken === "" ? undefined : decodePageToken(req.pageToken, fingerprint, isTaskPosition);
      const after = token && { value: token.position.v, taskId: token.position.id };
      const limit = pageSize(req.pageSize);
      const page = await listTasks(deps.db.kysely, { ...taskQuery(req), limit, after, countTotal: !token });
      const total = token?.total ?? page.total!;
      const last = page.items[page.items.length - 1];
      const orderBy = TIME_COLUMNS[req.orderBy];
      const response = {
        nextPageToken: page.more ? encodePageToken(fingerprint, { position: { v: last[orderBy], id: last.task_id }, total }) : "",
        totalSize: BigInt(total),
      };
      if (speaksJson(ctx)) return { ...response, tasks: page.items.map((row) => maskTask(taskFromRow(row), fields)) };
      return withEncodedField(ListTasksResponseSchema, response, ListTasksResponseSchema.field.tasks, page.items, (w, row) => writeTask(w, row, fields));
    },

    async listTaskEvents(req, ctx) {
      const taskId = requireId("task_id", req.taskId);
      const fingerprint = requestFingerprint(ListTaskEventsRequestSchema, req);
      const token = req.pageToken === "" ? undefined : decodePageToken(req.pageToken, fingerprint, isSequence);
      if (!token && !(await getTask(deps.db.kysely, taskId))) throw taskNotFound(taskId);
      const page = await listTaskEvents(deps.db.kysely, {
        taskId,
        afterSequence: token?.position ?? 0,
        limit: pageSize(req.pageSize),
        countTotal: !token,
      });
      const total = token?.total ?? page.total!;
      const last = page.items[page.items.length - 1];
      const response = {
        nextPageToken: page.more ? encodePageToken(fingerprint, { position: last.sequence, total }) : "",
        totalSize: BigInt(total),
      };
      // Events are stored encoded: a binary call gets those bytes as they are.
      const payloads = page.items.map((event) => event.payload);
      if (speaksJson(ctx)) return { ...response, events: payloads.map((payload) => fromBinary(TaskEventSchema, payload)) };
      return withEncodedField(ListTaskEventsResponseSchema, response, ListTaskEventsResponseSchema.field.events, payloads, rawBytes);
    },
  };
}

/** A validated DispatchTask request (alone or in DispatchTasks): the new task, and who claims it at once. */
function dispatchRequest(req: DispatchTaskRequest, deps: ServiceDeps): { input: NewTask; claim?: ClaimBy } {
  const { settings } = deps;
  const input = {
    requestId: optionalId("request_id", req.requestId, 128),
    toolName: requireId("tool_name", req.toolName),
    toolCallId: optionalId("tool_call_id", req.toolCallId),
    args: requireArgsFit(requireJsonObject("args", req.args)),
    agentId: optionalId("agent_id", req.agentId),
    runId: optionalId("run_id", req.runId),
    threadId: optionalId("thread_id", req.threadId),
    resourceId: optionalId("resource_id", req.resourceId),
    maxRetries: intInRange("max_retries", req.maxRetries ?? settings.maxRetries, 0, 100),
    timeoutMs: durationMs("timeout", req.timeout, { default: settings.taskTimeoutMs, max: settings.maxTaskTimeoutMs }),
    ...retryPolicy(req.retryPolicy, settings),
    backpressure: backpressure(req.backpressure, settings),
  };
  return { input, claim: req.claim && claimBy(req.claim, deps) };
}

function dispatchedMessage({ task, created, lease }: Dispatched) {
  return { task: taskFromRow(task), created, lease: lease && leaseMessage(lease) };
}

/** A dispatch's retry policy; what it leaves out comes from the settings. */
function retryPolicy(policy: RetryPolicy | undefined, settings: Settings) {
  // 0 is proto3's unset; NaN is not, and is refused below.
  const backoff = policy === undefined || policy.backoffMultiplier === 0 ? settings.retryBackoff : policy.backoffMultiplier;
  if (!(backoff >= 1) || !Number.isFinite(backoff)) throw invalidArgument("retry_policy.backoff_multiplier", "must be at least 1");
  const delay = (field: string, value: RetryPolicy["initialDelay"], fallback: number) =>
    value === undefined ? fallback : durationMs(field, value, { default: fallback, max: MAX_RETRY_DELAY_MS });
  return {
    retryDelayMs: delay("retry_policy.initial_delay", policy?.initialDelay, settings.retryDelayMs),
    retryBackoff: backoff,
    maxRetryDelayMs: delay("retry_policy.max_delay", policy?.maxDelay, settings.maxRetryDelayMs),
  };
}

function backpressure(value: Backpressure, settings: Settings): "queue" | "reject" {
  if (value === Backpressure.UNSPECIFIED) return settings.backpressure;
  return requireEnum("backpressure", value, Backpressure) === Backpressure.REJECT ? "reject" : "queue";
}

/** The validated ClaimOptions of a dispatch or resume. */
export function claimBy(claim: ClaimOptions, deps: ServiceDeps): ClaimBy {
  return {
    workerId: requireId("claim.worker_id", claim.workerId),
    leaseMs: durationMs("claim.lease_duration", claim.leaseDuration, { default: deps.settings.leaseMs, max: deps.settings.maxLeaseMs }),
  };
}

function taskQuery(req: ListTasksRequest) {
  const range = req.timeRange;
  return {
    filter: { ...taskFilter(req.filter), toolCallId: optionalId("tool_call_id", req.toolCallId) },
    statuses: req.statuses.map((s, i) => requireEnum(`statuses[${i}]`, s, TaskStatus)),
    timeRange: range && {
      column: TIME_COLUMNS[timeField("time_range.field", range.field)],
      startMs: timestampMs("time_range.start_time", range.startTime),
      endMs: timestampMs("time_range.end_time", range.endTime),
    },
    orderBy: TIME_COLUMNS[timeField("order_by", req.orderBy)],
    descending: req.descending,
  };
}

function timeField(field: string, value: TaskTimeField): TaskTimeField {
  return value === TaskTimeField.UNSPECIFIED ? value : requireEnum(field, value, TaskTimeField);
}

function isTaskPosition(value: unknown): value is { v: number; id: string } {
  const p = value as { v?: unknown; id?: unknown } | null;
  return typeof p === "object" && p !== null && Number.isSafeInteger(p.v) && typeof p.id === "string";
}

function isSequence(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}
