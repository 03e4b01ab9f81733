import { closeSync, fsyncSync, openSync, statSync } from "node:fs";
import { sql, type Kysely } from "kysely";
import { isPostgresUrl, openDatabase, type Db } from "../../src/storage/connect.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import type { Database, TaskRow } from "../../src/storage/schema.js";
import { taskGenerator } from "./data.js";
import { recountTasks } from "../../src/storage/status-counts.js";

export interface SeedRequest {
  location: string;
  tasks: number;
  nowMs: number;
}

export interface SeedResult {
  seedMs: number;
  analyzeMs: number;
  /** SQLite: writing the file's pages to disk (fsync) after seeding. */
  flushMs?: number;
  /** Bytes on disk: the SQLite file, or the PostgreSQL database. */
  dbBytes: number;
  /** PostgreSQL: the tasks table with its indexes. */
  tasksBytes?: number;
  /** PostgreSQL: the share of the table's pages the visibility map marks all-visible. */
  allVisible?: number;
  /** Every (tasks / 10,000)th task id, for GetTask. */
  sampleIds: string[];
  insertStatement: string;
}

const COLUMNS = [
  "task_id", "request_id", "status", "tool_name", "tool_call_id", "agent_id", "run_id", "thread_id", "resource_id",
  "args", "result", "error", "create_time", "start_time", "suspend_time", "complete_time", "attempt", "max_retries",
  "timeout_ms", "sequence", "cancel_requested", "cancel_reason", "suspend_payload", "resume_data", "worker_id",
  "lease_id", "lease_expire_time", "ready_time", "timeout_time", "retry_delay_ms", "retry_backoff", "max_retry_delay_ms",
] as const satisfies readonly (keyof TaskRow)[];

/** Fails to compile when the schema gains a column the seeding does not fill. */
const EVERY_COLUMN: Exclude<keyof TaskRow, (typeof COLUMNS)[number]> extends never ? true : never = true;
void EVERY_COLUMN;

const PG_TYPES: Partial<Record<keyof TaskRow, string>> = {
  status: "integer", attempt: "integer", max_retries: "integer", cancel_requested: "integer",
  create_time: "bigint", start_time: "bigint", suspend_time: "bigint", complete_time: "bigint",
  timeout_ms: "bigint", sequence: "bigint", lease_expire_time: "bigint",
  ready_time: "bigint", timeout_time: "bigint", retry_delay_ms: "bigint", retry_backoff: "real", max_retry_delay_ms: "bigint",
};

/** SQLite: 1000 rows x 32 columns stays under its 32,766 bound parameters; 5 statements per transaction. */
const SQLITE_ROWS_PER_INSERT = 1000;
const SQLITE_ROWS_PER_TRANSACTION = 5000;
/** PostgreSQL: one INSERT ... SELECT FROM unnest(32 arrays) per 5000 rows, each its own transaction. */
const PG_ROWS_PER_INSERT = 5000;

/** Migrates a fresh database and fills `tasks` straight with rows, then gathers statistics. */
export async function seedDatabase(request: SeedRequest, progress: (done: number) => void = () => {}): Promise<SeedResult> {
  const result = await seedAndAnalyze(request, progress);
  if (isPostgresUrl(request.location)) return result;
  // Seeding without a journal or syncs leaves the file's pages to the kernel to
  // write back whenever it likes, possibly while the cases are timed: write them
  // now. (On the 2-core machine this took 0.0 s: the kernel had already written
  // them; the first case's slowness was the server's warm-up, see measure-child.)
  const flushStarted = performance.now();
  const fd = openSync(request.location, "r+");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { ...result, flushMs: performance.now() - flushStarted };
}

