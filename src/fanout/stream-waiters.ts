import { matchesFilter, type EventFilter, type LogEntry } from "../storage/event-log.js";

interface Waiter {
  filter: EventFilter;
  /** Only events after this sequence wake it. */
  position: number;
  wake(): void;
}

/**
 * Streams parked until an event they would send arrives. A new event wakes
 * only the streams whose filter it matches: waiters filtering by agent or
 * task are found through an index on that field, the rest are checked one by
 * one. Waking every stream at every commit (and letting each find it had
 * nothing to send) was most of what fan-out cost with many filtered streams.
 */
export class StreamWaiters {
  private readonly byAgent = new Map<string, Set<Waiter>>();
  private readonly byTask = new Map<string, Set<Waiter>>();
  private readonly others = new Set<Waiter>();

  /**
   * Resolves true at the first event after `position` matching `filter` that
   * `arrived` is given; false after timeoutMs, or when the signal aborts.
   */
  wait(position: number, filter: EventFilter, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    return new Promise((resolve) => {
      const set = this.setFor(filter);
      const done = (matched: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", aborted);
        set.delete(waiter);
        resolve(matched);
      };
      const waiter: Waiter = { filter, position, wake: () => done(true) };
      const aborted = () => done(false);
      const timer = setTimeout(aborted, timeoutMs);
      signal?.addEventListener("abort", aborted);
      if (signal?.aborted) return aborted();
      set.add(waiter);
    });
  }

  /** Wakes the waiters that any of these new events (in sequence order) matches. */
  arrived(entries: readonly LogEntry[]): void {
    if (entries.length === 0) return;
    for (const waiter of this.others) {
      if (entries.some((entry) => entry.sequence > waiter.position && matchesFilter(entry, waiter.filter))) waiter.wake();
    }
    for (const entry of entries) {
      wakeMatching(this.byAgent.get(entry.agentId), entry);
      wakeMatching(this.byTask.get(entry.taskId), entry);
    }
  }

  get count(): number {
    let n = this.others.size;
    for (const set of this.byAgent.values()) n += set.size;
    for (const set of this.byTask.values()) n += set.size;
    return n;
  }

  private setFor(filter: EventFilter): Set<Waiter> {
    const [index, key] = filter.agentId !== "" ? [this.byAgent, filter.agentId] : filter.taskId !== "" ? [this.byTask, filter.taskId] : [undefined, ""];
    if (!index) return this.others;
    let set = index.get(key);
    if (!set) {
      set = new IndexedSet(() => index.delete(key));
      index.set(key, set);
    }
    return set;
  }
}

function wakeMatching(waiters: Set<Waiter> | undefined, entry: LogEntry): void {
  if (!waiters) return;
  for (const waiter of waiters) {
    if (entry.sequence > waiter.position && matchesFilter(entry, waiter.filter)) waiter.wake();
  }
}

/** A set that leaves its index once empty, so idle agents cost nothing. */
class IndexedSet extends Set<Waiter> {
  constructor(private readonly onEmpty: () => void) {
    super();
  }

  override delete(waiter: Waiter): boolean {
    const deleted = super.delete(waiter);
    if (this.size === 0) this.onEmpty();
    return deleted;
  }
}
