import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { TaskErrorSchema, TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import type { NewTask } from "../src/storage/task-store.js";
import { openDatabase, type Db } from "../src/storage/connect.js";
import * as initial from "../src/storage/migrations/2026-11-24T0720-initial.js";
import * as execution from "../src/storage/migrations/2026-11-24T0810-execution.js";
import * as taskCounts from "../src/storage/migrations/2026-11-24T1110-task-counts.js";
import * as sqliteCountsByWriters from "../src/storage/migrations/2026-11-24T1500-sqlite-counts-by-writers.js";
import type { Database, TaskRow } from "../src/storage/schema.js";
import { countByStatus } from "../src/storage/task-queries.js";
import { newTask, taskRow } from "./support/task-row.js";
import { DIALECTS, freshDatabase, startTestServer, type TestServer } from "./support/test-server.js";

/**
 * total_size of a list filtered by status alone comes from task_counts,
 * which TaskStore keeps on SQLite and triggers keep on PostgreSQL. It must
 * stay exact through everything that adds, changes or deletes tasks.
 */

const STATUSES = [1, 2, 3, 4, 5, 6, 7] as TaskStatus[];

/** The counts table and COUNT(*) of the tasks, read in one snapshot. */
async function snapshot(db: Db): Promise<{ counted: Record<number, number>; kept: Record<number, number> }> {
  const read = async (k: Kysely<Database>) => {
    const counted = await k.selectFrom("tasks").select(["status", (eb) => eb.fn.countAll<number | string>().as("n")]).groupBy("status").execute();
    const kept = await k.selectFrom("task_counts").select(["status", (eb) => eb.fn.sum<number | string>("n").as("n")]).groupBy("status").execute();
    const byStatus = (rows: { status: number; n: number | string }[]) =>
      Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]).filter(([, n]) => n !== 0)) as Record<number, number>;
    return { counted: byStatus(counted), kept: byStatus(kept) };
  };
  const transaction = db.kysely.transaction();
  return db.dialect === "postgres" ? transaction.setIsolationLevel("repeatable read").execute(read) : transaction.execute(read);
}

async function expectExact(db: Db, when: string) {
  const { counted, kept } = await snapshot(db);
  expect(kept, when).toEqual(counted);
  return counted;
}

function countedRow(i: number, status: TaskStatus): TaskRow {
  return taskRow({
    status,
    tool_name: `tool-${i % 3}`,
    agent_id: `agent-${i % 5}`,
    create_time: 1_000_000 + i,
    complete_time: status >= TaskStatus.COMPLETED ? 2_000_000 + i : 0,
  });
}

