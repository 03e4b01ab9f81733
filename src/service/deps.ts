import type { Settings } from "../config.js";
import type { EventTail } from "../fanout/event-tail.js";
import type { LogSignal } from "../fanout/log-signal.js";
import type { Db } from "../storage/connect.js";
import type { TaskStore } from "../storage/task-store.js";

/** What the handlers are built over; the server assembles it once. */
export interface ServiceDeps {
  db: Db;
  store: TaskStore;
  /** Wakes long-polling claimers when a task becomes pending. */
  pendingSignal: LogSignal;
  /** The process's one reader of the event log, shared by every stream. */
  tail: EventTail;
  gauges: Gauges;
  settings: Settings;
}

/** Live counts the server exposes, and tests check for leaks. */
export interface Gauges {
  activeStreams: number;
  /** StreamTasks calls refused by --max-streams, since start. */
  refusedStreams: number;
}
