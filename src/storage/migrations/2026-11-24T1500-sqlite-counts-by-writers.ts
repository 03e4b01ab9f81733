import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

/**
 * On SQLite, TaskStore keeps task_counts itself, once per transaction, and
 * the row triggers go: each fired on every insert, delete and status change
 * and cost ~35 us there (69 vs 34 us to insert a task, 64 vs 27 to claim
 * one; bare better-sqlite3, 10,000 rows), a third of a task's storage time.
 * SQLite's writers are this one process, so none is left uncounted.
 *
 * PostgreSQL keeps its triggers: replicas share its database, and during a
 * rolling upgrade some of them run code older than this, which counts nothing.
 */
export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  if (dialect !== "sqlite") return;
  await db.transaction().execute(async (trx) => {
    for (const trigger of ["task_counts_insert", "task_counts_delete", "task_counts_update"]) {
      await sql`DROP TRIGGER ${sql.id(trigger)}`.execute(trx);
    }
  });
}
