import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus, type TaskEvent } from "../gen/taskstream/v1/task_pb.js";
import { Backpressure } from "../gen/taskstream/v1/task_service_pb.js";
import { msFromTimestamp } from "../src/domain/time.js";
import { readEvents } from "../src/storage/event-log.js";
import { expectError } from "./support/expect-error.js";
import { eventually } from "./support/streams.js";
import { DIALECTS, freshDatabase, startTestServer, startWith, withClients, type TestServer } from "./support/test-server.js";

const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1_000_000 });
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));
const unique = () => Math.random().toString(36).slice(2);

const GLOBAL = 8;
const PER_AGENT = 3;

for (const dialect of DIALECTS) {
  describe(`execution on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer(dialect, {
        globalConcurrency: GLOBAL,
        agentConcurrency: PER_AGENT,
        agentConcurrencyOverrides: new Map([["solo", 1]]),
        sweepIntervalMs: 50,
      });
    });
    afterAll(() => t?.close());

    it("never exceeds the global and per-agent limits under a burst of 1,000 tasks and 20 racing workers", async () => {
      const toolName = unique();
      const agents = Array.from({ length: 10 }, (_, i) => `burst-${i}`);
      const dispatched: string[] = [];
      for (let i = 0; i < 1000; i += 50) {
        const batch = await Promise.all(
          Array.from({ length: 50 }, (_, j) => t.tasks().dispatchTask({ toolName, agentId: agents[(i + j) % agents.length] })),
        );
        dispatched.push(...batch.map((b) => b.task!.taskId));
      }
      const samples: number[] = [];
      let done = 0;
      const worker = async (w: number) => {
        const workers = w % 4 === 0 ? t.grpcJs.workers : t.workers(w % 2 ? "grpc" : "connect");
        while (done < dispatched.length) {
          const { tasks } = await workers.claimTasks({ workerId: `w${w}`, toolNames: [toolName], maxTasks: 1 + (w % 3), wait: ms(100) });
          if (tasks.length > 0) samples.push((await t.tasks().listTasks({ statuses: [TaskStatus.RUNNING], pageSize: 1 })).totalSize as unknown as number);
          for (const { task, lease } of tasks) {
            await sleep(Math.random() * 3);
            await workers.completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
            done++;
          }
        }
      };
      await Promise.all(Array.from({ length: 20 }, (_, w) => worker(w)));
      expect(done).toBe(1000);
      expect(Math.max(...samples.map(Number))).toBeLessThanOrEqual(GLOBAL);

      // The log is the proof: replayed in sequence order, no prefix ever runs more than the limits allow.
      const log = await readEvents(t.server.deps.db.kysely, { after: 0, limit: 1_000_000 });
      const running = new Map<string, string>();
      let peak = 0;
      for (const event of log) {
        if (event.status === TaskStatus.RUNNING) running.set(event.taskId, event.agentId);
        else running.delete(event.taskId);
        const perAgent = [...running.values()].filter((a) => a === event.agentId).length;
        expect(running.size, `global at ${event.sequence}`).toBeLessThanOrEqual(GLOBAL);
        expect(perAgent, `agent ${event.agentId} at ${event.sequence}`).toBeLessThanOrEqual(PER_AGENT);
        peak = Math.max(peak, running.size);
      }
      // The limits were reached, not merely respected by an idle system.
      expect(peak).toBe(GLOBAL);
    }, 300_000);

    it("queues or rejects a dispatch when the agent has no free slot", async () => {
      const toolName = unique();
      const first = await t.tasks().dispatchTask({ toolName, agentId: "solo", claim: { workerId: "self" } });
      expect(first.task!.status).toBe(TaskStatus.RUNNING);
      const err = await expectError(
        t.tasks().dispatchTask({ toolName, agentId: "solo", backpressure: Backpressure.REJECT }),
        Code.ResourceExhausted,
        "CONCURRENCY_LIMIT",
      );
      expect(err.message).toContain("solo");
      expect((await t.tasks().listTasks({ filter: { agentId: "solo", toolName } })).tasks).toHaveLength(1);

      const queued = await t.tasks().dispatchTask({ toolName, agentId: "solo", backpressure: Backpressure.QUEUE });
      expect(queued.task!.status).toBe(TaskStatus.PENDING);
      // A self-claimed dispatch without a free slot queues instead of running.
      const selfClaimed = await t.tasks().dispatchTask({ toolName, agentId: "solo", claim: { workerId: "self" } });
      expect(selfClaimed.task!.status).toBe(TaskStatus.PENDING);
      expect(selfClaimed.lease).toBeUndefined();
      expect((await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] })).tasks).toHaveLength(0);

      await t.workers().completeTask({ taskId: first.task!.taskId, leaseId: first.lease!.leaseId });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 5 });
      expect(tasks.map((c) => c.task!.taskId)).toEqual([queued.task!.taskId]);
      // Suspending frees the slot.
      await t.workers().suspendTask({ taskId: tasks[0].task!.taskId, leaseId: tasks[0].lease!.leaseId });
      const next = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 5 });
      expect(next.tasks.map((c) => c.task!.taskId)).toEqual([selfClaimed.task!.taskId]);
    });

    it("times out a running task, revokes its lease and tells its worker to stop", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, timeout: ms(300) });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], leaseDuration: ms(60_000) });
      const ids = { taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId };
      expect((await t.workers().heartbeat(ids)).cancelRequested).toBe(false);
      await eventually(async () => (await t.tasks().getTask({ taskId: ids.taskId })).task!.status === TaskStatus.TIMED_OUT, 5000);
      expect((await t.workers().heartbeat(ids)).cancelRequested).toBe(true);
      await expectError(t.workers().completeTask(ids), Code.FailedPrecondition, "INVALID_TRANSITION");
      const { events } = await t.tasks().listTaskEvents({ taskId: ids.taskId });
      const last = events[events.length - 1];
      expect(last.kind.case).toBe("failed");
      expect(last.status).toBe(TaskStatus.TIMED_OUT);
      expect(last.kind.case === "failed" && last.kind.value.status).toBe(TaskStatus.TIMED_OUT);
      expect(last.kind.case === "failed" && last.kind.value.error?.code).toBe("TIMEOUT");
    });

    it("retries a retryable failure after its backoff delay, and fails after the last attempt", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({
        toolName,
        maxRetries: 2,
        retryPolicy: { initialDelay: ms(200), backoffMultiplier: 2, maxDelay: ms(10_000) },
      });
      const taskId = task!.taskId;
      const claimOne = async () => (await t.workers().claimTasks({ workerId: "w", toolNames: [toolName], wait: ms(3000) })).tasks[0];
      for (let attempt = 1; attempt <= 3; attempt++) {
        const claimed = await claimOne();
        expect(claimed.task!.attempt).toBe(attempt);
        const { task: after } = await t.workers().failTask({
          taskId,
          leaseId: claimed.lease!.leaseId,
          error: { message: `flaky ${attempt}`, retryable: true },
        });
        expect(after!.status).toBe(attempt < 3 ? TaskStatus.PENDING : TaskStatus.FAILED);
        if (attempt < 3) {
          expect(after!.retryTime).toBeDefined();
          // Not claimable before its delay.
          expect((await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] })).tasks).toHaveLength(0);
        }
      }
      const { events } = await t.tasks().listTaskEvents({ taskId });
      expect(events.map((e) => `${e.kind.case}:${TaskStatus[e.status]}:${e.attempt}`)).toEqual([
        "queued:PENDING:0",
        "running:RUNNING:1",
        "failed:PENDING:2",
        "running:RUNNING:2",
        "failed:PENDING:3",
        "running:RUNNING:3",
        "failed:FAILED:3",
      ]);
      // Each retry waited out its delay: 200 ms, then 400 ms.
      const failedAt = (e: TaskEvent) => msFromTimestamp(e.eventTime!);
      const retryAt = (e: TaskEvent) => (e.kind.case === "failed" ? msFromTimestamp(e.kind.value.retryTime!) : 0);
      const startedAt = (e: TaskEvent) => msFromTimestamp(e.eventTime!);
      expect(retryAt(events[2]) - failedAt(events[2])).toBe(200);
      expect(retryAt(events[4]) - failedAt(events[4])).toBe(400);
      expect(startedAt(events[3])).toBeGreaterThanOrEqual(retryAt(events[2]));
      expect(startedAt(events[5])).toBeGreaterThanOrEqual(retryAt(events[4]));
    });

    it("does not retry a failure the worker marks not retryable", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, maxRetries: 3 });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] });
      const { task: after } = await t.workers().failTask({ taskId: task!.taskId, leaseId: tasks[0].lease!.leaseId, error: { message: "bad input" } });
      expect(after!.status).toBe(TaskStatus.FAILED);
    });

    it("retries the task of a worker killed mid-task on another worker, and refuses the dead lease", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, maxRetries: 1, retryPolicy: { initialDelay: ms(1) } });
      const child = spawn(process.execPath, ["--import", "tsx", "test/support/worker-process.ts", `127.0.0.1:${t.server.port}`, toolName, "400"], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      const line = await new Promise<string>((resolve) => createInterface({ input: child.stdout! }).once("line", resolve));
      const dead = JSON.parse(line) as { taskId: string; leaseId: string };
      expect(dead.taskId).toBe(task!.taskId);
      await sleep(600); // heartbeats keep it alive past its 400 ms lease
      expect((await t.tasks().getTask({ taskId: dead.taskId })).task!.status).toBe(TaskStatus.RUNNING);
      child.kill("SIGKILL");
      const { tasks } = await t.workers().claimTasks({ workerId: "survivor", toolNames: [toolName], wait: ms(5000) });
      expect(tasks[0].task!.taskId).toBe(dead.taskId);
      expect(tasks[0].task!.attempt).toBe(2);
      await expectError(t.workers().completeTask(dead), Code.FailedPrecondition, "LEASE_MISMATCH");
      await t.workers().completeTask({ taskId: dead.taskId, leaseId: tasks[0].lease!.leaseId });
      const { events } = await t.tasks().listTaskEvents({ taskId: dead.taskId });
      const lost = events.find((e) => e.kind.case === "failed")!;
      expect(lost.kind.case === "failed" && lost.kind.value.error?.code).toBe("LEASE_EXPIRED");
    });

    it("ends a cancelled running task CANCELLED when its lease runs out before the worker answers", async () => {
      const toolName = unique();
      const { task } = await t.tasks().dispatchTask({ toolName, maxRetries: 5 });
      await t.workers().claimTasks({ workerId: "gone", toolNames: [toolName], leaseDuration: ms(200) });
      await t.tasks().cancelTask({ taskId: task!.taskId, reason: "stop" });
      await eventually(async () => (await t.tasks().getTask({ taskId: task!.taskId })).task!.status === TaskStatus.CANCELLED, 5000);
      const { events } = await t.tasks().listTaskEvents({ taskId: task!.taskId });
      expect(events.map((e) => e.kind.case)).toEqual(["queued", "running", "cancelled"]);
    });
  });

  describe(`restart and retention on ${dialect}`, () => {
    it("recovers after a restart with tasks in every state, running none twice", async () => {
      const database = await freshDatabase(dialect);
      let t = withClients(await startWith(database.location, { sweepIntervalMs: 50 }), database.location, async () => {});
      try {
        const tool = unique();
        const d = (extra = {}) => t.tasks().dispatchTask({ toolName: tool, ...extra }).then((r) => r.task!.taskId);
        const claim = async (leaseMs: number) => (await t.workers().claimTasks({ workerId: "before", toolNames: [tool], leaseDuration: ms(leaseMs) })).tasks[0];
        // One pending task at a time, so each claim takes the task meant; the short lease last.
        const held = await d();
        const heldClaim = await claim(60_000);
        const suspended = await d();
        const suspendedClaim = await claim(60_000);
        await t.workers().suspendTask({ taskId: suspended, leaseId: suspendedClaim.lease!.leaseId });
        const completed = await d();
        await t.workers().completeTask({ taskId: completed, leaseId: (await claim(60_000)).lease!.leaseId });
        const cancelled = await d();
        await t.tasks().cancelTask({ taskId: cancelled });
        const expiring = await d({ maxRetries: 1, retryPolicy: { initialDelay: ms(1) } });
        const expiringClaim = await claim(300);
        const pending = await d();
        expect(expiringClaim.task!.taskId).toBe(expiring);
        expect(heldClaim.task!.taskId).toBe(held);

        await t.server.close();
        await sleep(400);
        t = withClients(await startWith(database.location, { sweepIntervalMs: 50 }), database.location, async () => {});
        const status = async (id: string) => (await t.tasks().getTask({ taskId: id })).task!;
        // The expired lease is retried; the held one is left to its worker.
        const claimedAfter: string[] = [];
        const deadline = Date.now() + 5000;
        while (claimedAfter.length < 2 && Date.now() < deadline) {
          const { tasks } = await t.workers().claimTasks({ workerId: "after", toolNames: [tool], maxTasks: 10, wait: ms(1000) });
          claimedAfter.push(...tasks.map((c) => c.task!.taskId));
        }
        expect(claimedAfter.sort()).toEqual([expiring, pending].sort());
        expect((await status(expiring)).attempt).toBe(2);
        expect((await status(held)).status).toBe(TaskStatus.RUNNING);
        await t.workers().heartbeat({ taskId: held, leaseId: heldClaim.lease!.leaseId });
        expect((await status(suspended)).status).toBe(TaskStatus.SUSPENDED);
        await t.tasks().resumeTask({ taskId: suspended });
        expect((await t.workers().claimTasks({ workerId: "after", toolNames: [tool] })).tasks[0].task!.taskId).toBe(suspended);
        expect((await status(completed)).status).toBe(TaskStatus.COMPLETED);
        expect((await status(cancelled)).status).toBe(TaskStatus.CANCELLED);
      } finally {
        await t.server.close();
        await database.drop();
      }
    });

    it("deletes exactly the tasks past their retention age, with their events, and expires older cursors", async () => {
      const database = await freshDatabase(dialect);
      const t = withClients(
        await startWith(database.location, {
          retainCompletedMs: 400,
          retainCancelledMs: 400,
          retainFailedMs: 1500,
          retentionIntervalMs: 100,
        }),
        database.location,
        async () => {},
      );
      try {
        const tool = unique();
        const dispatchRunning = async () => {
          const r = await t.tasks().dispatchTask({ toolName: tool, claim: { workerId: "w" } });
          return { taskId: r.task!.taskId, leaseId: r.lease!.leaseId };
        };
        const completed = await dispatchRunning();
        await t.workers().completeTask(completed);
        const failed = await dispatchRunning();
        await t.workers().failTask({ ...failed, error: { message: "x" } });
        const cancelled = (await t.tasks().dispatchTask({ toolName: tool })).task!.taskId;
        await t.tasks().cancelTask({ taskId: cancelled });
        const running = await dispatchRunning();
        const pending = (await t.tasks().dispatchTask({ toolName: tool })).task!.taskId;
        const exists = async (id: string) =>
          t.tasks().getTask({ taskId: id }).then(
            () => true,
            () => false,
          );

        await eventually(async () => !(await exists(completed.taskId)), 5000, "completed task deleted");
        await eventually(async () => !(await exists(cancelled)), 5000, "cancelled task deleted");
        expect(await exists(failed.taskId)).toBe(true);
        expect(await exists(running.taskId)).toBe(true);
        expect(await exists(pending)).toBe(true);
        await expectError(t.tasks().listTaskEvents({ taskId: completed.taskId }), Code.NotFound, "TASK_NOT_FOUND");
        await eventually(async () => !(await exists(failed.taskId)), 5000, "failed task deleted");
        expect(await exists(running.taskId)).toBe(true);

        const remaining = await readEvents(t.server.deps.db.kysely, { after: 0, limit: 1000 });
        expect(new Set(remaining.map((e) => e.taskId))).toEqual(new Set([running.taskId, pending]));
        // Cursors before the deleted events expired; the oldest held still resumes.
        const { trimmed_through } = await t.server.deps.db.kysely.selectFrom("log_head").select("trimmed_through").executeTakeFirstOrThrow();
        expect(trimmed_through).toBeGreaterThan(0);
        await expectError(
          (async () => {
            for await (const _ of t.tasks().streamTasks({ afterSequence: BigInt(trimmed_through - 1) }));
          })(),
          Code.FailedPrecondition,
          "CURSOR_EXPIRED",
        );
      } finally {
        await t.server.close();
        await database.drop();
      }
    });
  });
}
