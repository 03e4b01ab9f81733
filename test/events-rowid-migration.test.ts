import BetterSqlite3 from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { LogSignal } from "../src/fanout/log-signal.js";
import { openDatabase } from "../src/storage/connect.js";
import { migrator } from "../src/storage/migrate.js";
import { TaskStore } from "../src/storage/task-store.js";
import { newTask } from "./support/task-row.js";
import { freshDatabase, startWith, withClients } from "./support/test-server.js";

const BEFORE = "2026-11-24T1510-sqlite-hour-counts";

/** A database at the schema before the migration, holding 20 tasks and their 30 events. */
async function databaseBefore(location: string): Promise<void> {
  const db = openDatabase(location);
  try {
    const { error } = await migrator(db).migrateTo(BEFORE);
    if (error) throw error;
    const store = new TaskStore(db, { log: new LogSignal(), pending: new LogSignal() });
    const dispatched = await store.dispatchMany(Array.from({ length: 20 }, (_, i) => ({ input: newTask({ toolName: "migrate", args: { i }, agentId: `agent-${i % 3}` }) })));
    for (const [i, outcome] of dispatched.entries()) {
      if (!outcome.ok) throw outcome.error;
      if (i % 2) await store.cancel(outcome.value.task.task_id, "stop");
    }
  } finally {
    await db.close();
  }
}

function readEvents(location: string) {
  const file = new BetterSqlite3(location, { readonly: true });
  try {
    return {
      rows: file.prepare("SELECT * FROM events ORDER BY sequence").all(),
      indexes: file.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name").pluck().all(),
      plan: file.prepare("EXPLAIN QUERY PLAN SELECT payload FROM events WHERE sequence > 5 ORDER BY sequence").all().map((r) => (r as { detail: string }).detail),
    };
  } finally {
    file.close();
  }
}

describe("events keyed by their rowid on SQLite (migration 2026-11-24T2200)", () => {
  it("keeps every event of a database written before it, and serves them after", async () => {
    const database = await freshDatabase("sqlite");
    let t: ReturnType<typeof withClients> | undefined;
    try {
      await databaseBefore(database.location);
      const before = readEvents(database.location);
      expect(before.rows).toHaveLength(30);
      expect(before.indexes).toEqual(["events_task_id", "sqlite_autoindex_events_1"]);

      // The server migrates the database as it starts.
      t = withClients(await startWith(database.location), database.location, async () => {});
      const after = readEvents(database.location);
      expect(after.rows).toEqual(before.rows);
      expect(after.indexes).toEqual(["events_task_id"]);
      expect(after.plan).toEqual(["SEARCH events USING INTEGER PRIMARY KEY (rowid>?)"]);

      const { tasks } = await t.tasks().listTasks({ pageSize: 100 });
      const served = await Promise.all(tasks.map((task) => t!.tasks().listTaskEvents({ taskId: task.taskId })));
      expect(served.flatMap((page) => page.events.map((e) => e.sequence)).sort((a, b) => Number(a - b))).toEqual(
        Array.from({ length: 30 }, (_, i) => BigInt(i + 1)),
      );
      // New events go on after the migrated ones.
      const { task } = await t.tasks().dispatchTask({ toolName: "migrate" });
      const { events: fresh } = await t.tasks().listTaskEvents({ taskId: task!.taskId });
      expect(fresh[0].sequence).toBe(31n);
    } finally {
      t?.close();
      await t?.server.close();
      await database.drop();
    }
  });
});
