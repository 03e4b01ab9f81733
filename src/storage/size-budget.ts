import type { TaskRow } from "./schema.js";

/**
 * What one response may carry, by the stored size of its items. Responses
 * must stay under gRPC's 4 MiB message limit; protobuf encoding of JSON-like
 * data can be larger than its JSON text, hence the margin.
 */
export const RESPONSE_BUDGET_BYTES = 2 * 1024 * 1024;

/** The longest prefix of `items` within the budget, and never less than one item. */
export function fitBudget<T>(items: T[], sizeOf: (item: T) => number, budget = RESPONSE_BUDGET_BYTES): T[] {
  let used = 0;
  for (let i = 0; i < items.length; i++) {
    used += sizeOf(items[i]);
    if (used > budget && i > 0) return items.slice(0, i);
  }
  return items;
}

/** A task's stored size: its JSON columns, which dominate, plus a margin for the rest. */
export function taskSize(task: TaskRow): number {
  return 512 + task.args.length + (task.result?.length ?? 0) + (task.error?.length ?? 0) + (task.suspend_payload?.length ?? 0) + (task.resume_data?.length ?? 0);
}
