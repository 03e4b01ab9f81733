import { Code } from "@connectrpc/connect";
import { create, toJson } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskSchema, TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import { expectError, expectGrpcJsError } from "./support/expect-error.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

// read_mask on GetTask and ListTasks (AIP-157): only the fields asked for come back,
// the same over gRPC (tasks written from their rows) and JSON (tasks built as messages).

/** A list without the four JSON values: what a dashboard's table needs. */
const SUMMARY = TaskSchema.fields.map((f) => f.name).filter((name) => !["args", "result", "suspend_payload", "resume_data"].includes(name));

/** The task with only the named fields left, as the server should answer it. */
function only(task: Task, names: string[]): Task {
  const kept = create(TaskSchema) as unknown as Record<string, unknown>;
  for (const field of TaskSchema.fields) {
    if (names.includes(field.name)) kept[field.localName] = (task as unknown as Record<string, unknown>)[field.localName];
  }
  return kept as unknown as Task;
}

const json = (task: Task | undefined) => toJson(TaskSchema, task!);

for (const dialect of DIALECTS) {
  describe(`read_mask on ${dialect}`, () => {
    let t: TestServer;
    const tool = `read-mask-${dialect}-${Math.random().toString(36).slice(2)}`;
    let full: Task[];

    beforeAll(async () => {
      t = await startTestServer(dialect);
      for (let i = 0; i < 5; i++) {
        await t.tasks().dispatchTask({ toolName: tool, toolCallId: `call-${i}`, agentId: "agent-m", args: { i, text: "x".repeat(i * 10) } });
      }
      // One completed (result), one suspended (suspend payload), so every JSON value is present somewhere.
      const done = await t.tasks().dispatchTask({ toolName: tool, toolCallId: "done", args: { i: 5 }, claim: { workerId: "w" } });
      await t.workers().completeTask({ taskId: done.task!.taskId, leaseId: done.lease!.leaseId, result: { kind: { case: "stringValue", value: "ok" } } });
      const held = await t.tasks().dispatchTask({ toolName: tool, toolCallId: "held", args: { i: 6 }, claim: { workerId: "w" } });
      await t.workers().suspendTask({ taskId: held.task!.taskId, leaseId: held.lease!.leaseId, payload: { kind: { case: "stringValue", value: "approve?" } } });
      full = (await t.tasks().listTasks({ filter: { toolName: tool }, pageSize: 100 })).tasks;
      expect(full).toHaveLength(7);
    });
    afterAll(() => t?.close());

    it("GetTask returns only the fields asked for, over gRPC, grpc-js and Connect JSON", async () => {
      const task = full.find((x) => x.toolCallId === "done")!;
      const readMask = { paths: ["task_id", "status", "result"] };
      const expected = only(task, readMask.paths);
      expect(json(expected)).toEqual({ taskId: task.taskId, status: "TASK_STATUS_COMPLETED", result: "ok" });
      expect(json((await t.tasks().getTask({ taskId: task.taskId, readMask })).task)).toEqual(json(expected));
      expect(json((await t.tasks("connect-json").getTask({ taskId: task.taskId, readMask })).task)).toEqual(json(expected));
      expect(json((await t.grpcJs.tasks.getTask({ taskId: task.taskId, readMask })).task)).toEqual(json(expected));
      // Unset, empty or "*": every field.
      for (const mask of [undefined, { paths: [] }, { paths: ["*"] }, { paths: ["status", "*"] }]) {
        expect(json((await t.tasks().getTask({ taskId: task.taskId, readMask: mask })).task)).toEqual(json(task));
      }
    });

    it("ListTasks pages a summary without the JSON values, the same on every protocol", async () => {
      const readMask = { paths: SUMMARY };
      for (const protocol of ["grpc", "connect-json", "grpc-web"] as const) {
        const seen: Task[] = [];
        let pageToken = "";
        do {
          const page = await t.tasks(protocol).listTasks({ filter: { toolName: tool }, pageSize: 3, pageToken, readMask });
          seen.push(...page.tasks);
          pageToken = page.nextPageToken;
        } while (pageToken);
        expect(seen.map(json), protocol).toEqual(full.map((task) => json(only(task, SUMMARY))));
        expect(seen.some((task) => task.args || task.result || task.suspendPayload)).toBe(false);
      }
      const grpcJs = await t.grpcJs.tasks.listTasks({ filter: { toolName: tool }, pageSize: 100, readMask: { paths: ["task_id", "args"] } });
      expect(grpcJs.tasks.map(json)).toEqual(full.map((task) => json(only(task, ["task_id", "args"]))));
    });

    it("a JSON client names fields in lowerCamelCase, and gets nothing else", async () => {
      const res = await fetch(`${t.server.url}/taskstream.v1.TaskService/ListTasks`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ filter: { toolName: tool }, readMask: "taskId,toolCallId" }),
      });
      const body = (await res.json()) as { tasks: Record<string, unknown>[] };
      expect(res.status).toBe(200);
      expect(body.tasks.map((task) => Object.keys(task).sort())).toEqual(full.map(() => ["taskId", "toolCallId"]));
    });

    it("refuses a path that is not a top-level Task field, and a page token carried to another mask", async () => {
      await expectError(t.tasks().getTask({ taskId: full[0].taskId, readMask: { paths: ["task_id", "nope"] } }), Code.InvalidArgument, "INVALID_ARGUMENT");
      await expectError(t.tasks().listTasks({ readMask: { paths: ["error.message"] } }), Code.InvalidArgument, "INVALID_ARGUMENT");
      // Binary clients name fields as the proto does: task_id, not taskId.
      await expectError(t.tasks().listTasks({ readMask: { paths: ["taskId"] } }), Code.InvalidArgument, "INVALID_ARGUMENT");
      await expectGrpcJsError(t.grpcJs.tasks.listTasks({ readMask: { paths: [""] } }), Code.InvalidArgument, "INVALID_ARGUMENT");
      const first = await t.tasks().listTasks({ filter: { toolName: tool }, pageSize: 2, readMask: { paths: ["task_id"] } });
      await expectError(
        t.tasks().listTasks({ filter: { toolName: tool }, pageSize: 2, pageToken: first.nextPageToken, readMask: { paths: ["status"] } }),
        Code.InvalidArgument,
        "PAGE_TOKEN_MISMATCH",
      );
      // A bad mask is refused before the unknown task is looked for.
      await expectError(t.tasks().getTask({ taskId: "no-such-task", readMask: { paths: ["nope"] } }), Code.InvalidArgument, "INVALID_ARGUMENT");
      expect((await t.tasks().getTask({ taskId: full[0].taskId })).task!.status).toBe(TaskStatus.PENDING);
    });
  });
}
