import BetterSqlite3 from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { freshDatabase, startWith, withClients } from "./support/test-server.js";

/** The events table as the initial migration made it on SQLite: its sequence an index beside the rowid. */
const OLD_EVENTS_TABLE = `CREATE TABLE "events" ("sequence" bigint primary key, "task_id" text not null, "tool_name" text not null,
  "tool_call_id" text not null, "agent_id" text not null, "run_id" text not null, "thread_id" text not null,
  "resource_id" text not null, "kind" text not null, "event_time" bigint not null, "payload" blob not null)`;

/** Puts a database back as it was before the migration: the old table, with the same rows, and the migration unrecorded. */
function undoMigration(location: string): void {
  const file = new BetterSqlite3(location);
  try {
    file.transaction(() => {
      file.exec(`ALTER TABLE events RENAME TO events_new; ${OLD_EVENTS_TABLE};
        INSERT INTO events SELECT * FROM events_new; DROP TABLE events_new;
        CREATE INDEX "events_task_id" on "events" ("task_id", "sequence");
        DELETE FROM kysely_migration WHERE name = '2026-11-24T2200-sqlite-events-rowid'`);
    })();
  } finally {
    file.close();
  }
}

function eventsSchema(location: string) {
  const file = new BetterSqlite3(location, { readonly: true });
  try {
    return {
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
    let t = withClients(await startWith(database.location), database.location, async () => {});
    try {
      for (let i = 0; i < 20; i++) {
        const { task } = await t.tasks().dispatchTask({ toolName: "migrate", agentId: `agent-${i % 3}` });
        if (i % 2) await t.tasks().cancelTask({ taskId: task!.taskId });
      }
      const before = await t.tasks().listTasks({ pageSize: 100 });
      const logBefore = await Promise.all(before.tasks.map((task) => t.tasks().listTaskEvents({ taskId: task.taskId })));
      await t.server.close();

      undoMigration(database.location);
      expect(eventsSchema(database.location).indexes).toEqual(["events_task_id", "sqlite_autoindex_events_1"]);

      t = withClients(await startWith(database.location), database.location, async () => {});
      expect(eventsSchema(database.location)).toEqual({
        indexes: ["events_task_id"],
        plan: ["SEARCH events USING INTEGER PRIMARY KEY (rowid>?)"],
      });
      const after = await t.tasks().listTasks({ pageSize: 100 });
      expect(after.tasks).toEqual(before.tasks);
      const logAfter = await Promise.all(after.tasks.map((task) => t.tasks().listTaskEvents({ taskId: task.taskId })));
      expect(logAfter).toEqual(logBefore);
      expect(logAfter.flatMap((page) => page.events)).toHaveLength(30);
      // New events go on after the migrated ones.
      const { task } = await t.tasks().dispatchTask({ toolName: "migrate" });
      const { events: fresh } = await t.tasks().listTaskEvents({ taskId: task!.taskId });
      expect(fresh[0].sequence).toBe(31n);
    } finally {
      await t.close();
      await t.server.close();
      await database.drop();
    }
  });
});
