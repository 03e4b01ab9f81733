import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

/**
 * events (SQLite): the sequence becomes the table's rowid. Declared `bigint
 * primary key`, it was an index of its own beside the rowid, so every event
 * written went into two B-trees, and every read by sequence (the tail, a
 * replay) looked each event up twice. As `INTEGER PRIMARY KEY` it is the
 * rowid itself. PostgreSQL's bigint primary key is already the one index.
 */
export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  if (dialect !== "sqlite") return;
  await db.transaction().execute(async (trx) => {
    await sql`CREATE TABLE events_by_rowid (
      sequence INTEGER PRIMARY KEY, task_id TEXT NOT NULL, tool_name TEXT NOT NULL, tool_call_id TEXT NOT NULL,
      agent_id TEXT NOT NULL, run_id TEXT NOT NULL, thread_id TEXT NOT NULL, resource_id TEXT NOT NULL,
      kind TEXT NOT NULL, event_time INTEGER NOT NULL, payload BLOB NOT NULL)`.execute(trx);
    await sql`INSERT INTO events_by_rowid SELECT sequence, task_id, tool_name, tool_call_id, agent_id, run_id,
      thread_id, resource_id, kind, event_time, payload FROM events ORDER BY sequence`.execute(trx);
    await sql`DROP TABLE events`.execute(trx);
    await sql`ALTER TABLE events_by_rowid RENAME TO events`.execute(trx);
    await sql`CREATE INDEX events_task_id ON events (task_id, sequence)`.execute(trx);
  });
}
