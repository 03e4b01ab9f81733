import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { TaskSchema, TaskStatus, type Task } from "../../gen/taskstream/v1/task_pb.js";
import { TaskTimeField, type ListTasksRequestSchema } from "../../gen/taskstream/v1/task_service_pb.js";
import { msFromTimestamp, timestampFromMs } from "../../src/domain/time.js";
import type { TaskQuery, TimeColumn } from "../../src/storage/task-queries.js";
import { AGENTS, DAY_MS, SPAN_MS, TOOLS, agentId, prng } from "./data.js";

export type ListRequest = MessageInitShape<typeof ListTasksRequestSchema>;
export type StorageQuery = Omit<TaskQuery, "limit" | "after" | "countTotal">;

/** A ListTasks case: the request of the i-th call (filtered cases rotate their values). */
export interface ListCase {
  name: string;
  request(i: number): ListRequest;
  /** Reached by following next_page_token this many times; 0 is the first page. */
  depth: number;
  /**
   * Measured on storage alone. Its deep position is found by paging storage
   * (1000 tasks a query): walking 10,000 pages over gRPC costs minutes, and
   * over gRPC a 50-task page costs what the unfiltered deep page shows, since
   * encoding, not the query, dominates it.
   */
  storageOnly?: boolean;
  /** The gRPC client asks for no compression (the default client accepts gzip). */
  identity?: boolean;
}

const COLUMNS: Record<TaskTimeField, TimeColumn> = {
  [TaskTimeField.UNSPECIFIED]: "create_time",
  [TaskTimeField.CREATE_TIME]: "create_time",
  [TaskTimeField.START_TIME]: "start_time",
  [TaskTimeField.COMPLETE_TIME]: "complete_time",
};

/** The storage query the service makes of a request (as task-service.ts maps it). */
export function storageQuery(request: ListRequest): StorageQuery {
  const f = request.filter ?? {};
  const range = request.timeRange;
  const ms = (t: unknown) => (t === undefined ? undefined : msFromTimestamp(t as Timestamp));
  return {
    filter: {
      agentId: f.agentId ?? "",
      runId: f.runId ?? "",
      threadId: f.threadId ?? "",
      resourceId: f.resourceId ?? "",
      taskId: f.taskId ?? "",
      toolName: f.toolName ?? "",
      toolCallId: request.toolCallId ?? "",
    },
    statuses: request.statuses ?? [],
    timeRange: range && { column: COLUMNS[range.field ?? TaskTimeField.UNSPECIFIED], startMs: ms(range.startTime), endMs: ms(range.endTime) },
    orderBy: COLUMNS[request.orderBy ?? TaskTimeField.UNSPECIFIED],
    descending: request.descending ?? false,
  };
}

/** The keyset position after a task, in the request's order. */
export function positionAfter(request: ListRequest, task: Task): { value: number; taskId: string } {
  const time = { create_time: task.createTime, start_time: task.startTime, complete_time: task.completeTime }[storageQuery(request).orderBy];
  return { value: time ? msFromTimestamp(time) : 0, taskId: task.taskId };
}

/** Every Task field but the JSON values (args, result, suspend_payload, resume_data). */
const SUMMARY_FIELDS = TaskSchema.fields.map((f) => f.name).filter((name) => !["args", "result", "suspend_payload", "resume_data"].includes(name));

/** Every ListTasks case, for a table whose 30 days end at nowMs. */
export function listCases(nowMs: number, deep: number): ListCase[] {
  const shuffled = <T>(items: T[]) => {
    const random = prng(7);
    const a = [...items];
    for (let k = a.length - 1; k > 0; k--) {
      const j = Math.floor(random() * (k + 1));
      [a[k], a[j]] = [a[j], a[k]];
    }
    return a;
  };
  const agents = shuffled(Array.from({ length: AGENTS }, (_, k) => agentId(k)));
  const tools = shuffled([...TOOLS]);
  const firstDay = nowMs - SPAN_MS;
  const deepName = `page ${(deep + 1).toLocaleString("en-US")} (${deep.toLocaleString("en-US")} deep)`;
  const completedDesc: ListRequest = { statuses: [TaskStatus.COMPLETED], orderBy: TaskTimeField.COMPLETE_TIME, descending: true };
  return [
    { name: "first page, no filter (create_time)", depth: 0, request: () => ({}) },
    // What a dashboard's table asks for: every field but the four JSON values.
    { name: "first page, no filter, read_mask without args, result, payloads", depth: 0, request: () => ({ readMask: { paths: SUMMARY_FIELDS } }) },
    { name: "page 2, no filter (token)", depth: 1, request: () => ({}) },
    { name: `${deepName}, no filter`, depth: deep, request: () => ({}) },
    { name: `${deepName}, no filter, client without gzip`, depth: deep, identity: true, request: () => ({}) },
    { name: "agent_id (1000 agents in turn)", depth: 0, request: (i) => ({ filter: { agentId: agents[i % agents.length] } }) },
    { name: "status RUNNING", depth: 0, request: () => ({ statuses: [TaskStatus.RUNNING] }) },
    {
      name: "tool_name (20 in turn) + FAILED, TIMED_OUT",
      depth: 0,
      request: (i) => ({ filter: { toolName: tools[i % tools.length] }, statuses: [TaskStatus.FAILED, TaskStatus.TIMED_OUT] }),
    },
    {
      name: "start_time in one day (28 in turn), by start_time",
      depth: 0,
      request: (i) => {
        const start = firstDay + (1 + (i % 28)) * DAY_MS;
        return {
          timeRange: { field: TaskTimeField.START_TIME, startTime: timestampFromMs(start), endTime: timestampFromMs(start + DAY_MS) },
          orderBy: TaskTimeField.START_TIME,
        };
      },
    },
    { name: "complete_time descending, no filter", depth: 0, request: () => ({ orderBy: TaskTimeField.COMPLETE_TIME, descending: true }) },
    { name: "COMPLETED by complete_time descending", depth: 0, request: () => completedDesc },
    { name: `COMPLETED by complete_time descending, ${deepName}`, depth: deep, storageOnly: true, request: () => completedDesc },
  ];
}
