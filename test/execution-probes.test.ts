import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { expectError } from "./support/expect-error.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";
import { newTask } from "./support/task-row.js";

// Probes of the execution RPCs by a demanding user: each test here failed
// before the fix it covers.

const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1_000_000 });
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));
const unique = () => Math.random().toString(36).slice(2);
const num = (value: number) => ({ kind: { case: "numberValue" as const, value } });

for (const dialect of DIALECTS) {
  describe(`execution probes on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      // No sweeper: these tests look at tasks before it would act.
      t = await startTestServer(dialect, { agentConcurrencyOverrides: new Map([["solo", 1]]), sweepIntervalMs: 3_600_000 });
    });
    afterAll(() => t?.close());

    const historyOf = async (taskId: string) =>
      (await t.tasks().listTaskEvents({ taskId })).events.map((e) => `${e.kind.case}:${TaskStatus[e.status]}:${e.attempt}`);

    describe("a long-poll whose caller goes away", () => {
      // The claim runs when a task arrives; the client cancels while it runs.
      // Before the fix the claim committed anyway and its answer went nowhere:
      // the task sat RUNNING, leased to nobody, until the lease expired, and
      // then was retried at the cost of an attempt or, with none left, FAILED.
      // On SQLite that claim commits, and its answer is written, before the
      // cancel is read: nothing on the server can tell that from a worker
      // that got its task and died, and the lease's expiry deals with both.
      for (const protocol of dialect === "postgres" ? (["grpc", "connect", "grpc-web"] as const) : []) {
        it(`leaves a task that arrives as it is cancelled pending, over ${protocol}`, async () => {
          const toolName = unique();
          for (let round = 0; round < 5; round++) {
            const controller = new AbortController();
            const poll = t.workers(protocol).claimTasks({ workerId: "gone", toolNames: [toolName], wait: ms(10_000) }, { signal: controller.signal });
            const refused = expectError(poll, Code.Canceled);
            await sleep(50);
            // In this process, so the cancel goes out while the woken claim runs.
            const { task } = await t.server.deps.store.dispatch(newTask({ toolName }));
            controller.abort();
            await refused;
            await sleep(100);
            const after = (await t.tasks().getTask({ taskId: task.task_id })).task!;
            expect(TaskStatus[after.status], `round ${round}`).toBe("PENDING");
            expect(after.attempt).toBe(0);
            const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] });
            expect(tasks.map((c) => [c.task!.taskId, c.task!.attempt])).toEqual([[task.task_id, 1]]);
            await t.workers().completeTask({ taskId: task.task_id, leaseId: tasks[0].lease!.leaseId });
          }
        });
      }

      it("gives back a task its timed poll claimed after the cancel arrived, at the same attempt", async () => {
        const toolName = unique();
        for (let round = 0; round < 5; round++) {
          // A task that becomes claimable later (a retry's delay), found by the long-poll's own periodic look.
          const d = await t.server.deps.store.dispatch(newTask({ toolName, maxRetries: 1, retryDelayMs: 400 }), { workerId: "first", leaseMs: 60_000 });
          await t.workers().failTask({ taskId: d.task.task_id, leaseId: d.lease!.leaseId, error: { message: "flaky", retryable: true } });
          const controller = new AbortController();
          const refused = expectError(
            t.workers().claimTasks({ workerId: "gone", toolNames: [toolName], wait: ms(10_000) }, { signal: controller.signal }),
            Code.Canceled,
          );
          await sleep(100);
          controller.abort();
          await new Promise((r) => setImmediate(r));
          // Hold the event loop while the retry's delay runs out, so the poll's
          // timer and the cancel are both due when it resumes: the claim starts
          // first, and the cancel arrives before it runs.
          const until = Date.now() + 500;
          while (Date.now() < until);
          await refused;
          await sleep(100);
          const after = (await t.tasks().getTask({ taskId: d.task.task_id })).task!;
          expect(TaskStatus[after.status], `round ${round}`).toBe("PENDING");
          expect(after.attempt).toBe(2);
          const history = await historyOf(d.task.task_id);
          // Either nothing was claimed, or the claim was handed back: never a task left RUNNING.
          expect(history.slice(0, 3)).toEqual(["queued:PENDING:0", "running:RUNNING:1", "failed:PENDING:2"]);
          expect(history.slice(3).every((e, i) => e === (i % 2 === 0 ? "running:RUNNING:2" : "failed:PENDING:2"))).toBe(true);
          await t.tasks().cancelTask({ taskId: d.task.task_id });
        }
      });
    });

    it("refuses the lease of an attempt the sweeper retried as expired, not as a wrong transition", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, maxRetries: 2, retryPolicy: { initialDelay: ms(60_000) } });
      const taskId = task!.taskId;
      const [claimed] = (await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], leaseDuration: ms(100) })).tasks;
      await sleep(150);
      await t.server.deps.store.expire();
      const before = (await t.tasks().getTask({ taskId })).task!;
      expect(TaskStatus[before.status]).toBe("PENDING");
      const ids = { taskId, leaseId: claimed.lease!.leaseId };
      // Before the fix: INVALID_TRANSITION, "cannot complete task: it is PENDING".
      for (const call of [
        () => t.workers().heartbeat(ids),
        () => t.workers().completeTask(ids),
        () => t.workers().failTask(ids),
        () => t.workers().suspendTask(ids),
        () => t.workers().reportOutput({ ...ids, output: num(1) }),
      ]) {
        await expectError(call(), Code.FailedPrecondition, "LEASE_EXPIRED");
      }
      expect((await t.tasks().getTask({ taskId })).task).toEqual(before);
      expect(await historyOf(taskId)).toEqual(["queued:PENDING:0", "running:RUNNING:1", "failed:PENDING:2"]);

      // A worker that failed its own attempt for a retry holds no lease either.
      const { task: other } = await t.tasks().dispatchTask({ toolName: unique(), maxRetries: 1, retryPolicy: { initialDelay: ms(60_000) } });
      const [mine] = (await t.workers().claimTasks({ workerId: "w", toolNames: [other!.toolName] })).tasks;
      const own = { taskId: other!.taskId, leaseId: mine.lease!.leaseId };
      await t.workers().failTask({ ...own, error: { message: "again", retryable: true } });
      await expectError(t.workers().completeTask(own), Code.FailedPrecondition, "LEASE_MISMATCH");
    });

    it("refuses a claim naming more tools than a query can bind as INVALID_ARGUMENT, and takes repeats as one", async () => {
      const toolName = unique();
      const names = Array.from({ length: 70_000 }, (_, i) => `${toolName}-${i}`);
      // Before the fix: INTERNAL, the database refusing that many parameters.
      const err = await expectError(t.workers().claimTasks({ workerId: "w", toolNames: names }), Code.InvalidArgument, "INVALID_ARGUMENT");
      expect(err.message).toContain("tool_names");
      const { task } = await t.tasks().dispatchTask({ toolName });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: names.map(() => toolName), maxTasks: 5 });
      expect(tasks.map((c) => c.task!.taskId)).toEqual([task!.taskId]);
    });

    it("claims another agent's task queued behind many of an agent with no free slot", async () => {
      const toolName = unique();
      await t.tasks().dispatchTasks({ requests: Array.from({ length: 150 }, () => ({ toolName, agentId: "solo" })) });
      const other = await t.tasks().dispatchTask({ toolName, agentId: "other" });
      const first = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 5 });
      // solo may run one task: the claim takes it, and looks past the rest of solo's.
      expect(first.tasks.map((c) => c.task!.agentId)).toEqual(["solo", "other"]);
      expect(first.tasks[1].task!.taskId).toBe(other.task!.taskId);
      const late = await t.tasks().dispatchTask({ toolName, agentId: "late" });
      const second = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 5 });
      expect(second.tasks.map((c) => c.task!.taskId)).toEqual([late.task!.taskId]);
    });

    it("ends a task CANCELLED when its worker suspends it after a cancel was requested", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName });
      const taskId = task!.taskId;
      const [claimed] = (await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] })).tasks;
      await t.tasks().cancelTask({ taskId, reason: "stop" });
      const suspended = await t.workers().suspendTask({ taskId, leaseId: claimed.lease!.leaseId, payload: num(1) });
      // Before the fix: SUSPENDED with the cancel still requested, so a
      // ResumeTask ran a new attempt whose first Heartbeat said stop.
      expect(TaskStatus[suspended.task!.status]).toBe("CANCELLED");
      expect(await historyOf(taskId)).toEqual(["queued:PENDING:0", "running:RUNNING:1", "cancelled:CANCELLED:1"]);
      const { events } = await t.tasks().listTaskEvents({ taskId });
      expect(events[2].kind.case === "cancelled" && events[2].kind.value.reason).toBe("stop");
      await expectError(t.tasks().resumeTask({ taskId }), Code.FailedPrecondition, "INVALID_TRANSITION");
    });

    it("voids the lease of an attempt past its timeout before the sweeper ends it", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, timeout: ms(200) });
      const taskId = task!.taskId;
      const [claimed] = (await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], leaseDuration: ms(60_000) })).tasks;
      const ids = { taskId, leaseId: claimed.lease!.leaseId };
      expect((await t.workers().heartbeat(ids)).cancelRequested).toBe(false);
      await sleep(300);
      const before = (await t.tasks().getTask({ taskId })).task!;
      // Before the fix each of these succeeded: the heartbeat said go on and
      // the completion won, depending on when the sweeper last ran.
      expect((await t.workers().heartbeat(ids)).cancelRequested).toBe(true);
      for (const call of [
        () => t.workers().completeTask({ ...ids, result: num(1) }),
        () => t.workers().failTask({ ...ids, error: { message: "late" } }),
        () => t.workers().suspendTask(ids),
        () => t.workers().reportOutput({ ...ids, output: num(1) }),
      ]) {
        const err = await expectError(call(), Code.FailedPrecondition, "LEASE_EXPIRED");
        expect(err.message).toContain("timeout");
      }
      expect((await t.tasks().getTask({ taskId })).task).toEqual(before);
      expect(await historyOf(taskId)).toEqual(["queued:PENDING:0", "running:RUNNING:1"]);
      // The batch calls are fenced the same way.
      const { results } = await t.workers().completeTasks({ requests: [ids] });
      expect(results[0].error?.reason).toBe("LEASE_EXPIRED");
      // The sweeper then ends it TIMED_OUT.
      await t.server.deps.store.expire();
      expect(await historyOf(taskId)).toEqual(["queued:PENDING:0", "running:RUNNING:1", "failed:TIMED_OUT:1"]);
    });
  });
}

describe("concurrent batch dispatches sharing idempotency keys on postgres", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer("postgres", { sweepIntervalMs: 3_600_000 });
  });
  afterAll(() => t?.close());

  // Before the fix about one call in three failed INTERNAL: PostgreSQL found
  // the batches deadlocked on each other's keys (40P01) and ended one.
  it("creates each task once and fails no call, whatever order each batch sends the keys in", async () => {
    const toolName = unique();
    const protocols = ["grpc", "connect", "connect-json", "grpc-web"] as const;
    for (let round = 0; round < 3; round++) {
      const ids = Array.from({ length: 1000 }, (_, i) => `${toolName}-${round}-${i}`);
      const orders = [ids, [...ids].reverse(), ids.slice(500).concat(ids.slice(0, 500))];
      const calls = Array.from({ length: 6 }, (_, k) =>
        t.tasks(protocols[k % 4]).dispatchTasks({ requests: orders[k % 3].map((requestId) => ({ toolName, requestId })) }),
      );
      const results = await Promise.allSettled(calls);
      expect(results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
      const answers = results.flatMap((r) => (r.status === "fulfilled" ? r.value.results : []));
      expect(answers.every((a) => a.outcome.case === "dispatched")).toBe(true);
      // Every call answers each key with the one task that key made.
      const byKey = new Map<string, Set<string>>();
      for (const [k, r] of results.entries()) {
        if (r.status !== "fulfilled") continue;
        r.value.results.forEach((a, i) => {
          const key = orders[k % 3][i];
          const taskId = a.outcome.case === "dispatched" ? a.outcome.value.task!.taskId : "";
          byKey.set(key, (byKey.get(key) ?? new Set()).add(taskId));
        });
      }
      expect([...byKey.values()].every((tasks) => tasks.size === 1)).toBe(true);
      const created = answers.filter((a) => a.outcome.case === "dispatched" && a.outcome.value.created).length;
      expect(created).toBe(1000);
    }
    expect((await t.tasks().listTasks({ filter: { toolName } })).totalSize).toBe(3000n);
  }, 120_000);
});