for (const dialect of DIALECTS) {
  describe(`task_counts on ${dialect}`, () => {
    it("is backfilled from the tasks already stored, then follows inserts, status updates and deletes", async () => {
      const database = await freshDatabase(dialect);
      const db = openDatabase(database.location);
      try {
        const k = db.kysely as unknown as Kysely<unknown>;
        await initial.up(k, dialect);
        await execution.up(k);
        const rows = Array.from({ length: 2000 }, (_, i) => countedRow(i, STATUSES[(i * i) % 7]));
        for (let i = 0; i < rows.length; i += 500) await db.kysely.insertInto("tasks").values(rows.slice(i, i + 500)).execute();
        await taskCounts.up(k, dialect);
        const before = await expectExact(db, "after the backfill");
        expect(Object.values(before).reduce((a, b) => a + b)).toBe(2000);

        await db.kysely.insertInto("tasks").values(Array.from({ length: 300 }, (_, i) => countedRow(5000 + i, TaskStatus.PENDING))).execute();
        await expectExact(db, "after a multi-row insert");
        await db.kysely.updateTable("tasks").set({ status: TaskStatus.RUNNING }).where("status", "=", TaskStatus.PENDING).where("agent_id", "=", "agent-1").execute();
        await expectExact(db, "after a multi-row status update");
        await db.kysely.updateTable("tasks").set({ status: sql`CASE WHEN status = 2 THEN 4 ELSE status END` as never }).execute();
        await expectExact(db, "after an update of every row, some of them changing status");
        await db.kysely.updateTable("tasks").set({ worker_id: "w" }).execute();
        await expectExact(db, "after an update that changes no status");
        await db.kysely.deleteFrom("tasks").where("agent_id", "in", ["agent-2", "agent-3"]).execute();
        const after = await expectExact(db, "after a multi-row delete");
        for (const status of STATUSES) expect(await countByStatus(db.kysely, [status])).toBe(after[status] ?? 0);
        expect(await countByStatus(db.kysely, [])).toBe(Object.values(after).reduce((a, b) => a + b));
        expect(await countByStatus(db.kysely, [TaskStatus.COMPLETED, TaskStatus.COMPLETED, TaskStatus.FAILED])).toBe(
          (after[TaskStatus.COMPLETED] ?? 0) + (after[TaskStatus.FAILED] ?? 0),
        );
        // SQLite's writers take over the counting: the counts stay as they were.
        await sqliteCountsByWriters.up(k, dialect);
        await expectExact(db, "after the triggers gave way to the writers (SQLite)");
        if (dialect === "postgres") {
          await db.kysely.deleteFrom("tasks").execute();
          expect(await expectExact(db, "after deleting every task")).toEqual({});
          expect(await countByStatus(db.kysely, [])).toBe(0);
        }
      } finally {
        await db.close();
        await database.drop();
      }
    });

    describe("through dispatch, claim, complete, fail, retry, suspend, resume, cancel, timeouts and retention", () => {
      let t: TestServer;
      beforeAll(async () => {
        t = await startTestServer(dialect, {
          sweepIntervalMs: 50,
          retentionIntervalMs: 100,
          retainCompletedMs: 300,
          retainCancelledMs: 300,
          retainFailedMs: 3_600_000,
          retryDelayMs: 0,
          // 400 dispatches at once queue for PostgreSQL's 10 connections, and
          // a wait for one counts against this timeout: on a busy machine
          // the default 5 s ran out.
          databaseConnectTimeoutMs: 60_000,
        });
      });
      afterAll(() => t?.close());

      const tasks = () => t.tasks();
      const workers = () => t.workers();

      /** total_size as a status-only list reports it, against COUNT(*) of the same snapshot. */
      async function expectTotals(when: string) {
        const counted = await expectExact(t.server.deps.db, when);
        const all = await tasks().listTasks({ pageSize: 1 });
        // Retention may delete between the two reads: compare with what it can have left.
        expect(Number(all.totalSize), when).toBeLessThanOrEqual(Object.values(counted).reduce((a, b) => a + b, 0));
        for (const status of [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT]) {
          const { totalSize } = await tasks().listTasks({ statuses: [status], pageSize: 1 });
          expect(Number(totalSize), `${when}: ${TaskStatus[status]}`).toBe(counted[status] ?? 0);
        }
      }

      it("keeps every count exact", async () => {
        const tool = "counted";
        // Dispatches, some of them repeated (no new task), some claimed at once.
        await Promise.all(
          Array.from({ length: 400 }, (_, i) =>
            tasks().dispatchTask({
              toolName: tool,
              requestId: `r-${i % 350}`,
              agentId: `agent-${i % 4}`,
              args: { i },
              maxRetries: i % 2,
              timeout: { seconds: 600n },
              claim: i % 10 === 0 ? { workerId: "self" } : undefined,
            }),
          ),
        );
        await expectTotals("after dispatching");

        // Claims by several workers at once.
        const claimed = (
          await Promise.all(Array.from({ length: 6 }, (_, w) => workers().claimTasks({ workerId: `w${w}`, toolNames: [tool], maxTasks: 40 })))
        ).flatMap((r) => r.tasks);
        expect(claimed.length).toBe(240);
        await expectTotals("after claiming");

        // Each claimed task ends one way or another, all at once.
        await Promise.all(
          claimed.map(async ({ task, lease }, i) => {
            const ids = { taskId: task!.taskId, leaseId: lease!.leaseId };
            switch (i % 6) {
              case 0:
                return workers().completeTask({ ...ids, result: { kind: { case: "stringValue", value: "ok" } } });
              case 1:
                return workers().failTask({ ...ids, error: { message: "boom", retryable: true } }); // retried if it may be
              case 2:
                return workers().failTask({ ...ids, error: { message: "boom" } });
              case 3:
                return workers().suspendTask({ ...ids, payload: { kind: { case: "numberValue", value: i } } });
              case 4:
                return tasks().cancelTask({ taskId: ids.taskId, reason: "running, cancel requested" });
              default:
                return undefined; // left running
            }
          }),
        );
        await expectTotals("after completing, failing, suspending and cancelling");

        // Suspended tasks resume (half claimed at once); pending tasks are cancelled.
        const suspended = await tasks().listTasks({ statuses: [TaskStatus.SUSPENDED], pageSize: 1000 });
        expect(suspended.tasks.length).toBeGreaterThan(0);
        await Promise.all(
          suspended.tasks.map((task, i) =>
            tasks().resumeTask({ taskId: task.taskId, resumeData: { kind: { case: "boolValue", value: true } }, claim: i % 2 ? { workerId: "resumer" } : undefined }),
          ),
        );
        const pending = await tasks().listTasks({ statuses: [TaskStatus.PENDING], pageSize: 50 });
        await Promise.all(pending.tasks.map((task) => tasks().cancelTask({ taskId: task.taskId, reason: "not needed" })));
        await expectTotals("after resuming and cancelling");

        // Timeouts: tasks claimed with a short timeout and left to the sweeper.
        await Promise.all(
          Array.from({ length: 30 }, (_, i) => tasks().dispatchTask({ toolName: "slow", args: {}, timeout: { nanos: 100_000_000 }, maxRetries: i % 2 })),
        );
        await workers().claimTasks({ workerId: "sleepy", toolNames: ["slow"], maxTasks: 30 });
        const deadline = Date.now() + 20_000;
        for (;;) {
          const { totalSize } = await tasks().listTasks({ statuses: [TaskStatus.TIMED_OUT], pageSize: 1 });
          if (Number(totalSize) === 30 || Date.now() > deadline) break;
          // Retried attempts time out again once claimed.
          await workers().claimTasks({ workerId: "sleepy", toolNames: ["slow"], maxTasks: 30 });
          await new Promise((r) => setTimeout(r, 50));
        }
        await expectTotals("after timeouts");

        // Retention deletes the completed and cancelled tasks.
        for (;;) {
          const { totalSize } = await tasks().listTasks({ statuses: [TaskStatus.COMPLETED, TaskStatus.CANCELLED], pageSize: 1 });
          if (Number(totalSize) === 0 || Date.now() > deadline + 20_000) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        const counted = await expectExact(t.server.deps.db, "after retention");
        expect(counted[TaskStatus.COMPLETED] ?? 0).toBe(0);
        expect(counted[TaskStatus.CANCELLED] ?? 0).toBe(0);
        expect(counted[TaskStatus.TIMED_OUT]).toBe(30);
        await expectTotals("at the end");

        if (dialect === "postgres") {
          // Many changes, few rows: the writers folded them.
          const { rows, last } = await t.server.deps.db.kysely
            .selectFrom("task_counts")
            .select((eb) => [eb.fn.countAll<string>().as("rows"), eb.fn.max("id" as never).as("last")])
            .executeTakeFirstOrThrow() as unknown as { rows: string; last: number };
          expect(Number(last)).toBeGreaterThan(1024);
          expect(Number(rows)).toBeLessThan(1024 + 16);
        }
      });

      it("stays exact through batch dispatches, completes and fails", async () => {
        const store = t.server.deps.store;
        const input = (i: number): NewTask =>
          newTask({ requestId: `batch-${i % 80}`, toolName: "batched", args: { i }, agentId: `agent-${i % 3}`, maxRetries: 1, timeoutMs: 600_000, retryDelayMs: 0, maxRetryDelayMs: 0 });
        // 100 dispatches, 20 of them repeating one earlier in the same batch.
        const dispatched = await store.dispatchMany(Array.from({ length: 100 }, (_, i) => ({ input: input(i) })));
        expect(dispatched.filter((d) => d.ok && d.value.created).length).toBe(80);
        await expectTotals("after a batch dispatch with repeats");

        const claimed = await store.claim({ workerId: "batcher", leaseMs: 60_000, toolNames: ["batched"], maxTasks: 80 });
        expect(claimed.length).toBe(80);
        const lease = ({ task, lease }: (typeof claimed)[number]) => ({ taskId: task.task_id, leaseId: lease.leaseId });
        // Completes, with one task twice and one unknown: those two are refused alone.
        const completed = await store.completeMany(
          [...claimed.slice(0, 40), claimed[0]].map((c) => ({ ...lease(c), value: undefined })).concat({ taskId: "no-such-task", leaseId: "x", value: undefined }),
        );
        expect(completed.map((o) => o.ok)).toEqual([...Array(40).fill(true), false, false]);
        const failed = await store.failMany(
          claimed.slice(40).map((c, i) => ({ ...lease(c), value: create(TaskErrorSchema, { message: "boom", retryable: i % 2 === 0 }) })),
        );
        expect(failed.every((o) => o.ok)).toBe(true);
        await expectTotals("after batch completes and fails, half of the fails retried");
      });
    });
  });
}
