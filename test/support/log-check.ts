import { expect } from "vitest";
import { TaskStatus, type TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import { matchesFilter, type EventFilter } from "../../src/storage/event-log.js";
import type { Received } from "./streams.js";

/** A subscriber under test: its filter, and what it received. */
export interface Subscriber {
  name: string;
  filter: EventFilter;
  received: Received;
}

/** A filter with only the given fields set. */
export function eventFilter(filter: Partial<EventFilter>): EventFilter {
  return { agentId: "", runId: "", threadId: "", resourceId: "", taskId: "", toolName: "", ...filter };
}

/**
 * Checks a subscriber against the log: the snapshot is exactly the running
 * tasks at S, and the events are exactly the matching log events after S,
 * in order, each once.
 */
export function checkAgainstLog(s: Subscriber, log: TaskEvent[]) {
  const S = s.received.snapshotSequence ?? 0n;
  const expected = log.filter((e) => e.sequence > S && matchesFilter(e, s.filter)).map((e) => e.sequence);
  const got = s.received.events.map((e) => e.sequence);
  expect(got, `${s.name}: events after S=${S}`).toEqual(expected);
  for (const e of s.received.events) expect(matchesFilter(e, s.filter), `${s.name}: filter`).toBe(true);
  if (s.received.snapshotSequence !== undefined) {
    const runningAtS = new Map<string, TaskStatus>();
    for (const e of log) if (e.sequence <= S && matchesFilter(e, s.filter)) runningAtS.set(e.taskId, e.status);
    const expectedSnapshot = [...runningAtS].filter(([, status]) => status === TaskStatus.RUNNING).map(([id]) => id).sort();
    expect(s.received.snapshot.map((e) => e.taskId).sort(), `${s.name}: snapshot at ${S}`).toEqual(expectedSnapshot);
  }
}

