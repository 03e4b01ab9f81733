/**
 * The one description of the database schema, shared by both dialects.
 *
 * Times are epoch milliseconds, and 0 stands for "not set", so that keyset
 * paging on a time column never meets a NULL. JSON columns hold protobuf JSON.
 */
export interface Database {
  tasks: TaskRow;
  events: EventRow;
  log_head: LogHeadRow;
  task_counts: TaskCountRow;
  task_hour_counts: TaskHourCountRow;
}

export interface TaskRow {
  task_id: string;
  /** The dispatcher's idempotency key, or null. */
  request_id: string | null;
  /** A TaskStatus enum number. */
  status: number;
  tool_name: string;
  tool_call_id: string;
  agent_id: string;
  run_id: string;
  thread_id: string;
  resource_id: string;
  /** JSON object. */
  args: string;
  /** JSON value, or null. */
  result: string | null;
  /** TaskError as JSON, or null. */
  error: string | null;
  create_time: number;
  start_time: number;
  suspend_time: number;
  complete_time: number;
  attempt: number;
  max_retries: number;
  timeout_ms: number;
  /** Sequence of the task's last event. */
  sequence: number;
  /** 1 once cancel was requested while the task ran. */
  cancel_requested: number;
  /** Why the task was cancelled, as CancelTask gave it. */
  cancel_reason: string;
  /** JSON value, or null. */
  suspend_payload: string | null;
  /** JSON value, or null. */
  resume_data: string | null;
  worker_id: string;
  /** The current (or last) lease; fencing compares against it. */
  lease_id: string;
  lease_expire_time: number;
  /** A pending task is claimable from this time on (a retry waits out its delay). */
  ready_time: number;
  /** When the running attempt times out; 0 when not running. */
  timeout_time: number;
  /** Retry policy: first delay, its growth per attempt, and its cap. */
  retry_delay_ms: number;
  retry_backoff: number;
  max_retry_delay_ms: number;
}

/**
 * The append-only event log. The identity columns repeat the task's so that
 * streams filter the log without a join, and so that events outlive a row.
 */
export interface EventRow {
  sequence: number;
  task_id: string;
  tool_name: string;
  tool_call_id: string;
  agent_id: string;
  run_id: string;
  thread_id: string;
  resource_id: string;
  /** The TaskEvent oneof case: "running", "output", ... */
  kind: string;
  event_time: number;
  /** The whole TaskEvent, binary-encoded once at append time. */
  payload: Uint8Array;
}

/** A single row (id 1): the log's bounds. */
export interface LogHeadRow {
  id: number;
  /** The last sequence handed out. */
  last_sequence: number;
  /**
   * Retention may have deleted events up to here; every event after it is
   * still held. A stream cursor older than this has expired.
   */
  trimmed_through: number;
}

/**
 * How many tasks have each status: the sum of n over a status's rows, kept
 * exact by TaskStore on SQLite (one row per status) and by triggers on
 * PostgreSQL (rows of +n / -n, folded now and then).
 */
export interface TaskCountRow {
  status: number;
  n: number | string;
}

/** SQLite only: how many tasks have a status and a time column's value in an hour (ms / 3,600,000). */
export interface TaskHourCountRow {
  time_column: "create_time" | "start_time" | "complete_time";
  hour: number;
  status: number;
  n: number;
}
