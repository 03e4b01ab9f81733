import type { Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import type { StreamTasksRequestSchema, TaskService } from "../../gen/taskstream/v1/task_service_pb.js";

/** What one stream received, in order. */
export interface Received {
  snapshot: TaskEvent[];
  /** The snapshot's sequence, once snapshot_complete arrived. */
  snapshotSequence?: bigint;
  events: TaskEvent[];
  heartbeats: bigint[];
  /** True once past the snapshot: at snapshot_complete, or from the start when resuming. */
  live: boolean;
  /** The cursor to resume from: the last event's or heartbeat's or snapshot's sequence. */
  cursor?: bigint;
  error?: unknown;
}

/**
 * Reads a stream into `received` in the background until it ends, fails or
 * is aborted. `until` may stop it early.
 */
export function collect(
  client: Client<typeof TaskService>,
  request: MessageInitShape<typeof StreamTasksRequestSchema>,
  options: { signal?: AbortSignal; timeoutMs?: number; received?: Received; onMessage?: (r: Received) => void | Promise<void> } = {},
): { received: Received; done: Promise<Received> } {
  const received: Received = options.received ?? { snapshot: [], events: [], heartbeats: [], live: false };
  if (request.afterSequence !== undefined) received.live = true;
  const done = (async () => {
    try {
      for await (const response of client.streamTasks(request, { signal: options.signal, timeoutMs: options.timeoutMs })) {
        const m = response.message;
        if (m.case === "event") {
          if (!received.live) received.snapshot.push(m.value);
          else {
            received.events.push(m.value);
            received.cursor = m.value.sequence;
          }
        } else if (m.case === "snapshotComplete") {
          received.snapshotSequence = m.value.sequence;
          received.cursor = m.value.sequence;
          received.live = true;
        } else if (m.case === "heartbeat") {
          received.heartbeats.push(m.value.sequence);
          received.cursor = m.value.sequence;
        }
        await options.onMessage?.(received);
      }
    } catch (err) {
      received.error = err;
    }
    return received;
  })();
  return { received, done };
}

/** Waits until `check` holds, polling; fails after timeoutMs. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what: string | (() => string) = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
