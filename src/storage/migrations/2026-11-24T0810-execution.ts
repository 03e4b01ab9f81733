import type { Kysely } from "kysely";

// Frozen: a later schema change is a new migration, never an edit here.

/** Retries with backoff, attempt timeouts, and the indexes the sweeper and retention read. */
export async function up(db: Kysely<unknown>): Promise<void> {
  const tasks = db.schema.alterTable("tasks");
  // A pending task is claimable once ready_time has passed: a retry waits out its delay.
  await tasks.addColumn("ready_time", "bigint", (c) => c.notNull().defaultTo(0)).execute();
  // When the running attempt times out: start_time + timeout_ms, 0 when not running.
  await tasks.addColumn("timeout_time", "bigint", (c) => c.notNull().defaultTo(0)).execute();
  await tasks.addColumn("retry_delay_ms", "bigint", (c) => c.notNull().defaultTo(1000)).execute();
  await tasks.addColumn("retry_backoff", "real", (c) => c.notNull().defaultTo(2)).execute();
  await tasks.addColumn("max_retry_delay_ms", "bigint", (c) => c.notNull().defaultTo(60000)).execute();
  await db.schema.createIndex("tasks_status_lease_expire_time").on("tasks").columns(["status", "lease_expire_time"]).execute();
  await db.schema.createIndex("tasks_status_timeout_time").on("tasks").columns(["status", "timeout_time"]).execute();
  await db.schema.createIndex("tasks_running_agent").on("tasks").columns(["status", "agent_id"]).execute();
}
