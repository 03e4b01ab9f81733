import { sql, type Kysely } from "kysely";
import type { DialectName } from "../connect.js";

// Frozen: a later schema change is a new migration, never an edit here.

const TIME_COLUMNS = ["create_time", "start_time", "complete_time"] as const;
const FILTER_COLUMNS = ["agent_id", "run_id", "thread_id", "resource_id", "tool_name"] as const;

export async function up(db: Kysely<unknown>, dialect: DialectName): Promise<void> {
  await db.schema
    .createTable("tasks")
    .addColumn("task_id", "text", (c) => c.primaryKey())
    .addColumn("request_id", "text")
    .addColumn("status", "integer", (c) => c.notNull())
    .addColumn("tool_name", "text", (c) => c.notNull())
    .addColumn("tool_call_id", "text", (c) => c.notNull())
    .addColumn("agent_id", "text", (c) => c.notNull())
    .addColumn("run_id", "text", (c) => c.notNull())
    .addColumn("thread_id", "text", (c) => c.notNull())
    .addColumn("resource_id", "text", (c) => c.notNull())
    .addColumn("args", "text", (c) => c.notNull())
    .addColumn("result", "text")
    .addColumn("error", "text")
    .addColumn("create_time", "bigint", (c) => c.notNull())
    .addColumn("start_time", "bigint", (c) => c.notNull())
    .addColumn("suspend_time", "bigint", (c) => c.notNull())
    .addColumn("complete_time", "bigint", (c) => c.notNull())
    .addColumn("attempt", "integer", (c) => c.notNull())
    .addColumn("max_retries", "integer", (c) => c.notNull())
    .addColumn("timeout_ms", "bigint", (c) => c.notNull())
    .addColumn("sequence", "bigint", (c) => c.notNull())
    .addColumn("cancel_requested", "integer", (c) => c.notNull())
    .addColumn("cancel_reason", "text", (c) => c.notNull())
    .addColumn("suspend_payload", "text")
    .addColumn("resume_data", "text")
    .addColumn("worker_id", "text", (c) => c.notNull())
    .addColumn("lease_id", "text", (c) => c.notNull())
    .addColumn("lease_expire_time", "bigint", (c) => c.notNull())
    .execute();

  // Idempotent dispatch: one task per request_id, and per agent's tool call.
  await db.schema.createIndex("tasks_request_id").on("tasks").column("request_id").unique().execute();
  await db.schema
    .createIndex("tasks_agent_tool_call")
    .on("tasks")
    .columns(["agent_id", "tool_call_id"])
    .unique()
    .where(sql.ref("tool_call_id"), "<>", "")
    .execute();
  await db.schema.createIndex("tasks_tool_call_id").on("tasks").column("tool_call_id").execute();

  // Keyset paging: every list order is (time column, task_id).
  for (const time of TIME_COLUMNS) {
    await db.schema.createIndex(`tasks_${time}`).on("tasks").columns([time, "task_id"]).execute();
    await db.schema.createIndex(`tasks_status_${time}`).on("tasks").columns(["status", time, "task_id"]).execute();
  }
  for (const column of FILTER_COLUMNS) {
    await db.schema.createIndex(`tasks_${column}_create_time`).on("tasks").columns([column, "create_time", "task_id"]).execute();
  }
  // Claims take the oldest pending task of the worker's tools.
  await db.schema.createIndex("tasks_claim").on("tasks").columns(["status", "tool_name", "create_time", "task_id"]).execute();

  await db.schema
    .createTable("events")
    .addColumn("sequence", "bigint", (c) => c.primaryKey())
    .addColumn("task_id", "text", (c) => c.notNull())
    .addColumn("tool_name", "text", (c) => c.notNull())
    .addColumn("tool_call_id", "text", (c) => c.notNull())
    .addColumn("agent_id", "text", (c) => c.notNull())
    .addColumn("run_id", "text", (c) => c.notNull())
    .addColumn("thread_id", "text", (c) => c.notNull())
    .addColumn("resource_id", "text", (c) => c.notNull())
    .addColumn("kind", "text", (c) => c.notNull())
    .addColumn("event_time", "bigint", (c) => c.notNull())
    .addColumn("payload", dialect === "postgres" ? "bytea" : "blob", (c) => c.notNull())
    .execute();
  await db.schema.createIndex("events_task_id").on("events").columns(["task_id", "sequence"]).execute();

  await db.schema
    .createTable("log_head")
    .addColumn("id", "integer", (c) => c.primaryKey())
    .addColumn("last_sequence", "bigint", (c) => c.notNull())
    .addColumn("trimmed_through", "bigint", (c) => c.notNull())
    .execute();
  await db.insertInto("log_head" as never).values({ id: 1, last_sequence: 0, trimmed_through: 0 } as never).execute();
}
