/**
 * The stream clients, two of them behind one interface (`ReaderGroup`):
 *
 * - `node`: StreamTasks calls over connect-node's gRPC transport in the bench's
 *   own process, each message decoded by protobuf-es.
 * - `go`: the Go client (clients/go/cmd/stream-reader) in a child process,
 *   each message decoded by connect-go into the generated Go types. The bench
 *   sends it commands as JSON lines and reads its counts back.
 *
 * Either spreads a group's streams round-robin over `connections` HTTP/2
 * connections of its own. connect-node gives each transport one
 * Http2SessionManager, that is one connection, and the Go reader one
 * net/http Transport per connection; each puts all its calls on its one
 * connection as streams. Node's HTTP/2 client assumes the peer allows 100
 * concurrent streams until the server's SETTINGS frame says otherwise, Go's
 * opens another connection past the peer's limit, and Node's server
 * advertises 2^32-1: staying at or under 100 streams per connection makes no
 * stream wait and opens no extra connection, whatever the peer says.
 */
import { setMaxListeners } from "node:events";
import { create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { TaskService, StreamTasksRequestSchema } from "../../gen/taskstream/v1/task_service_pb.js";
import { GoCommand, type GoAnswer } from "../support/go-command.js";
import { cpuSeconds, Histogram, waitFor } from "./procs.js";

export type ClientKind = "go" | "node";
export const CLIENT_LABEL: Record<ClientKind, string> = {
  go: "Go (connect-go)",
  node: "Node (connect-node)",
};

export type Request = MessageInitShape<typeof StreamTasksRequestSchema>;

/** A group's counts; min* over the streams asked for. */
export interface Stats {
  deliveries: number;
  heartbeats: number;
  /** Streams that got snapshot_complete. */
  live: number;
  ended: number;
  errors: string[];
  errorCount: number;
  /** Events whose sequence did not exceed the stream's previous event, snapshot_complete or heartbeat. */
  orderErrors: number;
  firstOrder?: string;
  minLastSequence?: number;
  minReceived?: number;
}

export interface Latency {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/** What to wait for: `live` streams got snapshot_complete; every stream in [from, to) has `received` events / reached `lastSequence`. */
export interface Until {
  live?: number;
  from?: number;
  to?: number;
  received?: number;
  lastSequence?: number;
}

/** Streams opened together over their own connections, closed together. */
export interface ReaderGroup {
  /** Opens one stream per request, round-robin over the group's connections; resolves once all calls started. */
  open(requests: Request[]): Promise<void>;
  stats(from?: number, to?: number): Promise<Stats>;
  /** Latency since the last reset; `reset` starts over after reading. */
  latency(reset?: boolean): Promise<Latency>;
  setMeasuring(on: boolean): Promise<void>;
  /** Resolves true once `until` holds, false on a stream error or at the timeout. */
  waitUntil(until: Until, timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

export interface Readers {
  readonly kind: ClientKind;
  group(url: string, connections: number): ReaderGroup;
  /** CPU seconds the client processes have used: this process, and the Go reader's. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

const ownCpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// ---- node: connect-node in this process ----

function grpcTransports(url: string, connections: number): Transport[] {
  return Array.from({ length: connections }, () =>
    createGrpcTransport({
      baseUrl: url,
      // Connections stay up between phases however idle the streams are.
      idleConnectionTimeoutMs: 3_600_000,
    }),
  );
}

interface NodeStream {
  lastSequence: number;
  received: number;
  done: Promise<void>;
}

class NodeGroup implements ReaderGroup {
  private deliveries = 0;
  private heartbeats = 0;
  private live = 0;
  private ended = 0;
  private orderErrors = 0;
  private firstOrder?: string;
  private errors: string[] = [];
  private errorCount = 0;
  private measuring = true;
  private readonly histogram = new Histogram();
  private readonly streams: NodeStream[] = [];
  private readonly abort = new AbortController();
  private readonly clients: Client<typeof TaskService>[];

  constructor(url: string, connections: number) {
    // Every stream of the group listens to this one signal.
    setMaxListeners(0, this.abort.signal);
    this.clients = grpcTransports(url, connections).map((t) => createClient(TaskService, t));
  }

  async open(requests: Request[]): Promise<void> {
    for (const request of requests) this.streams.push(this.consume(this.clients[this.streams.length % this.clients.length], request));
  }

  /**
   * Consumes one StreamTasks call until the group closes. Latency of a
   * delivery is the receipt time minus the event's event_time, which the
   * server sets in the transaction that wrote it (same machine, same clock).
   */
  private consume(client: Client<typeof TaskService>, request: Request): NodeStream {
    const stream: NodeStream = { lastSequence: 0, received: 0, done: Promise.resolve() };
    const signal = this.abort.signal;
    stream.done = (async () => {
      let ordered = request.afterSequence !== undefined;
      let floor = Number(request.afterSequence ?? 0);
      try {
        for await (const res of client.streamTasks(request, { signal })) {
          const m = res.message;
          if (m.case === "event") {
            this.deliveries++;
            stream.received++;
            const e = m.value;
            const seq = Number(e.sequence);
            if (ordered) {
              if (seq <= floor) this.orderError(`event ${seq} after ${floor}`);
              floor = seq;
            }
            if (seq > stream.lastSequence) stream.lastSequence = seq;
            if (this.measuring && e.eventTime) {
              this.histogram.add(Date.now() - (Number(e.eventTime.seconds) * 1000 + e.eventTime.nanos / 1e6));
            }
          } else if (m.case === "snapshotComplete") {
            this.live++;
            const seq = Number(m.value.sequence);
            ordered = true;
            floor = seq;
            if (seq > stream.lastSequence) stream.lastSequence = seq;
          } else if (m.case === "heartbeat") {
            this.heartbeats++;
            const seq = Number(m.value.sequence);
            if (ordered) {
              if (seq < floor) this.orderError(`heartbeat ${seq} after ${floor}`);
              floor = Math.max(floor, seq);
            }
          }
        }
        if (!signal.aborted) this.error("the server ended the stream");
      } catch (err) {
        if (!signal.aborted) this.error(String((err as Error)?.message ?? err));
      } finally {
        this.ended++;
      }
    })();
    return stream;
  }

  private orderError(what: string): void {
    this.orderErrors++;
    this.firstOrder ??= what;
  }

  private error(what: string): void {
    this.errorCount++;
    if (this.errors.length < 5) this.errors.push(what);
  }

  private statsNow(from?: number, to?: number): Stats {
    const s: Stats = {
      deliveries: this.deliveries,
      heartbeats: this.heartbeats,
      live: this.live,
      ended: this.ended,
      errors: [...this.errors],
      errorCount: this.errorCount,
      orderErrors: this.orderErrors,
      firstOrder: this.firstOrder,
    };
    if (from !== undefined && to !== undefined && from < to) {
      const span = this.streams.slice(from, to);
      s.minLastSequence = Math.min(...span.map((x) => x.lastSequence));
      s.minReceived = Math.min(...span.map((x) => x.received));
    }
    return s;
  }

  async stats(from?: number, to?: number): Promise<Stats> {
    return this.statsNow(from, to);
  }

  async latency(reset = false): Promise<Latency> {
    const h = this.histogram;
    const l = { count: h.count, p50: h.quantile(0.5), p99: h.quantile(0.99), max: h.max };
    if (reset) h.reset();
    return l;
  }

  async setMeasuring(on: boolean): Promise<void> {
    this.measuring = on;
  }

  waitUntil(until: Until, timeoutMs: number): Promise<boolean> {
    const { from = 0, to = 0 } = until;
    const span = this.streams.slice(from, to);
    const holds = () =>
      (until.live === undefined || this.live >= until.live) &&
      span.every((x) => (until.received === undefined || x.received >= until.received) && (until.lastSequence === undefined || x.lastSequence >= until.lastSequence));
    return waitFor(() => holds() || this.errorCount > 0, timeoutMs, 1).then(() => holds());
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.all(this.streams.map((s) => s.done));
  }
}

export function nodeReaders(): Readers {
  return {
    kind: "node",
    group: (url, connections) => new NodeGroup(url, connections),
    cpuSeconds: ownCpuSeconds,
    stop: async () => {},
  };
}

// ---- go: clients/go/cmd/stream-reader in a child process ----

const toStats = (a: GoAnswer): Stats => ({
  deliveries: Number(a.deliveries),
  heartbeats: Number(a.heartbeats),
  live: Number(a.live),
  ended: Number(a.ended),
  errors: (a.errors as string[] | null) ?? [],
  errorCount: Number(a.errorCount),
  orderErrors: Number(a.orderErrors),
  firstOrder: (a.firstOrder as string) || undefined,
  minLastSequence: a.minLastSequence === undefined ? undefined : Number(a.minLastSequence),
  minReceived: a.minReceived === undefined ? undefined : Number(a.minReceived),
});

let goGroups = 0;

class GoGroup implements ReaderGroup {
  private readonly name = `g${++goGroups}`;
  private opened = false;
  /** Whether to record latencies, for a group not open yet. */
  private measuring = true;

  constructor(
    private readonly proc: GoCommand,
    private readonly url: string,
    private readonly connections: number,
  ) {}

  private async call(command: Record<string, unknown>): Promise<GoAnswer> {
    const a = await this.proc.send({ ...command, group: this.name });
    if (!a.ok && a.error) throw new Error(`stream-reader ${String(command.cmd)}: ${a.error}`);
    return a;
  }

  async open(requests: Request[]): Promise<void> {
    this.opened = true;
    await this.call({
      cmd: "open",
      url: this.url,
      connections: this.connections,
      measuring: this.measuring,
      requests: requests.map((r) => toJson(StreamTasksRequestSchema, create(StreamTasksRequestSchema, r))),
    });
  }

  async stats(from?: number, to?: number): Promise<Stats> {
    return toStats(await this.call({ cmd: "stats", from, to }));
  }

  async latency(reset = false): Promise<Latency> {
    const a = await this.call({ cmd: "latency", reset });
    const num = (x: unknown) => (x === null || x === undefined ? NaN : Number(x));
    return { count: Number(a.count), p50: num(a.p50), p99: num(a.p99), max: Number(a.max) };
  }

  async setMeasuring(on: boolean): Promise<void> {
    this.measuring = on;
    if (this.opened) await this.call({ cmd: "measuring", on });
  }

  async waitUntil(until: Until, timeoutMs: number): Promise<boolean> {
    return (await this.call({ cmd: "wait", ...until, timeoutMs })).ok;
  }

  async close(): Promise<void> {
    await this.call({ cmd: "close" });
  }
}

/** Starts the Go reader built at `path`. */
export async function goReaders(path: string): Promise<Readers> {
  const proc = new GoCommand(path, "stream-reader");
  await proc.ready;
  return {
    kind: "go",
    group: (url, connections) => new GoGroup(proc, url, connections),
    // The bench's own process counts too: it sends the commands (and, for node, reads).
    cpuSeconds: () => ownCpuSeconds() + cpuSeconds(proc.pid),
    stop: () => proc.stop(),
  };
}