async function seedAndAnalyze(request: SeedRequest, progress: (done: number) => void): Promise<SeedResult> {
  const db = openDatabase(request.location, { poolSize: 2 });
  try {
    await migrateToLatest(db);
    if (db.dialect === "sqlite") {
      // While seeding only: a big page cache keeps the 15 indexes' random inserts in memory, and
      // without a journal each commit writes its pages once (WAL wrote them twice). The server
      // opens the file in WAL mode again, as always.
      await sql`PRAGMA cache_size = -1048576`.execute(db.kysely);
      await sql`PRAGMA synchronous = OFF`.execute(db.kysely);
      await sql`PRAGMA journal_mode = OFF`.execute(db.kysely);
    } else {
      // No autovacuum while seeding: an autoanalyze running meanwhile holds back the
      // VACUUM below from marking the last-inserted pages all-visible.
      await sql`ALTER TABLE tasks SET (autovacuum_enabled = false)`.execute(db.kysely);
    }
    const generator = taskGenerator(request.tasks, request.nowMs);
    const every = Math.max(1, Math.floor(request.tasks / 10_000));
    const sampleIds: string[] = [];
    const started = performance.now();
    const batch = db.dialect === "sqlite" ? SQLITE_ROWS_PER_TRANSACTION : PG_ROWS_PER_INSERT;
    let done = 0;
    while (done < request.tasks) {
      const rows = generator.next(batch);
      rows.forEach((row, k) => (done + k) % every === 0 && sampleIds.push(row.task_id));
      if (db.dialect === "sqlite") await insertSqlite(db.kysely, rows);
      else await insertPostgres(db.kysely, rows);
      done += rows.length;
      progress(done);
    }
    // Events are not seeded: the log reads as trimmed through every task's last event.
    await db.kysely
      .updateTable("log_head")
      .set({ last_sequence: generator.lastSequence(), trimmed_through: generator.lastSequence() })
      .where("id", "=", 1)
      .execute();
    // Rows went in without TaskStore, which keeps SQLite's task_counts.
    await recountTasks(db);
    const seedMs = performance.now() - started;

    const analyzeStarted = performance.now();
    if (db.dialect === "sqlite") {
      await sql`ANALYZE`.execute(db.kysely);
      await sql`PRAGMA journal_mode = WAL`.execute(db.kysely);
    } else {
      // Autovacuum would get to a table this size on its own, at a moment of its choosing;
      // do it now so the visibility map (index-only scans, COUNT) is settled before measuring.
      // The server runs with synchronous_commit=off, as the tests run it, and VACUUM marks no
      // page all-visible while the commits of its rows are not yet flushed: flush first.
      await sql`ALTER TABLE tasks RESET (autovacuum_enabled)`.execute(db.kysely);
      for (let attempt = 0; attempt < 3; attempt++) {
        await sql`CHECKPOINT`.execute(db.kysely);
        await sql`VACUUM (ANALYZE) tasks`.execute(db.kysely);
        if ((await allVisible(db.kysely)) > 0.99) break;
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      await sql`ANALYZE`.execute(db.kysely);
    }
    const analyzeMs = performance.now() - analyzeStarted;
    return {
      seedMs,
      analyzeMs,
      ...(await sizes(db, request.location)),
      sampleIds,
      insertStatement:
        db.dialect === "sqlite"
          ? `multi-row INSERT of ${SQLITE_ROWS_PER_INSERT} rows, ${SQLITE_ROWS_PER_TRANSACTION} rows per transaction, no journal while seeding`
          : `INSERT ... SELECT FROM unnest(32 arrays) of ${PG_ROWS_PER_INSERT} rows per statement and transaction`,
    };
  } finally {
    await db.close();
  }
}

async function insertSqlite(k: Kysely<Database>, rows: TaskRow[]): Promise<void> {
  await k.transaction().execute(async (trx) => {
    for (let from = 0; from < rows.length; from += SQLITE_ROWS_PER_INSERT) {
      await trx.insertInto("tasks").values(rows.slice(from, from + SQLITE_ROWS_PER_INSERT)).execute();
    }
  });
}

/**
 * A 5000-row VALUES list would need 160,000 bound parameters, over PostgreSQL's
 * 65,535; 32 array parameters unnested into rows insert any number in one statement.
 */
async function insertPostgres(k: Kysely<Database>, rows: TaskRow[]): Promise<void> {
  const arrays = COLUMNS.map((column) => sql`${rows.map((row) => row[column])}::${sql.raw(PG_TYPES[column] ?? "text")}[]`);
  await sql`INSERT INTO tasks (${sql.join(COLUMNS.map((c) => sql.ref(c)))}) SELECT * FROM unnest(${sql.join(arrays)})`.execute(k);
}

async function sizes(db: Db, location: string): Promise<{ dbBytes: number; tasksBytes?: number; allVisible?: number }> {
  if (db.dialect === "sqlite") {
    const wal = (() => {
      try {
        return statSync(`${location}-wal`).size;
      } catch {
        return 0;
      }
    })();
    return { dbBytes: statSync(location).size + wal };
  }
  const { rows } = await sql<{ db: string; tasks: string }>`
    SELECT pg_database_size(current_database()) AS db, pg_total_relation_size('tasks') AS tasks`.execute(db.kysely);
  return { dbBytes: Number(rows[0].db), tasksBytes: Number(rows[0].tasks), allVisible: await allVisible(db.kysely) };
}

/** PostgreSQL: the share of the tasks table's pages the visibility map marks all-visible. */
async function allVisible(k: Kysely<Database>): Promise<number> {
  const { rows } = await sql<{ visible: number }>`
    SELECT relallvisible::float / greatest(relpages, 1) AS visible FROM pg_class WHERE relname = 'tasks'`.execute(k);
  return Number(rows[0].visible);
}
