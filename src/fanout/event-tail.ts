import { Histogram } from "../histogram.js";
import type { Db } from "../storage/connect.js";
import { logBounds, matchesFilter, readTail, type EventFilter, type LogEntry } from "../storage/event-log.js";
import type { LogSignal } from "./log-signal.js";
import { StreamWaiters, type Subscriber } from "./stream-waiters.js";

export interface EventTailOptions {
  /** How many recent events stay in memory for subscribers to read. */
  windowSize: number;
  /** How many events one log read fetches. */
  readBatch: number;
  /**
   * How often to look at the log's head without being woken, to notice events
   * other processes committed. 0 turns polling off.
   */
  pollMs: number;
}

/** What a subscriber gets from the tail: the matching events, and how far they cover the log. */
export interface TailRead {
  events: LogEntry[];
  /** Every matching event with a sequence up to here is in `events` or was read before. */
  through: number;
}

/**
 * The one reader of the event log in this process. Woken when the log grows,
 * it reads the new events once, in sequence order, into a bounded window that
 * every stream reads and filters in memory: a wake-up costs one query however
 * many streams are open. A stream whose cursor fell out of the window (a slow
 * reader) reads the log itself until it catches up.
 */
export class EventTail {
  /** Events in (floor, head], in sequence order, as the log holds them: never decoded here. */
  private window: LogEntry[] = [];
  private floor = 0;
  private head = 0;
  private readonly stop = new AbortController();
  private running?: Promise<void>;
  private readonly waiters = new StreamWaiters();
  /**
   * From an event's commit (its event_time: when its transaction began, by the
   * writer's clock) to the tail handing it to the streams caught up with the
   * log: the server's share of a live event's latency, per event.
   */
  readonly handOffLag = new Histogram([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]);

  constructor(
    private readonly db: Db,
    /** Wakes the tail when this process (or a poll) learns the log grew. */
    private readonly logSignal: LogSignal,
    private readonly options: EventTailOptions,
  ) {}

  /** Starts at the log's current head. */
  async start(): Promise<void> {
    const { last } = await logBounds(this.db.kysely);
    this.floor = this.head = last;
    this.logSignal.notify(last);
    this.running = this.follow();
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }

  /** The newest sequence the tail has read. */
  get lastSequence(): number {
    return this.head;
  }

  /**
   * Follows the log live from `position`, which must be caught up (at or past
   * the head): each batch the tail reads from now on hands `deliver` the
   * events after `position` that match `filter`, synchronously. Until the
   * returned function unsubscribes, the stream has been offered every event up
   * to the head.
   */
  subscribe(position: number, filter: EventFilter, deliver: Subscriber["deliver"]): () => void {
    if (position < this.head) throw new Error(`subscribe at ${position}, behind the tail's head ${this.head}`);
    return this.waiters.subscribe({ position, filter, deliver });
  }

  /** Streams following the tail live, for gauges and leak checks. */
  get waiterCount(): number {
    return this.waiters.count;
  }

  get windowLength(): number {
    return this.window.length;
  }

  /**
   * The events after `position` that match, up to `limit` scanned, or
   * undefined when the window no longer reaches back to `position`.
   */
  read(position: number, filter: EventFilter, limit: number): TailRead | undefined {
    if (position < this.floor) return undefined;
    // A stream can be ahead of the tail (its snapshot saw a commit the tail
    // has not read yet): it waits, and its cursor never moves back.
    if (position >= this.head) return { events: [], through: position };
    const start = this.indexAfter(position);
    const end = Math.min(this.window.length, start + limit);
    const events: LogEntry[] = [];
    for (let i = start; i < end; i++) {
      if (matchesFilter(this.window[i], filter)) events.push(this.window[i]);
    }
    return { events, through: end === this.window.length ? this.head : this.window[end - 1].sequence };
  }

  private async follow(): Promise<void> {
    while (!this.stop.signal.aborted) {
      try {
        if (this.logSignal.lastSequence > this.head) {
          await this.catchUp(this.logSignal.lastSequence);
          continue;
        }
        const polling = this.options.pollMs > 0;
        await this.logSignal.next(polling ? this.options.pollMs : 60_000, this.stop.signal);
        if (polling && this.logSignal.lastSequence <= this.head && !this.stop.signal.aborted) {
          this.logSignal.notify((await logBounds(this.db.kysely)).last);
        }
      } catch {
        // The database is unreachable: retry after a pause; streams keep
        // their cursors and resume from the log when it answers again.
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** Reads every event up to `target` into the window, waking streams after each batch. */
  private async catchUp(target: number): Promise<void> {
    while (this.head < target && !this.stop.signal.aborted) {
      const entries = await readTail(this.db, this.head, target, this.options.readBatch);
      this.window.push(...entries);
      const full = entries.length === this.options.readBatch;
      this.head = full ? entries[entries.length - 1].sequence : target;
      this.trim();
      this.waiters.arrived(entries);
      this.recordHandOff(entries);
    }
  }

  private recordHandOff(entries: readonly LogEntry[]): void {
    const now = Date.now();
    for (const entry of entries) this.handOffLag.observe(Math.max(0, now - entry.eventTime) / 1000);
  }

  /** Drops the oldest events once the window is a quarter over size, in bulk to keep it cheap. */
  private trim(): void {
    if (this.window.length <= this.options.windowSize * 1.25) return;
    const excess = this.window.length - this.options.windowSize;
    this.floor = this.window[excess - 1].sequence;
    this.window = this.window.slice(excess);
  }

  /** The index of the first event with a sequence above `position`. */
  private indexAfter(position: number): number {
    let low = 0;
    let high = this.window.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.window[mid].sequence <= position) low = mid + 1;
      else high = mid;
    }
    return low;
  }
}
