import { Code } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import { TaskTimeField, type ListTasksRequestSchema } from "../gen/taskstream/v1/task_service_pb.js";
import { msFromTimestamp } from "../src/domain/time.js";
import { expectError } from "./support/expect-error.js";
import { newTask } from "./support/task-row.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

const TASKS = 10_000;
type ListRequest = MessageInitShape<typeof ListTasksRequestSchema>;

/** What a seeded task looks like, to compute every expected page from. */
interface Seeded {
  taskId: string;
  agentId: string;
  runId: string;
  threadId: string;
  resourceId: string;
  toolName: string;
  toolCallId: string;
  status: TaskStatus;
  create: number;
  start: number;
  complete: number;
}

for (const dialect of DIALECTS) {
  describe(`ListTasks on ${dialect} with ${TASKS} tasks`, () => {
    let t: TestServer;
    let seeded: Seeded[];

    beforeAll(async () => {
      t = await startTestServer(dialect);
      seeded = await seed(t);
    }, 300_000);
    afterAll(() => t?.close());

    const cases: [string, ListRequest, (s: Seeded) => boolean][] = [
      ["no filter, create_time ascending", {}, () => true],
      ["no filter, create_time descending", { descending: true }, () => true],
      ["agent_id", { filter: { agentId: "agent-3" } }, (s) => s.agentId === "agent-3"],
      ["run_id and thread_id", { filter: { runId: "run-5", threadId: "thread-2" } }, (s) => s.runId === "run-5" && s.threadId === "thread-2"],
      ["resource_id by start_time", { filter: { resourceId: "res-1" }, orderBy: TaskTimeField.START_TIME }, (s) => s.resourceId === "res-1"],
      [
        "tool_name and RUNNING",
        { filter: { toolName: "tool-2" }, statuses: [TaskStatus.RUNNING] },
        (s) => s.toolName === "tool-2" && s.status === TaskStatus.RUNNING,
      ],
      [
        "COMPLETED or PENDING by complete_time descending",
        { statuses: [TaskStatus.COMPLETED, TaskStatus.PENDING], orderBy: TaskTimeField.COMPLETE_TIME, descending: true },
        (s) => s.status === TaskStatus.COMPLETED || s.status === TaskStatus.PENDING,
      ],
      ["tool_call_id", { toolCallId: "call-77" }, (s) => s.toolCallId === "call-77"],
    ];

    for (const [name, request, matches] of cases) {
      it(`pages through ${name} with no task missed or repeated`, async () => {
        const expected = seeded.filter(matches);
        const listed = await listAll(t, request, 337);
        expect(new Set(listed.map((x) => x.taskId)).size).toBe(listed.length);
        expect(listed.length).toBe(expected.length);
        expect(new Set(listed.map((x) => x.taskId))).toEqual(new Set(expected.map((x) => x.taskId)));
        expectOrdered(listed, request.orderBy ?? TaskTimeField.CREATE_TIME, request.descending ?? false);
      });
    }

    it("filters by a time range on the chosen column", async () => {
      const starts = seeded.filter((s) => s.start > 0).map((s) => s.start).sort((a, b) => a - b);
      const from = starts[Math.floor(starts.length / 4)];
      const to = starts[Math.floor((starts.length * 3) / 4)];
      const request: ListRequest = {
        timeRange: { field: TaskTimeField.START_TIME, startTime: ts(from), endTime: ts(to) },
        orderBy: TaskTimeField.START_TIME,
      };
      const listed = await listAll(t, request, 500);
      const expected = seeded.filter((s) => s.start > 0 && s.start >= from && s.start < to);
      expect(new Set(listed.map((x) => x.taskId))).toEqual(new Set(expected.map((x) => x.taskId)));
      expect(listed.length).toBe(expected.length);
    });

    it("reports total_size and ends with an empty next_page_token", async () => {
      const first = await t.tasks().listTasks({ filter: { agentId: "agent-1" }, pageSize: 10 });
      expect(Number(first.totalSize)).toBe(seeded.filter((s) => s.agentId === "agent-1").length);
      const all = await t.tasks().listTasks({ filter: { toolName: "tool-0" }, pageSize: 1000, toolCallId: "call-0" });
      expect(all.tasks).toHaveLength(1);
      expect(all.nextPageToken).toBe("");
    });

    it("uses a default page size of 50 and caps it at 1000", async () => {
      expect((await t.tasks().listTasks({})).tasks).toHaveLength(50);
      expect((await t.tasks().listTasks({ pageSize: 5000 })).tasks).toHaveLength(1000);
      await expectError(t.tasks().listTasks({ pageSize: -1 }), Code.InvalidArgument, "INVALID_ARGUMENT");
    });

    it("refuses a token from another request, and garbage tokens", async () => {
      const { nextPageToken } = await t.tasks().listTasks({ filter: { agentId: "agent-1" }, pageSize: 10 });
      await expectError(
        t.tasks().listTasks({ filter: { agentId: "agent-2" }, pageSize: 10, pageToken: nextPageToken }),
        Code.InvalidArgument,
        "PAGE_TOKEN_MISMATCH",
      );
      await expectError(
        t.tasks().listTasks({ filter: { agentId: "agent-1" }, descending: true, pageToken: nextPageToken }),
        Code.InvalidArgument,
        "PAGE_TOKEN_MISMATCH",
      );
      // A different page size is allowed (AIP-158).
      await t.tasks().listTasks({ filter: { agentId: "agent-1" }, pageSize: 20, pageToken: nextPageToken });
      for (const garbage of ["x", "!!!", Buffer.from('{"f":1}').toString("base64url"), nextPageToken.slice(0, -3)]) {
        await expectError(t.tasks().listTasks({ pageToken: garbage }), Code.InvalidArgument);
      }
    });
  });
}

