import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { expectError, expectGrpcJsError } from "./support/expect-error.js";
import { DIALECTS, startTestServer, type Protocol, type TestServer } from "./support/test-server.js";

const s = (seconds: number) => ({ seconds: BigInt(seconds) });

for (const dialect of DIALECTS) {
  describe(`tasks on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      // No sweeper here: these tests watch leases expire without it acting.
      t = await startTestServer(dialect, { sweepIntervalMs: 3_600_000 });
    });
    afterAll(() => t?.close());

    /** A unique tool name per test, so claims never pick up another test's task. */
    const tool = () => `tool-${Math.random().toString(36).slice(2)}`;

    async function runningTask(toolName = tool()) {
      const { task } = await t.tasks().dispatchTask({ toolName, args: { q: 1 } });
      const { tasks } = await t.workers().claimTasks({ workerId: "w1", toolNames: [toolName] });
      expect(tasks).toHaveLength(1);
      return { taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId, toolName };
    }

    for (const protocol of ["grpc", "connect", "connect-json", "grpc-web"] as Protocol[]) {
      it(`runs a task from dispatch to completion over ${protocol}`, async () => {
        const tasks = t.tasks(protocol);
        const workers = t.workers(protocol);
        const toolName = tool();
        const dispatched = await tasks.dispatchTask({
          toolName,
          toolCallId: `call-${protocol}`,
          agentId: "agent-a",
          runId: "run-1",
          threadId: "thread-1",
          resourceId: "res-1",
          args: { city: "Lisbon", days: 3 },
          maxRetries: 2,
          timeout: s(60),
        });
        expect(dispatched.created).toBe(true);
        expect(dispatched.task!.status).toBe(TaskStatus.PENDING);
        const taskId = dispatched.task!.taskId;

        const { tasks: claimed } = await workers.claimTasks({ workerId: "worker-1", toolNames: [toolName], maxTasks: 5 });
        expect(claimed.map((c) => c.task!.taskId)).toEqual([taskId]);
        expect(claimed[0].task!.status).toBe(TaskStatus.RUNNING);
        expect(claimed[0].task!.attempt).toBe(1);
        const leaseId = claimed[0].lease!.leaseId;

        const beat = await workers.heartbeat({ taskId, leaseId, leaseDuration: s(120) });
        expect(beat.cancelRequested).toBe(false);
        expect(Number(beat.lease!.expireTime!.seconds) * 1000).toBeGreaterThan(Date.now() + 100_000);

        const out1 = await workers.reportOutput({ taskId, leaseId, output: { kind: { case: "stringValue", value: "chunk 1" } } });
        const out2 = await workers.reportOutput({ taskId, leaseId, output: { kind: { case: "numberValue", value: 2 } } });
        expect(out2.sequence).toBeGreaterThan(out1.sequence);

        const done = await workers.completeTask({ taskId, leaseId, result: { kind: { case: "stringValue", value: "sunny" } } });
        expect(done.task!.status).toBe(TaskStatus.COMPLETED);

        const { task } = await tasks.getTask({ taskId });
        expect(task).toMatchObject({
          taskId,
          status: TaskStatus.COMPLETED,
          toolName,
          toolCallId: `call-${protocol}`,
          agentId: "agent-a",
          runId: "run-1",
          threadId: "thread-1",
          resourceId: "res-1",
          args: { city: "Lisbon", days: 3 },
          workerId: "worker-1",
          maxRetries: 2,
        });
        expect(task!.result!.kind).toEqual({ case: "stringValue", value: "sunny" });
        expect(task!.createTime).toBeDefined();
        expect(task!.startTime).toBeDefined();
        expect(task!.completeTime).toBeDefined();
        expect(task!.timeout!.seconds).toBe(60n);

        const { events, totalSize } = await tasks.listTaskEvents({ taskId });
        expect(events.map((e) => e.kind.case)).toEqual(["queued", "running", "output", "output", "completed"]);
        expect(totalSize).toBe(5n);
        const sequences = events.map((e) => e.sequence);
        expect([...sequences].sort((a, b) => Number(a - b))).toEqual(sequences);
        expect(task!.sequence).toBe(sequences[sequences.length - 1]);
        for (const event of events) expect(event).toMatchObject({ taskId, toolName, agentId: "agent-a", runId: "run-1", toolCallId: `call-${protocol}` });
        expect(events.map((e) => e.status)).toEqual([
          TaskStatus.PENDING,
          TaskStatus.RUNNING,
          TaskStatus.RUNNING,
          TaskStatus.RUNNING,
          TaskStatus.COMPLETED,
        ]);
      });
    }

    it("serves @grpc/grpc-js clients the same tasks", async () => {
      const toolName = tool();
      const { task } = await t.grpcJs.tasks.dispatchTask({ toolName, args: { a: 1 } });
      const { tasks } = await t.grpcJs.workers.claimTasks({ workerId: "js", toolNames: [toolName] });
      await t.grpcJs.workers.failTask({ taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId, error: { message: "boom", code: "E1" } });
      const got = await t.grpcJs.tasks.getTask({ taskId: task!.taskId });
      expect(got.task!.status).toBe(TaskStatus.FAILED);
      expect(got.task!.error).toMatchObject({ message: "boom", code: "E1" });
      await expectGrpcJsError(t.grpcJs.tasks.getTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
      await expectGrpcJsError(
        t.grpcJs.workers.completeTask({ taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId }),
        Code.FailedPrecondition,
        "INVALID_TRANSITION",
      );
    });

    describe("idempotent dispatch", () => {
      it("returns the existing task for a repeated request_id", async () => {
        const toolName = tool();
        const first = await t.tasks().dispatchTask({ requestId: "req-" + toolName, toolName });
        const again = await t.tasks("connect").dispatchTask({ requestId: "req-" + toolName, toolName, args: { other: true } });
        expect(again.created).toBe(false);
        expect(again.task!.taskId).toBe(first.task!.taskId);
        expect(again.task!.args).toEqual({});
      });

      it("returns the existing task for a repeated agent_id and tool_call_id", async () => {
        const toolName = tool();
        const first = await t.tasks().dispatchTask({ agentId: "ag", toolCallId: toolName, toolName });
        const again = await t.tasks().dispatchTask({ agentId: "ag", toolCallId: toolName, toolName });
        const otherAgent = await t.tasks().dispatchTask({ agentId: "ag2", toolCallId: toolName, toolName });
        expect(again.task!.taskId).toBe(first.task!.taskId);
        expect(otherAgent.created).toBe(true);
        expect(otherAgent.task!.taskId).not.toBe(first.task!.taskId);
      });

      it("creates one task when 20 identical dispatches race", async () => {
        const toolName = tool();
        const results = await Promise.all(
          Array.from({ length: 20 }, (_, i) => t.tasks(i % 2 ? "grpc" : "connect").dispatchTask({ requestId: "race-" + toolName, toolName })),
        );
        expect(new Set(results.map((r) => r.task!.taskId)).size).toBe(1);
        expect(results.filter((r) => r.created)).toHaveLength(1);
        const { events } = await t.tasks().listTaskEvents({ taskId: results[0].task!.taskId });
        expect(events.map((e) => e.kind.case)).toEqual(["queued"]);
      });

      it("dispatches already claimed for a caller that runs the task itself, and replays the lease", async () => {
        const toolName = tool();
        const request = { requestId: "self-" + toolName, toolName, claim: { workerId: "self", leaseDuration: s(30) } };
        const first = await t.tasks().dispatchTask(request);
        expect(first.task!.status).toBe(TaskStatus.RUNNING);
        expect(first.lease!.leaseId).not.toBe("");
        const again = await t.tasks().dispatchTask(request);
        expect(again.created).toBe(false);
        expect(again.lease!.leaseId).toBe(first.lease!.leaseId);
        const { events } = await t.tasks().listTaskEvents({ taskId: first.task!.taskId });
        expect(events.map((e) => [e.kind.case, e.status])).toEqual([
          ["queued", TaskStatus.PENDING],
          ["running", TaskStatus.RUNNING],
        ]);
        const { tasks } = await t.workers().claimTasks({ workerId: "other", toolNames: [toolName] });
        expect(tasks).toHaveLength(0);
        await t.workers().completeTask({ taskId: first.task!.taskId, leaseId: first.lease!.leaseId });
      });
    });

    describe("transitions", () => {
      it("refuses to finish a task twice and leaves it untouched", async () => {
        const { taskId, leaseId } = await runningTask();
        await t.workers().completeTask({ taskId, leaseId, result: { kind: { case: "boolValue", value: true } } });
        const before = (await t.tasks().getTask({ taskId })).task!;
        await expectError(t.workers().completeTask({ taskId, leaseId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        await expectError(t.workers().failTask({ taskId, leaseId, error: { message: "x" } }), Code.FailedPrecondition, "INVALID_TRANSITION");
        await expectError(t.workers().suspendTask({ taskId, leaseId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        await expectError(t.workers().heartbeat({ taskId, leaseId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        await expectError(
          t.workers().reportOutput({ taskId, leaseId, output: { kind: { case: "numberValue", value: 1 } } }),
          Code.FailedPrecondition,
          "INVALID_TRANSITION",
        );
        await expectError(t.tasks().cancelTask({ taskId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        await expectError(t.tasks().resumeTask({ taskId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        const after = (await t.tasks().getTask({ taskId })).task!;
        expect(after).toEqual(before);
      });

      it("refuses to resume a task that is not suspended", async () => {
        const { taskId } = await runningTask();
        const err = await expectError(t.tasks().resumeTask({ taskId }), Code.FailedPrecondition, "INVALID_TRANSITION");
        expect(err.message).toContain("RUNNING");
        const pending = await t.tasks().dispatchTask({ toolName: tool() });
        await expectError(t.tasks().resumeTask({ taskId: pending.task!.taskId }), Code.FailedPrecondition, "INVALID_TRANSITION");
      });

      it("suspends, resumes to pending with resume data, and runs again", async () => {
        const { taskId, leaseId, toolName } = await runningTask();
        const suspended = await t.workers().suspendTask({ taskId, leaseId, payload: { kind: { case: "stringValue", value: "need approval" } } });
        expect(suspended.task!.status).toBe(TaskStatus.SUSPENDED);
        expect(suspended.task!.suspendTime).toBeDefined();
        await expectError(t.workers().heartbeat({ taskId, leaseId }), Code.FailedPrecondition, "INVALID_TRANSITION");

        const resumed = await t.tasks().resumeTask({ taskId, resumeData: { kind: { case: "stringValue", value: "approved" } } });
        expect(resumed.task!.status).toBe(TaskStatus.PENDING);
        const { tasks } = await t.workers().claimTasks({ workerId: "w2", toolNames: [toolName] });
        expect(tasks[0].task!.resumeData!.kind).toEqual({ case: "stringValue", value: "approved" });
        expect(tasks[0].task!.attempt).toBe(1);
        await expectError(t.workers().completeTask({ taskId, leaseId }), Code.FailedPrecondition, "LEASE_MISMATCH");
        await t.workers().completeTask({ taskId, leaseId: tasks[0].lease!.leaseId });
        const { events } = await t.tasks().listTaskEvents({ taskId });
        expect(events.map((e) => e.kind.case)).toEqual(["queued", "running", "suspended", "resumed", "running", "completed"]);
        const rerun = events[4];
        expect(rerun.kind.case === "running" && rerun.kind.value.resumeData?.kind).toEqual({ case: "stringValue", value: "approved" });
      });

      it("resumes straight to running for a caller that claims it", async () => {
        const { taskId, leaseId } = await runningTask();
        await t.workers().suspendTask({ taskId, leaseId });
        const resumed = await t.tasks().resumeTask({ taskId, claim: { workerId: "self" } });
        expect(resumed.task!.status).toBe(TaskStatus.RUNNING);
        expect(resumed.task!.workerId).toBe("self");
        await t.workers().completeTask({ taskId, leaseId: resumed.lease!.leaseId });
      });
    });

    describe("leases", () => {
      it("fences every worker call by the current lease and changes nothing", async () => {
        const { taskId, leaseId } = await runningTask();
        const before = (await t.tasks().getTask({ taskId })).task!;
        const stale = "not-" + leaseId;
        await expectError(t.workers().heartbeat({ taskId, leaseId: stale }), Code.FailedPrecondition, "LEASE_MISMATCH");
        await expectError(
          t.workers().reportOutput({ taskId, leaseId: stale, output: { kind: { case: "numberValue", value: 1 } } }),
          Code.FailedPrecondition,
          "LEASE_MISMATCH",
        );
        await expectError(t.workers().completeTask({ taskId, leaseId: stale }), Code.FailedPrecondition, "LEASE_MISMATCH");
        await expectError(t.workers().failTask({ taskId, leaseId: stale }), Code.FailedPrecondition, "LEASE_MISMATCH");
        await expectError(t.workers().suspendTask({ taskId, leaseId: stale }), Code.FailedPrecondition, "LEASE_MISMATCH");
        expect((await t.tasks().getTask({ taskId })).task).toEqual(before);
        expect((await t.tasks().listTaskEvents({ taskId })).events).toHaveLength(2);
      });

      it("keeps concurrent changes apart: refused calls change nothing while the others commit", async () => {
        // On SQLite concurrent calls share one transaction (group commit);
        // each refused one must roll back alone.
        const toolName = tool();
        const count = 40;
        await Promise.all(Array.from({ length: count }, (_, i) => t.tasks().dispatchTask({ toolName, args: { i } })));
        const { tasks: claimed } = await t.workers().claimTasks({ workerId: "w1", toolNames: [toolName], maxTasks: count });
        expect(claimed).toHaveLength(count);
        const outcomes = await Promise.allSettled(
          claimed.map(({ task, lease }, i) =>
            t.workers().completeTask({
              taskId: task!.taskId,
              leaseId: i % 2 === 0 ? lease!.leaseId : "stale",
              result: { kind: { case: "numberValue", value: i } },
            }),
          ),
        );
        for (const [i, outcome] of outcomes.entries()) {
          expect(outcome.status).toBe(i % 2 === 0 ? "fulfilled" : "rejected");
          const { task } = await t.tasks().getTask({ taskId: claimed[i].task!.taskId });
          expect(task!.status).toBe(i % 2 === 0 ? TaskStatus.COMPLETED : TaskStatus.RUNNING);
          const { events } = await t.tasks().listTaskEvents({ taskId: task!.taskId });
          expect(events.map((e) => e.kind.case)).toEqual(i % 2 === 0 ? ["queued", "running", "completed"] : ["queued", "running"]);
        }
      });

      it("refuses a lease past its expiry", async () => {
        const toolName = tool();
        const { task } = await t.tasks().dispatchTask({ toolName });
        const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], leaseDuration: { nanos: 50_000_000 } });
        await new Promise((r) => setTimeout(r, 80));
        await expectError(
          t.workers().completeTask({ taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId }),
          Code.FailedPrecondition,
          "LEASE_EXPIRED",
        );
        expect((await t.tasks().getTask({ taskId: task!.taskId })).task!.status).toBe(TaskStatus.RUNNING);
      });
    });

    describe("cancel", () => {
      it("cancels a pending task at once, and again is a no-op", async () => {
        const toolName = tool();
        const { task } = await t.tasks().dispatchTask({ toolName });
        const { task: cancelled } = await t.tasks().cancelTask({ taskId: task!.taskId, reason: "user stop" });
        expect(cancelled!.status).toBe(TaskStatus.CANCELLED);
        expect(cancelled!.completeTime).toBeDefined();
        const again = await t.tasks().cancelTask({ taskId: task!.taskId });
        expect(again.task!.sequence).toBe(cancelled!.sequence);
        const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] });
        expect(tasks).toHaveLength(0);
        const { events } = await t.tasks().listTaskEvents({ taskId: task!.taskId });
        expect(events.map((e) => e.kind.case)).toEqual(["queued", "cancelled"]);
        expect(events[1].kind.case === "cancelled" && events[1].kind.value.reason).toBe("user stop");
      });

      it("asks a running task's worker to stop through Heartbeat, and ends CANCELLED", async () => {
        const { taskId, leaseId } = await runningTask();
        const requested = await t.tasks().cancelTask({ taskId, reason: "too slow" });
        expect(requested.task!.status).toBe(TaskStatus.RUNNING);
        expect(requested.task!.cancelRequested).toBe(true);
        const beat = await t.workers().heartbeat({ taskId, leaseId });
        expect(beat.cancelRequested).toBe(true);
        const { task } = await t.workers().failTask({ taskId, leaseId, error: { message: "stopped on request" } });
        expect(task!.status).toBe(TaskStatus.CANCELLED);
        const { events } = await t.tasks().listTaskEvents({ taskId });
        expect(events.map((e) => e.kind.case)).toEqual(["queued", "running", "cancelled"]);
        expect(events[2].kind.case === "cancelled" && events[2].kind.value.reason).toBe("too slow");
      });

      it("cancels a suspended task at once", async () => {
        const { taskId, leaseId } = await runningTask();
        await t.workers().suspendTask({ taskId, leaseId });
        const { task } = await t.tasks().cancelTask({ taskId });
        expect(task!.status).toBe(TaskStatus.CANCELLED);
      });
    });

    describe("claims", () => {
      it("hands out the oldest pending tasks first, each to one worker", async () => {
        const toolName = tool();
        const ids: string[] = [];
        for (let i = 0; i < 6; i++) ids.push((await t.tasks().dispatchTask({ toolName })).task!.taskId);
        const claims = await Promise.all(
          Array.from({ length: 4 }, (_, i) => t.workers(i % 2 ? "grpc" : "connect").claimTasks({ workerId: `w${i}`, toolNames: [toolName], maxTasks: 2 })),
        );
        const claimed = claims.flatMap((c) => c.tasks.map((x) => x.task!.taskId));
        expect(claimed.sort()).toEqual([...ids].sort());
      });

      it("long-polls until a task is dispatched", async () => {
        const toolName = tool();
        const started = Date.now();
        const claim = t.workers().claimTasks({ workerId: "w", toolNames: [toolName], wait: s(10) });
        await new Promise((r) => setTimeout(r, 200));
        const { task } = await t.tasks().dispatchTask({ toolName });
        const { tasks } = await claim;
        expect(tasks.map((c) => c.task!.taskId)).toEqual([task!.taskId]);
        expect(Date.now() - started).toBeLessThan(5000);
      });

      it("returns empty when the wait ends, before the client's deadline", async () => {
        const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [tool()], wait: s(30) }, { timeoutMs: 400 });
        expect(tasks).toHaveLength(0);
      });
    });
  });
}
