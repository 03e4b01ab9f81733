import type { TaskRow } from "../storage/schema.js";

/** The delay before the retry that follows `attempt`: exponential backoff, capped. */
export function retryDelayMs(task: Pick<TaskRow, "retry_delay_ms" | "retry_backoff" | "max_retry_delay_ms">, attempt: number): number {
  const delay = task.retry_delay_ms * Math.pow(task.retry_backoff, Math.max(0, attempt - 1));
  return Math.min(task.max_retry_delay_ms, Math.round(delay));
}

/** Whether the failed attempt leaves retries: attempt 1 is the first run, so max_retries allows attempts up to max_retries + 1. */
export function canRetry(task: Pick<TaskRow, "attempt" | "max_retries">): boolean {
  return task.attempt <= task.max_retries;
}