async function listAll(t: TestServer, request: ListRequest, pageSize: number): Promise<Task[]> {
  const tasks: Task[] = [];
  let pageToken = "";
  for (let page = 0; page < 10_000; page++) {
    const response = await t.tasks().listTasks({ ...request, pageSize, pageToken });
    tasks.push(...response.tasks);
    pageToken = response.nextPageToken;
    if (pageToken === "") return tasks;
  }
  throw new Error("paging did not end");
}

function expectOrdered(tasks: Task[], field: TaskTimeField, descending: boolean) {
  const key = (task: Task): [number, string] => {
    const time = field === TaskTimeField.START_TIME ? task.startTime : field === TaskTimeField.COMPLETE_TIME ? task.completeTime : task.createTime;
    return [time ? msFromTimestamp(time) : 0, task.taskId];
  };
  for (let i = 1; i < tasks.length; i++) {
    const [a, b] = [key(tasks[i - 1]), key(tasks[i])];
    const cmp = a[0] !== b[0] ? a[0] - b[0] : a[1] < b[1] ? -1 : 1;
    expect(descending ? cmp > 0 : cmp < 0, `order at ${i}`).toBe(true);
  }
}

function ts(ms: number) {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/**
 * Seeds tasks through the server's own store (the listing under test runs
 * over the network): a mix of agents, runs, tools and statuses.
 */
async function seed(t: TestServer): Promise<Seeded[]> {
  const store = t.server.deps.store;
  const seeded: Seeded[] = [];
  const batch = 100;
  for (let from = 0; from < TASKS; from += batch) {
    const rows = await Promise.all(
      Array.from({ length: batch }, (_, j) => {
        const i = from + j;
        return store.dispatch(
          newTask({
            toolName: `tool-${i % 4}`,
            toolCallId: `call-${i}`,
            args: { i },
            agentId: `agent-${i % 7}`,
            runId: `run-${i % 13}`,
            threadId: `thread-${i % 5}`,
            resourceId: `res-${i % 3}`,
          }),
        );
      }),
    );
    for (const { task } of rows) seeded.push(fromRow(task));
  }
  // A third run, half of those complete.
  const byId = new Map(seeded.map((s) => [s.taskId, s]));
  for (let round = 0; round < TASKS / 3 / 100; round++) {
    const claimed = await store.claim({ workerId: "seeder", toolNames: [], maxTasks: 100, leaseMs: 600_000 });
    for (const [k, { task, lease }] of claimed.entries()) {
      const done = k % 2 === 0 ? await store.complete(task.task_id, lease.leaseId, undefined) : task;
      byId.set(task.task_id, fromRow(done));
    }
  }
  return [...byId.values()];
}

function fromRow(row: {
  task_id: string;
  agent_id: string;
  run_id: string;
  thread_id: string;
  resource_id: string;
  tool_name: string;
  tool_call_id: string;
  status: number;
  create_time: number;
  start_time: number;
  complete_time: number;
}): Seeded {
  return {
    taskId: row.task_id,
    agentId: row.agent_id,
    runId: row.run_id,
    threadId: row.thread_id,
    resourceId: row.resource_id,
    toolName: row.tool_name,
    toolCallId: row.tool_call_id,
    status: row.status,
    create: row.create_time,
    start: row.start_time,
    complete: row.complete_time,
  };
}
