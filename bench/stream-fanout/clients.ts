/**
 * The stream clients: StreamTasks calls over connect-node's gRPC transport,
 * spread over several HTTP/2 connections.
 *
 * connect-node gives each transport one Http2SessionManager, that is one
 * HTTP/2 connection, and opens every call of that transport as a stream on
 * it. Node's HTTP/2 client assumes the peer allows 100 concurrent streams
 * until the server's SETTINGS frame says otherwise (peerMaxConcurrentStreams),
 * and Node's server advertises no lower bound than 2^32-1; staying at or under
 * 100 streams per connection makes no stream wait on either side, whatever
 * the peer says. So the streams go round-robin over `connections` transports.
 */
import { setMaxListeners } from "node:events";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { TaskService, type StreamTasksRequestSchema } from "../../gen/taskstream/v1/task_service_pb.js";
import { Histogram } from "./procs.js";

export function grpcTransports(url: string, connections: number): Transport[] {
  return Array.from({ length: connections }, () =>
    createGrpcTransport({
      baseUrl: url,
      // Connections stay up between phases however idle the streams are.
      idleConnectionTimeoutMs: 3_600_000,
    }),
  );
}

/** What every stream of a group adds to: deliveries, latencies, cursors. */
export class Receipts {
  /** Events received, across all streams. */
  deliveries = 0;
  heartbeats = 0;
  /** Streams that got snapshot_complete (or, on resume, their first message). */
  live = 0;
  ended = 0;
  errors: string[] = [];
  readonly latency = new Histogram();
  /** Whether to record latencies (off while the snapshot is sent). */
  measuring = true;
}

export interface OpenedStream {
  /** The highest event sequence this stream received. */
  lastSequence: number;
  received: number;
  done: Promise<void>;
}

type Request = MessageInitShape<typeof StreamTasksRequestSchema>;

/**
 * Opens one StreamTasks call and consumes it until `signal` aborts. Latency
 * of a delivery is the receipt time minus the event's event_time, which the
 * server sets in the transaction that wrote it (same machine, same clock).
 */
export function openStream(client: Client<typeof TaskService>, request: Request, receipts: Receipts, signal: AbortSignal): OpenedStream {
  const stream: OpenedStream = { lastSequence: 0, received: 0, done: Promise.resolve() };
  stream.done = (async () => {
    try {
      for await (const res of client.streamTasks(request, { signal })) {
        const m = res.message;
        if (m.case === "event") {
          receipts.deliveries++;
          stream.received++;
          const e = m.value;
          const seq = Number(e.sequence);
          if (seq > stream.lastSequence) stream.lastSequence = seq;
          if (receipts.measuring && e.eventTime) {
            receipts.latency.add(Date.now() - (Number(e.eventTime.seconds) * 1000 + e.eventTime.nanos / 1e6));
          }
        } else if (m.case === "snapshotComplete") {
          receipts.live++;
          const seq = Number(m.value.sequence);
          if (seq > stream.lastSequence) stream.lastSequence = seq;
        } else if (m.case === "heartbeat") {
          receipts.heartbeats++;
        }
      }
    } catch (err) {
      if (!signal.aborted) receipts.errors.push(String((err as Error)?.message ?? err));
    } finally {
      receipts.ended++;
    }
  })();
  return stream;
}

/** A group of streams opened round-robin over transports, closed together. */
export class StreamGroup {
  readonly receipts = new Receipts();
  readonly streams: OpenedStream[] = [];
  private readonly abort = new AbortController();
  private readonly clients: Client<typeof TaskService>[];

  constructor(readonly transports: Transport[]) {
    // Every stream of the group listens to this one signal.
    setMaxListeners(0, this.abort.signal);
    this.clients = transports.map((t) => createClient(TaskService, t));
  }

  open(request: Request): OpenedStream {
    const stream = openStream(this.clients[this.streams.length % this.clients.length], request, this.receipts, this.abort.signal);
    this.streams.push(stream);
    return stream;
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.streams.map((s) => s.done));
  }
}
