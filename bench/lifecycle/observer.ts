/**
 * The one observer: a StreamTasks call (skip_snapshot) in the bench's own
 * process that counts every event and takes each task's dispatch-to-complete
 * latency from the log itself: its queued event's event_time to its completed
 * event's event_time. It also checks the log's promises on the way: sequences
 * strictly increase, and each task shows queued, running, completed once each.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";

export interface ObserverResult {
  events: number;
  queued: number;
  running: number;
  completed: number;
  other: number;
  /** Events out of sequence order, or a task's events out of queued -> running -> completed. */
  violations: number;
  /** Server clock: the first queued event's event_time and the last completed one's. */
  firstQueuedEventMs: number;
  lastCompletedEventMs: number;
  /** This process's clock when the last completed event arrived. */
  lastCompletedSeenMs: number;
  /** Dispatch-to-complete latencies in ms, sorted ascending. */
  latencies: Float64Array;
}

export class Observer {
  private readonly stop = new AbortController();
  private readonly stage = new Map<string, { queuedMs: number; running: boolean }>();
  private readonly latencies: Float64Array;
  private readonly result: Omit<ObserverResult, "latencies"> = {
    events: 0,
    queued: 0,
    running: 0,
    completed: 0,
    other: 0,
    violations: 0,
    firstQueuedEventMs: 0,
    lastCompletedEventMs: 0,
    lastCompletedSeenMs: 0,
  };
  private running?: Promise<void>;
  private finished!: () => void;
  /** Resolves once `total` tasks were seen completed. */
  readonly allCompleted: Promise<void>;

  constructor(
    private readonly url: string,
    private readonly toolName: string,
    private readonly total: number,
  ) {
    this.latencies = new Float64Array(total);
    this.allCompleted = new Promise((resolve) => (this.finished = resolve));
  }

  /** Opens the stream; resolves once the server sent snapshot_complete, so no later event is missed. */
  start(): Promise<void> {
    return new Promise((ready, failed) => {
      const client = createClient(TaskService, createGrpcTransport({ baseUrl: this.url }));
      const request = { filter: { toolName: this.toolName }, skipSnapshot: true, heartbeatInterval: { seconds: 1n } };
      this.running = (async () => {
        let last = 0n;
        for await (const { message } of client.streamTasks(request, { signal: this.stop.signal })) {
          if (message.case === "snapshotComplete") {
            last = message.value.sequence;
            ready();
            continue;
          }
          if (message.case !== "event") continue;
          const e = message.value;
          if (e.sequence <= last) this.result.violations++;
          last = e.sequence;
          this.result.events++;
          const at = timestampMs(e.eventTime!);
          switch (e.kind.case) {
            case "queued":
              if (this.stage.has(e.taskId)) this.result.violations++;
              this.stage.set(e.taskId, { queuedMs: at, running: false });
              if (this.result.queued++ === 0) this.result.firstQueuedEventMs = at;
              break;
            case "running": {
              const s = this.stage.get(e.taskId);
              if (!s || s.running) this.result.violations++;
              else s.running = true;
              this.result.running++;
              break;
            }
            case "completed": {
              const s = this.stage.get(e.taskId);
              if (!s || !s.running) this.result.violations++;
              else this.latencies[this.result.completed] = at - s.queuedMs;
              this.stage.delete(e.taskId);
              this.result.lastCompletedEventMs = at;
              if (++this.result.completed === this.total) {
                this.result.lastCompletedSeenMs = Date.now();
                this.finished();
              }
              break;
            }
            default:
              this.result.other++;
          }
        }
      })().catch((err: unknown) => {
        if (!this.stop.signal.aborted) failed(err);
      });
    });
  }

  /** How many completed events arrived so far. */
  get completed(): number {
    return this.result.completed;
  }

  async close(): Promise<ObserverResult> {
    this.stop.abort();
    await this.running;
    const n = Math.min(this.result.completed, this.total);
    return { ...this.result, latencies: this.latencies.slice(0, n).sort() };
  }
}

/** The q-quantile of ascending values (nearest rank). */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}
