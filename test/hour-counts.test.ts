import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskErrorSchema, TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { prng } from "../bench/list-tasks/data.js";
import { LogSignal } from "../src/fanout/log-signal.js";
import { openDatabase, type Db } from "../src/storage/connect.js";
import { migrateToLatest } from "../src/storage/migrate.js";
import { HOUR_MS, recountTasks } from "../src/storage/status-counts.js";
import { listTasks, type TaskQuery, type TimeColumn } from "../src/storage/task-queries.js";
import { TaskStore, type NewTask } from "../src/storage/task-store.js";
import { DIALECTS, freshDatabase } from "./support/test-server.js";

/**
 * total_size of a list by time range (and statuses) adds whole hours from
 * task_hour_counts on SQLite and counts the partial ones: it must equal
 * COUNT(*) for any range, through every change TaskStore makes, over days.
 */

const DAY = 24 * HOUR_MS;
const T0 = Date.UTC(2026, 10, 1);

function task(i: number): NewTask {
  return {
    requestId: "",
    toolName: `tool-${i % 3}`,
    toolCallId: "",
    args: { i },
    agentId: `agent-${i % 4}`,
    runId: "",
    threadId: "",
    resourceId: "",
    maxRetries: i % 2,
    timeoutMs: 600_000,
    retryDelayMs: 0,
    retryBackoff: 2,
    maxRetryDelayMs: 0,
    backpressure: "queue",
  };
}

for (const dialect of DIALECTS) {
  describe(`time-range totals on ${dialect}`, () => {
    let db: Db;
    let store: TaskStore;
    let drop: () => Promise<void>;
    let now = T0;
    const random = prng(11);

    beforeAll(async () => {
      const database = await freshDatabase(dialect);
      drop = database.drop;
      db = openDatabase(database.location);
      await migrateToLatest(db);
      store = new TaskStore(db, { log: new LogSignal(), pending: new LogSignal() }, undefined, () => now);
      // Three days of work in steps of about 20 minutes: dispatches, claims,
      // completes, fails (some retried), cancels; then retention deletes the first day's finished tasks.
      for (let step = 0; step < 3 * 72; step++) {
        now = T0 + step * 20 * 60_000 + Math.floor(random() * 60_000);
        const n = 1 + Math.floor(random() * 6);
        await store.dispatchMany(Array.from({ length: n }, (_, k) => ({ input: task(step * 10 + k) })));
        const claimed = await store.claim({ workerId: "w", leaseMs: DAY, toolNames: [], maxTasks: Math.floor(random() * 6) });
        const lease = (c: (typeof claimed)[number]) => ({ taskId: c.task.task_id, leaseId: c.lease.leaseId });
        const third = Math.floor(claimed.length / 3);
        await store.completeMany(claimed.slice(0, third).map((c) => ({ ...lease(c), value: undefined })));
        await store.failMany(claimed.slice(third, 2 * third).map((c) => ({ ...lease(c), value: create(TaskErrorSchema, { message: "x", retryable: true }) })));
        if (random() < 0.2 && claimed.length > 0) await store.cancel(claimed[claimed.length - 1].task.task_id, "enough");
      }
      now = T0 + 3 * DAY;
      await store.deleteExpired({ completedMs: 2 * DAY, failedMs: 2 * DAY, cancelledMs: 2 * DAY });
    }, 120_000);
    afterAll(async () => {
      await db?.close();
      await drop?.();
    });

    async function countAll(query: Pick<TaskQuery, "statuses" | "timeRange">): Promise<number> {
      const { column, startMs = 1, endMs = Number.MAX_SAFE_INTEGER } = query.timeRange!;
      let select = db.kysely.selectFrom("tasks").select((eb) => eb.fn.countAll<number | string>().as("n"));
      select = select.where(column, ">", 0).where(column, ">=", startMs).where(column, "<", endMs);
      if (query.statuses.length > 0) select = select.where("status", "in", query.statuses);
      return Number((await select.executeTakeFirstOrThrow()).n);
    }

    it("equals COUNT(*) for ranges within an hour, across hours and days, open at either end", async () => {
      const columns: TimeColumn[] = ["create_time", "start_time", "complete_time"];
      const statusSets = [[], [TaskStatus.COMPLETED], [TaskStatus.PENDING, TaskStatus.RUNNING], [TaskStatus.FAILED, TaskStatus.CANCELLED]];
      const point = () => T0 - HOUR_MS + Math.floor(random() * (3 * DAY + 2 * HOUR_MS));
      let nonEmpty = 0;
      for (let i = 0; i < 300; i++) {
        const a = point();
        const length = [0, 1, 1000, HOUR_MS, 5 * HOUR_MS, DAY + 17][i % 6] + Math.floor(random() * HOUR_MS * (i % 3));
        const timeRange = {
          column: columns[i % 3],
          startMs: i % 10 === 0 ? undefined : i % 5 === 0 ? Math.floor(a / HOUR_MS) * HOUR_MS : a,
          endMs: i % 10 === 1 ? undefined : a + length,
        };
        const query = { filter: { agentId: "", runId: "", threadId: "", resourceId: "", taskId: "", toolName: "", toolCallId: "" }, statuses: statusSets[i % 4], timeRange };
        const expected = await countAll(query);
        const page = await listTasks(db.kysely, { ...query, orderBy: "create_time", descending: false, limit: 1, countTotal: true });
        expect(page.total, JSON.stringify(query)).toBe(expected);
        if (expected > 0) nonEmpty++;
      }
      expect(nonEmpty).toBeGreaterThan(150);
    });

    it.runIf(dialect === "sqlite")("keeps task_hour_counts equal to a recount", async () => {
      const kept = await db.kysely.selectFrom("task_hour_counts").selectAll().where("n", "<>", 0).orderBy(["time_column", "hour", "status"]).execute();
      expect(kept.length).toBeGreaterThan(100);
      const byKey = new Map(kept.map((r) => [`${r.time_column} ${r.hour} ${r.status}`, r.n]));
      const tasks = await db.kysely.selectFrom("tasks").select(["status", "create_time", "start_time", "complete_time"]).execute();
      const expected = new Map<string, number>();
      for (const t of tasks) {
        for (const column of ["create_time", "start_time", "complete_time"] as const) {
          if (t[column] <= 0) continue;
          const key = `${column} ${Math.floor(t[column] / HOUR_MS)} ${t.status}`;
          expected.set(key, (expected.get(key) ?? 0) + 1);
        }
      }
      expect(byKey).toEqual(expected);
      // A recount (what bulk loads run) builds the same table.
      await recountTasks(db);
      expect(await db.kysely.selectFrom("task_hour_counts").selectAll().where("n", "<>", 0).orderBy(["time_column", "hour", "status"]).execute()).toEqual(kept);
    });
  });
}
