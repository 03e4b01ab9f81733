import BetterSqlite3 from "better-sqlite3";
import type { LogEvent } from "kysely";
import { describe, expect, it } from "vitest";
import { LogSignal } from "../src/fanout/log-signal.js";
import { openDatabase } from "../src/storage/connect.js";
import { migrateToLatest } from "../src/storage/migrate.js";
import { TaskStore, type NewTask } from "../src/storage/task-store.js";
import { freshDatabase } from "./support/test-server.js";

/**
 * The claim, the sweeper and the concurrency limits read partial indexes
 * (migration 2026-11-24T2230), which SQLite uses only for a query that states
 * their condition as a literal, and which its planner passed over for other
 * indexes on status when they did not lead with it. Each query must read its
 * own index: on a large table any other plan walks every pending or running
 * task, or every task.
 */
function newTask(i: number): NewTask {
  return {
    requestId: "",
    toolName: `tool-${i % 3}`,
    toolCallId: "",
    args: {},
    agentId: `agent-${i % 4}`,
    runId: "",
    threadId: "",
    resourceId: "",
    maxRetries: 0,
    timeoutMs: 60_000,
    retryDelayMs: 1000,
    retryBackoff: 2,
    maxRetryDelayMs: 60_000,
    backpressure: "queue",
  };
}

describe("execution queries on SQLite", () => {
  it("read the partial index made for each", async () => {
    const database = await freshDatabase("sqlite");
    const selects: { sql: string; parameters: readonly unknown[] }[] = [];
    const log = (event: LogEvent) => {
      if (event.level === "query" && /^select/i.test(event.query.sql)) selects.push(event.query);
    };
    const db = openDatabase(database.location, { log });
    try {
      await migrateToLatest(db);
      const store = new TaskStore(db, { log: new LogSignal(), pending: new LogSignal() }, { global: 100, perAgent: 10, overrides: new Map() });
      await store.dispatchMany(Array.from({ length: 12 }, (_, i) => ({ input: newTask(i) })));
      selects.length = 0;
      const claimed = await store.claim({ workerId: "w", leaseMs: 30_000, toolNames: ["tool-1"], maxTasks: 2 });
      expect(claimed).toHaveLength(2);
      expect(await store.expire()).toBe(0);
    } finally {
      await db.close();
    }
    const file = new BetterSqlite3(database.location, { readonly: true });
    try {
      const plans = selects.map((q) => {
        const plan = file.prepare(`EXPLAIN QUERY PLAN ${q.sql}`).all(...q.parameters) as { detail: string }[];
        return plan.map((step) => step.detail).join("; ");
      });
      expect(plans).toEqual([
        "SEARCH tasks USING COVERING INDEX tasks_active_agent (status=?)",
        "SEARCH tasks USING INDEX tasks_pending_claim (status=? AND tool_name=?)",
        "SEARCH tasks USING INDEX tasks_running_lease_expire_time (status=? AND lease_expire_time<?)",
        "SEARCH tasks USING INDEX tasks_running_timeout_time (status=? AND timeout_time>? AND timeout_time<?)",
      ]);
    } finally {
      file.close();
      await database.drop();
    }
  });
});
