import BetterSqlite3 from "better-sqlite3";
import { CompiledQuery, sql, type LogEvent } from "kysely";
import { describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { LogSignal } from "../src/fanout/log-signal.js";
import { openDatabase, type Db } from "../src/storage/connect.js";
import { migrateToLatest } from "../src/storage/migrate.js";
import { listTasks } from "../src/storage/task-queries.js";
import { TaskStore } from "../src/storage/task-store.js";
import { newTask } from "./support/task-row.js";
import { freshDatabase } from "./support/test-server.js";

/**
 * The sweeper and the concurrency limits read partial indexes (migration
 * 2026-11-24T2230), which SQLite uses only for a query that states their
 * condition as a literal, and which its planner passed over for other indexes
 * on status when they did not lead with it; the claim reads tasks_claim, which
 * also counts ListTasks by a tool and statuses. Each query must read its own
 * index: on a large table any other plan walks every pending or running task,
 * a whole tool's tasks, or every task.
 */
/** The selects of a claim, a sweep and a ListTasks by tool and statuses, as each dialect sends them. */
async function executionSelects(location: string): Promise<{ sql: string; parameters: readonly unknown[] }[]> {
  const selects: { sql: string; parameters: readonly unknown[] }[] = [];
  const log = (event: LogEvent) => {
    if (event.level === "query" && /^select/i.test(event.query.sql)) selects.push(event.query);
  };
  const db = openDatabase(location, { log });
  try {
    await migrateToLatest(db);
    const store = new TaskStore(db, { log: new LogSignal(), pending: new LogSignal() }, { global: 100, perAgent: 10, overrides: new Map() });
    await store.dispatchMany(Array.from({ length: 12 }, (_, i) => ({ input: newTask({ toolName: `tool-${i % 3}`, agentId: `agent-${i % 4}` }) })));
    selects.length = 0;
    const claimed = await store.claim({ workerId: "w", leaseMs: 30_000, toolNames: ["tool-1"], maxTasks: 2 });
    expect(claimed).toHaveLength(2);
    expect(await store.expire()).toBe(0);
    const filter = { toolName: "tool-1", toolCallId: "", agentId: "", runId: "", threadId: "", resourceId: "", taskId: "" };
    const statuses = [TaskStatus.FAILED, TaskStatus.TIMED_OUT];
    await listTasks(db.kysely, { filter, statuses, orderBy: "create_time", descending: false, limit: 50, countTotal: true });
  } finally {
    await db.close();
  }
  return selects;
}

describe("execution and list queries on SQLite", () => {
  it("read the index made for each", async () => {
    const database = await freshDatabase("sqlite");
    const selects = await executionSelects(database.location);
    const file = new BetterSqlite3(database.location, { readonly: true });
    try {
      const plans = selects.map((q) => {
        const plan = file.prepare(`EXPLAIN QUERY PLAN ${q.sql}`).all(...q.parameters) as { detail: string }[];
        return plan.map((step) => step.detail).join("; ");
      });
      expect(plans).toEqual([
        "SEARCH tasks USING COVERING INDEX tasks_active_agent (status=?)",
        "SEARCH tasks USING INDEX tasks_claim (status=? AND tool_name=?)",
        "SEARCH tasks USING INDEX tasks_running_lease_expire_time (status=? AND lease_expire_time<?)",
        "SEARCH tasks USING INDEX tasks_running_timeout_time (status=? AND timeout_time>? AND timeout_time<?)",
        // ListTasks by a tool and statuses: the page walks the tool's tasks, the count reads the claim index.
        "SEARCH tasks USING INDEX tasks_tool_name_create_time_status (tool_name=?)",
        "SEARCH tasks USING COVERING INDEX tasks_claim (status=? AND tool_name=?)",
      ]);
    } finally {
      file.close();
      await database.drop();
    }
  });
});

/**
 * PostgreSQL's planner costs plans by the table's statistics, so on a table
 * of twelve rows it rightly prefers to read the table. With sequential scans
 * priced out, each query must still have an index path, and the execution
 * queries one over the pending-or-running tasks alone. Which index among
 * several it picks at this size says little of a large table (here the claim
 * reads the tool's list index, not tasks_claim), so that is not asserted; nor
 * which of the two partial indexes over running tasks a sweeper query reads:
 * both hold the same rows.
 */
describe("execution and list queries on PostgreSQL", () => {
  it("each have an index path, the execution ones over pending or running tasks alone", async () => {
    const database = await freshDatabase("postgres");
    const selects = await executionSelects(database.location);
    const db: Db = openDatabase(database.location);
    try {
      const indexes = await db.kysely.transaction().execute(async (trx) => {
        await sql`SET LOCAL enable_seqscan = off`.execute(trx);
        const found: string[][] = [];
        for (const q of selects) {
          const { rows } = await trx.executeQuery<{ "QUERY PLAN": unknown }>(CompiledQuery.raw(`EXPLAIN (FORMAT JSON) ${q.sql}`, [...q.parameters]));
          const text = JSON.stringify(rows[0]["QUERY PLAN"]);
          expect(text, q.sql).not.toContain('"Seq Scan"');
          found.push([...text.matchAll(/"Index Name":"([^"]+)"/g)].map((m) => m[1]));
        }
        return found;
      });
      const readWith = (pattern: RegExp) => indexes[selects.findIndex((q) => pattern.test(q.sql))];
      // Execution queries: over pending or running tasks alone.
      expect(readWith(/count\(\*\) as "n" from "tasks" where status IN \(1, 2\)/)).toEqual(["tasks_active_agent"]);
      const running = ["tasks_running_lease_expire_time", "tasks_running_timeout_time"];
      for (const column of ["lease_expire_time", "timeout_time"]) {
        const found = readWith(new RegExp(`where status = 2 and "${column}"`));
        expect(found.length, column).toBe(1);
        expect(running, column).toContain(found[0]);
      }
      // The claim, ListTasks' page and its count: some index, never the table.
      for (const [i, q] of selects.entries()) if (/from "tasks"/.test(q.sql)) expect(indexes[i].length, q.sql).toBeGreaterThan(0);
    } finally {
      await db.close();
      await database.drop();
    }
  });
});
