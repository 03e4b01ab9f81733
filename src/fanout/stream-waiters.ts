import { matchesFilter, type EventFilter, type LogEntry } from "../storage/event-log.js";

/** A stream following the tail live: handed each new event it would send, at once. */
export interface Subscriber {
  filter: EventFilter;
  /** Only events after this sequence are delivered. */
  position: number;
  /** The new events that match, in sequence order; called synchronously as the tail reads them. */
  deliver(entries: readonly LogEntry[]): void;
}

/**
 * Streams caught up with the tail. A new batch of events goes to the streams
 * whose filter matches, synchronously and once per stream per batch: there is
 * no wake-up to schedule and nothing for a stream to read. Subscribers
 * filtering by agent or task are found through an index on that field, the
 * rest are checked one by one. Waking every stream at every commit (and
 * letting each find it had nothing to send) was most of what fan-out cost with
 * many filtered streams.
 */
export class StreamWaiters {
  private readonly byAgent = new Map<string, Set<Subscriber>>();
  private readonly byTask = new Map<string, Set<Subscriber>>();
  private readonly others = new Set<Subscriber>();

  /** Adds a subscriber until the returned function removes it. */
  subscribe(subscriber: Subscriber): () => void {
    const set = this.setFor(subscriber.filter);
    set.add(subscriber);
    return () => void set.delete(subscriber);
  }

  /** Delivers new events (in sequence order) to the subscribers they match. */
  arrived(entries: readonly LogEntry[]): void {
    if (entries.length === 0) return;
    for (const subscriber of this.others) {
      const matching = entries.filter((entry) => entry.sequence > subscriber.position && matchesFilter(entry, subscriber.filter));
      // Every unfiltered stream gets the batch itself, so what it sends can be shared.
      if (matching.length > 0) subscriber.deliver(matching.length === entries.length ? entries : matching);
    }
    const indexed = new Map<Subscriber, LogEntry[]>();
    for (const entry of entries) {
      collect(indexed, this.byAgent.get(entry.agentId), entry);
      collect(indexed, this.byTask.get(entry.taskId), entry);
    }
    for (const [subscriber, matching] of indexed) subscriber.deliver(matching);
  }

  get count(): number {
    let n = this.others.size;
    for (const set of this.byAgent.values()) n += set.size;
    for (const set of this.byTask.values()) n += set.size;
    return n;
  }

  private setFor(filter: EventFilter): Set<Subscriber> {
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

/** Adds the entry to the matching list of each subscriber in `set` it matches. */
function collect(lists: Map<Subscriber, LogEntry[]>, set: Set<Subscriber> | undefined, entry: LogEntry): void {
  if (!set) return;
  for (const subscriber of set) {
    if (entry.sequence <= subscriber.position || !matchesFilter(entry, subscriber.filter)) continue;
    const list = lists.get(subscriber);
    if (list) list.push(entry);
    else lists.set(subscriber, [entry]);
  }
}

/** A set that leaves its index once empty, so idle agents cost nothing. */
class IndexedSet extends Set<Subscriber> {
  constructor(private readonly onEmpty: () => void) {
    super();
  }

  override delete(subscriber: Subscriber): boolean {
    const deleted = super.delete(subscriber);
    if (deleted && this.size === 0) this.onEmpty();
    return deleted;
  }
}
