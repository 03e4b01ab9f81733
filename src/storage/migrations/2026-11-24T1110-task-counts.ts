import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

/**
 * task_counts: how many tasks have each status, kept exact by triggers on
 * tasks, so that a list filtered by status alone (or not at all) reports
 * total_size without counting its rows (COUNT(*) over 890k COMPLETED tasks
 * took 15-30 ms on SQLite, 80-110 ms on PostgreSQL).
 *
 * A task's count is the sum of its status's rows. SQLite has one writer at a
 * time, so it keeps one row per status and updates it. PostgreSQL writers run
 * concurrently: updating one row per status would queue every writer behind
 * that row's lock until commit (and two transactions moving tasks between
 * statuses in opposite directions would deadlock), so each change inserts
 * rows of +n / -n instead, which never wait on each other, and now and then a
 * writer folds the rows into one per status.
 */
export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  if (dialect === "postgres") await postgres(db);
  else await db.transaction().execute((trx) => sqlite(trx));
}

async function sqlite(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE TABLE task_counts (status INTEGER PRIMARY KEY, n INTEGER NOT NULL)`.execute(db);
  const add = (status: string) =>
    `INSERT INTO task_counts (status, n) VALUES (${status}, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;`;
  const remove = (status: string) => `UPDATE task_counts SET n = n - 1 WHERE status = ${status};`;
  await sql.raw(`CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN ${add("NEW.status")} END`).execute(db);
  await sql.raw(`CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN ${remove("OLD.status")} END`).execute(db);
  await sql
    .raw(
      `CREATE TRIGGER task_counts_update AFTER UPDATE OF status ON tasks WHEN OLD.status IS NOT NEW.status
       BEGIN ${remove("OLD.status")} ${add("NEW.status")} END`,
    )
    .execute(db);
  await sql`INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status`.execute(db);
}

/** Rows added between two folds. */
const FOLD_EVERY = 1024;
/** The advisory lock a fold holds: one fold at a time. */
const FOLD_LOCK = 0x7461736b; // "task"

async function postgres(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE TABLE task_counts (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, status INTEGER NOT NULL, n BIGINT NOT NULL)`.execute(db);
  await sql`CREATE INDEX task_counts_status ON task_counts (status, n)`.execute(db);

  // Folds all rows into one per status. Only under READ COMMITTED, where the
  // DELETE sees every row committed so far (a REPEATABLE READ writer could
  // meet rows an earlier fold deleted after its snapshot, and fail), and one
  // fold at a time; a writer that cannot fold now leaves it to the next.
  await sql
    .raw(
      `CREATE FUNCTION task_counts_fold() RETURNS void LANGUAGE plpgsql AS $$
       BEGIN
         IF current_setting('transaction_isolation') = 'read committed' AND pg_try_advisory_xact_lock(${FOLD_LOCK}) THEN
           WITH gone AS (DELETE FROM task_counts RETURNING status, n)
           INSERT INTO task_counts (status, n) SELECT status, sum(n) FROM gone GROUP BY status HAVING sum(n) <> 0;
         END IF;
       END $$`,
    )
    .execute(db);
  // Inserts the rows of one change; the change whose rows take an id that is
  // a multiple of FOLD_EVERY folds.
  const changed = (rows: string) => `
       DECLARE fold BOOLEAN;
       BEGIN
         WITH added AS (INSERT INTO task_counts (status, n) ${rows} RETURNING id)
         SELECT bool_or(id % ${FOLD_EVERY} = 0) INTO fold FROM added;
         IF fold THEN PERFORM task_counts_fold(); END IF;
         RETURN NULL;
       END`;
  // Statement triggers for inserts and deletes: one row per status a statement touched.
  await sql
    .raw(
      `CREATE FUNCTION task_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
       ${changed("SELECT status, count(*) FROM inserted GROUP BY status")} $$`,
    )
    .execute(db);
  await sql
    .raw(
      `CREATE FUNCTION task_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
       ${changed("SELECT status, -count(*) FROM deleted GROUP BY status")} $$`,
    )
    .execute(db);
  // A row trigger for status changes: only it can name a column and skip other updates.
  await sql
    .raw(
      `CREATE FUNCTION task_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
       ${changed("VALUES (OLD.status, -1), (NEW.status, 1)")} $$`,
    )
    .execute(db);
  // Creating the triggers locks tasks against writers until this migration
  // commits, and waits for the writers before it: the backfill below then
  // counts every task, and every later change goes through the triggers.
  await sql`CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION task_counts_insert()`.execute(db);
  await sql`CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION task_counts_delete()`.execute(db);
  await sql`CREATE TRIGGER task_counts_update AFTER UPDATE OF status ON tasks FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION task_counts_update()`.execute(db);
  await sql`INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status`.execute(db);
}
