import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { TaskStatus, type ItemError } from "../gen/taskstream/v1/task_pb.js";
import { Backpressure, type DispatchTaskResult } from "../gen/taskstream/v1/task_service_pb.js";
import type { TaskOutcome } from "../gen/taskstream/v1/worker_service_pb.js";
import { MAX_BATCH_REQUESTS } from "../src/service/worker-service.js";
import { expectError, expectGrpcJsError } from "./support/expect-error.js";
import { DIALECTS, startTestServer, type Protocol, type TestServer } from "./support/test-server.js";

const unique = () => Math.random().toString(36).slice(2);
const text = (value: string) => ({ kind: { case: "stringValue" as const, value } });

/** The task a DispatchTasks result dispatched; fails the test on an item error. */
function dispatched(result: DispatchTaskResult) {
  if (result.outcome.case !== "dispatched") throw new Error(`item failed: ${result.outcome.value?.message}`);
  return { taskId: result.outcome.value.task!.taskId, created: result.outcome.value.created, status: result.outcome.value.task!.status };
}

function itemError(result: DispatchTaskResult | TaskOutcome): ItemError {
  const error = "outcome" in result ? (result.outcome.case === "error" ? result.outcome.value : undefined) : result.error;
  expect(error, "the item should have failed").toBeDefined();
  return error!;
}

/** A call that must fail whole with INVALID_ARGUMENT naming `field`. */
async function expectInvalid(call: Promise<unknown>, field: string) {
  const err = await expectError(call, Code.InvalidArgument, "INVALID_ARGUMENT");
  expect(err.findDetails(ErrorInfoSchema)[0].metadata.field, err.message).toBe(field);
}

