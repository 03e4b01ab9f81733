import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

/**
 * The indexes replaced, and what replaces each: the same columns, but only
 * the rows in the statuses its readers ask for. Status stays their first
 * column: without statistics, SQLite's planner preferred another index on
 * status to a partial index without it.
 */
const REPLACED = [
  // Not tasks_claim (status, tool_name, create_time, task_id): ListTasks
  // counts a tool's tasks in some statuses through it (a tool's FAILED and
  // TIMED_OUT: 2.9 ms on 1,000,000 tasks; 132 ms through the tool's filter
  // index once it held only pending tasks).
  // The sweeper: running tasks whose lease expired or whose attempt timed out.
  { old: "tasks_status_lease_expire_time", name: "tasks_running_lease_expire_time", columns: "status, lease_expire_time", where: "status = 2" },
  { old: "tasks_status_timeout_time", name: "tasks_running_timeout_time", columns: "status, timeout_time", where: "status = 2" },
  // Concurrency limits: pending and running tasks by agent.
  { old: "tasks_running_agent", name: "tasks_active_agent", columns: "status, agent_id", where: "status IN (1, 2)" },
];

/**
 * The execution indexes become partial: each holds only the pending or
 * running tasks its readers look for, not every task ever stored, most of
 * them finished. A task leaves them when it finishes and is not rewritten in
 * them at each change of status. Queries must state the index's condition in
 * the same words (SQLite proves a partial index usable only from a literal
 * term).
 */
export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  const run = async (k: Kysely<unknown>) => {
    for (const index of REPLACED) {
      await sql`CREATE INDEX ${sql.id(index.name)} ON tasks (${sql.raw(index.columns)}) WHERE ${sql.raw(index.where)}`.execute(k);
      await k.schema.dropIndex(index.old).execute();
    }
    if (dialect === "sqlite") {
      const analyzed = await sql`SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'`.execute(k);
      if (analyzed.rows.length > 0) for (const index of REPLACED) await sql`ANALYZE ${sql.id(index.name)}`.execute(k);
    }
  };
  // PostgreSQL runs each migration in a transaction of its own; SQLite's is ours.
  if (dialect === "postgres") await run(db);
  else await db.transaction().execute(run);
}