for (const dialect of DIALECTS) {
  describe(`batch RPCs on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      // No sweeper: nothing here should change a task but the calls.
      t = await startTestServer(dialect, { sweepIntervalMs: 3_600_000 });
    });
    afterAll(() => t?.close());

    /** Dispatches `n` tasks of a fresh tool and claims them all. */
    async function runningTasks(n: number, extra: { maxRetries?: number } = {}) {
      const toolName = `tool-${unique()}`;
      const requests = Array.from({ length: n }, () => ({ toolName, ...extra, retryPolicy: { initialDelay: { nanos: 1_000_000 } } }));
      await t.tasks().dispatchTasks({ requests });
      const { tasks } = await t.workers().claimTasks({ workerId: "w1", toolNames: [toolName], maxTasks: n });
      expect(tasks).toHaveLength(n);
      return { toolName, leased: tasks.map((c) => ({ taskId: c.task!.taskId, leaseId: c.lease!.leaseId })) };
    }

    async function eventKinds(taskId: string) {
      const { events } = await t.tasks().listTaskEvents({ taskId });
      const sequences = events.map((e) => e.sequence);
      expect(sequences, "sequences rise").toEqual([...sequences].sort((a, b) => (a < b ? -1 : 1)));
      return { kinds: events.map((e) => e.kind.case), last: events[events.length - 1] };
    }

    for (const protocol of ["grpc", "connect-json", "connect"] as Protocol[]) {
      it(`dispatches a batch with repeats inside it and across calls, over ${protocol}`, async () => {
        const toolName = `tool-${unique()}`;
        const [r1, r2, r3] = [unique(), unique(), unique()];
        const first = await t.tasks(protocol).dispatchTasks({
          requests: [
            { toolName, requestId: r1, args: { n: 1 } },
            { toolName, requestId: r2 },
            { toolName, requestId: r1, args: { n: 1 } },
            { toolName, agentId: "a", toolCallId: toolName },
            { toolName, agentId: "a", toolCallId: toolName },
            { toolName },
          ],
        });
        const items = first.results.map(dispatched);
        expect(items.map((i) => i.created)).toEqual([true, true, false, true, false, true]);
        expect(items[2].taskId).toBe(items[0].taskId);
        expect(items[4].taskId).toBe(items[3].taskId);
        expect(new Set(items.map((i) => i.taskId)).size).toBe(4);
        expect(items.every((i) => i.status === TaskStatus.PENDING)).toBe(true);

        const second = (await t.tasks(protocol).dispatchTasks({ requests: [{ toolName, requestId: r2 }, { toolName, requestId: r3 }] })).results.map(dispatched);
        expect(second[0]).toMatchObject({ taskId: items[1].taskId, created: false });
        expect(second[1].created).toBe(true);
        expect((await t.tasks().listTasks({ filter: { toolName } })).totalSize).toBe(5n);
        for (const { taskId } of [...items, ...second]) expect((await eventKinds(taskId)).kinds).toEqual(["queued"]);
      });
    }

    it("hands back the lease of a dispatch that claims, next to ones that do not", async () => {
      const toolName = `tool-${unique()}`;
      const { results } = await t.tasks().dispatchTasks({ requests: [{ toolName }, { toolName, claim: { workerId: "self" } }] });
      expect(results.map((r) => r.outcome.case)).toEqual(["dispatched", "dispatched"]);
      const [plain, claimed] = results.map((r) => r.outcome.value as { task: { status: TaskStatus; taskId: string }; lease?: { leaseId: string } });
      expect(plain.task.status).toBe(TaskStatus.PENDING);
      expect(plain.lease).toBeUndefined();
      expect(claimed.task.status).toBe(TaskStatus.RUNNING);
      // Stored as running, its row's sequence that of its last event, and counted as running.
      const stored = (await t.tasks().getTask({ taskId: claimed.task.taskId })).task!;
      const { kinds, last } = await eventKinds(claimed.task.taskId);
      expect(kinds).toEqual(["queued", "running"]);
      expect(stored).toMatchObject({ status: TaskStatus.RUNNING, attempt: 1, workerId: "self", sequence: last.sequence });
      expect(stored.startTime).toBeDefined();
      const running = await t.tasks().listTasks({ filter: { toolName }, statuses: [TaskStatus.RUNNING] });
      expect(running.tasks.map((task) => task.taskId)).toEqual([claimed.task.taskId]);
      expect((await t.tasks().listTasks({ statuses: [TaskStatus.RUNNING] })).totalSize).toBeGreaterThanOrEqual(1n);
      const done = await t.workers().completeTasks({ requests: [{ taskId: claimed.task.taskId, leaseId: claimed.lease!.leaseId }] });
      expect(done.results[0].status).toBe(TaskStatus.COMPLETED);
    });

    for (const protocol of ["grpc", "connect-json"] as Protocol[]) {
      it(`completes and fails tasks in one call each, refusals next to successes, over ${protocol}`, async () => {
        const workers = t.workers(protocol);
        const { leased } = await runningTasks(6, { maxRetries: 1 });
        const [a, b, c, d, e, f] = leased;
        await t.tasks().cancelTask({ taskId: f.taskId, reason: "not needed" });

        // FailTasks: a retry, a last failure, the same task again, an unknown task, a cancelled one.
        const failed = await workers.failTasks({
          requests: [
            { ...a, error: { message: "flaky", retryable: true } },
            { ...b, error: { message: "broken" } },
            { ...b, error: { message: "again" } },
            { taskId: "no-such-task", leaseId: "x" },
            { ...f, error: { message: "stopped" } },
          ],
        });
        const r = failed.results;
        expect(r.map((o) => o.status)).toEqual([TaskStatus.PENDING, TaskStatus.FAILED, TaskStatus.UNSPECIFIED, TaskStatus.UNSPECIFIED, TaskStatus.CANCELLED]);
        expect(itemError(r[2])).toMatchObject({ code: Code.FailedPrecondition, reason: "INVALID_TRANSITION", metadata: { task_id: b.taskId, status: "FAILED" } });
        expect(itemError(r[3])).toMatchObject({ code: Code.NotFound, reason: "TASK_NOT_FOUND", metadata: { task_id: "no-such-task" } });
        expect(r[3].sequence).toBe(0n);
        for (const i of [0, 1, 4]) expect(r[i].error).toBeUndefined();

        // The retried task is claimable again, under a new lease; its old lease is stale.
        let again: { taskId: string; leaseId: string } | undefined;
        for (let i = 0; i < 50 && !again; i++) {
          const { tasks } = await workers.claimTasks({ workerId: "w2", toolNames: [(await t.tasks().getTask(a)).task!.toolName], wait: { nanos: 200_000_000 } });
          if (tasks[0]) again = { taskId: tasks[0].task!.taskId, leaseId: tasks[0].lease!.leaseId };
        }
        expect(again?.taskId).toBe(a.taskId);
        expect((await t.tasks().getTask(a)).task!.attempt).toBe(2);

        // CompleteTasks: successes around a stale lease, an unknown task and a finished one.
        const completed = await workers.completeTasks({
          requests: [
            { ...c, result: text("c") },
            a,
            { taskId: "no-such-task", leaseId: "x" },
            { ...d, result: text("d") },
            { ...b, result: text("b") },
            { ...again!, result: text("a") },
          ],
        });
        const o = completed.results;
        expect(o.map((x) => x.status)).toEqual([TaskStatus.COMPLETED, 0, 0, TaskStatus.COMPLETED, 0, TaskStatus.COMPLETED]);
        expect(itemError(o[1])).toMatchObject({ code: Code.FailedPrecondition, reason: "LEASE_MISMATCH", metadata: { task_id: a.taskId, lease_id: a.leaseId } });
        expect(itemError(o[2]).reason).toBe("TASK_NOT_FOUND");
        expect(itemError(o[4])).toMatchObject({ reason: "INVALID_TRANSITION", metadata: { status: "FAILED", action: "complete" } });
        expect(itemError(o[4]).message).toContain(b.taskId);

        // Each task's events, in order; each outcome names its task's last event.
        const history = async (taskId: string) => eventKinds(taskId);
        expect((await history(a.taskId)).kinds).toEqual(["queued", "running", "failed", "running", "completed"]);
        expect((await history(b.taskId)).kinds).toEqual(["queued", "running", "failed"]);
        expect((await history(f.taskId)).kinds).toEqual(["queued", "running", "cancelled"]);
        for (const [task, outcome] of [[c, o[0]], [d, o[3]], [again!, o[5]], [b, r[1]], [f, r[4]]] as const) {
          expect((await history(task.taskId)).last.sequence).toBe(outcome.sequence);
        }
        expect(o[0].sequence).toBeLessThan(o[3].sequence);
        const { task } = await t.tasks().getTask(c);
        expect(task!.result!.kind).toEqual({ case: "stringValue", value: "c" });
      });
    }

    it("fails a whole call on one invalid item, naming its field, and changes nothing", async () => {
      const toolName = `tool-${unique()}`;
      await expectInvalid(t.tasks().dispatchTasks({ requests: [{ toolName }, { toolName: "" }] }), "requests[1].tool_name");
      await expectInvalid(
        t.tasks().dispatchTasks({ requests: [{ toolName, retryPolicy: { backoffMultiplier: 0.5 } }] }),
        "requests[0].retry_policy.backoff_multiplier",
      );
      await expectInvalid(t.tasks().dispatchTasks({ requests: [{ toolName }, { toolName, claim: {} }] }), "requests[1].claim.worker_id");
      expect((await t.tasks().listTasks({ filter: { toolName } })).totalSize).toBe(0n);

      const { leased } = await runningTasks(2);
      await expectInvalid(t.workers().completeTasks({ requests: [leased[0], { taskId: leased[1].taskId }] }), "requests[1].lease_id");
      await expectInvalid(
        t.workers().completeTasks({ requests: [{ ...leased[0], result: { kind: { case: "numberValue", value: Infinity } } }] }),
        "requests[0].result",
      );
      await expectInvalid(
        t.workers().failTasks({ requests: [leased[0], { ...leased[1], error: { message: "x", details: { n: NaN } } }] }),
        "requests[1].error.details.n",
      );
      for (const { taskId } of leased) expect((await t.tasks().getTask({ taskId })).task!.status).toBe(TaskStatus.RUNNING);
    });

    it(`refuses an empty batch and one over ${MAX_BATCH_REQUESTS} requests`, async () => {
      const over = <T>(item: T) => Array.from({ length: MAX_BATCH_REQUESTS + 1 }, () => item);
      const leased = { taskId: "t", leaseId: "l" };
      await expectInvalid(t.tasks().dispatchTasks({ requests: [] }), "requests");
      await expectInvalid(t.workers().completeTasks({ requests: [] }), "requests");
      await expectInvalid(t.workers().failTasks({}), "requests");
      await expectInvalid(t.tasks().dispatchTasks({ requests: over({ toolName: "x" }) }), "requests");
      await expectInvalid(t.workers().completeTasks({ requests: over(leased) }), "requests");
      await expectInvalid(t.workers().failTasks({ requests: over(leased) }), "requests");
    });

    it("serves the batch calls to @grpc/grpc-js", async () => {
      const toolName = `tool-${unique()}`;
      const { results } = await t.grpcJs.tasks.dispatchTasks({ requests: [{ toolName, requestId: `${toolName}-1` }, { toolName, requestId: `${toolName}-1` }] });
      expect(results.map(dispatched).map((i) => i.created)).toEqual([true, false]);
      const { tasks } = await t.grpcJs.workers.claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 5 });
      const leased = { taskId: tasks[0].task!.taskId, leaseId: tasks[0].lease!.leaseId };
      const done = await t.grpcJs.workers.completeTasks({ requests: [leased, leased] });
      expect(done.results[0].status).toBe(TaskStatus.COMPLETED);
      expect(done.results[1].error?.reason).toBe("INVALID_TRANSITION");
      await expectGrpcJsError(t.grpcJs.workers.failTasks({ requests: [] }), Code.InvalidArgument, "INVALID_ARGUMENT");
    });
  });

  describe(`batch RPCs with concurrency limits on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer(dialect, { sweepIntervalMs: 3_600_000, agentConcurrency: 1 });
    });
    afterAll(() => t?.close());

    it("refuses, per item, a REJECT dispatch with no free slot", async () => {
      const toolName = `tool-${unique()}`;
      const solo = { toolName, agentId: "solo", backpressure: Backpressure.REJECT };
      expect((await t.tasks().dispatchTask(solo)).created).toBe(true);
      const { results } = await t.tasks().dispatchTasks({ requests: [solo, { ...solo, agentId: "other" }, solo] });
      expect(results.map((r) => r.outcome.case)).toEqual(["error", "dispatched", "error"]);
      expect(itemError(results[0])).toMatchObject({ code: Code.ResourceExhausted, reason: "CONCURRENCY_LIMIT", metadata: { agent_id: "solo", limit: "1" } });
      expect((await t.tasks().listTasks({ filter: { toolName } })).totalSize).toBe(2n);
    });

    // With limits (or claims) the store dispatches a batch's items one by one, in order.
    it("decides a batch's items in their order: the first repeat creates, the first dispatch takes the slot", async () => {
      const toolName = `tool-${unique()}`;
      const requestId = unique();
      const repeats = await t.tasks().dispatchTasks({ requests: [1, 2, 3].map((n) => ({ toolName, requestId, agentId: `agent-${n}` })) });
      const items = repeats.results.map(dispatched);
      expect(items.map((i) => i.created)).toEqual([true, false, false]);
      expect(new Set(items.map((i) => i.taskId)).size).toBe(1);

      const agentId = `solo-${unique()}`;
      const solo = { toolName, agentId, backpressure: Backpressure.REJECT };
      const contested = await t.tasks().dispatchTasks({ requests: [solo, solo] });
      expect(contested.results.map((r) => r.outcome.case)).toEqual(["dispatched", "error"]);
    });
  });
}
