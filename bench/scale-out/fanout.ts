/**
 * The fan-out phase: StreamTasks subscribers spread round-robin over the
 * replicas (one per agent, filtered to it, plus some unfiltered), and one
 * producer dispatching at a steady rate to random agents through replica 0,
 * "the writer". Each event's commit-to-receipt latency is the receipt time
 * (Date.now()) minus its event_time, kept separately for subscribers on the
 * writer and on the other replicas, whose events came over NOTIFY or the log poll.
 */
import { setMaxListeners } from "node:events";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";

export interface FanoutOptions {
  /** Filtered subscribers, one per agent; the producer picks among these agents. */
  agents: number;
  unfiltered: number;
  /** Dispatches per second. */
  rate: number;
  seconds: number;
  /** Dispatches in flight at most; past it the producer falls behind its rate (reported). */
  inFlight: number;
  /** How long to wait after the last dispatch for every subscriber to have every event. */
  drainMs: number;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

export interface FanoutResult {
  streams: number;
  dispatched: number;
  /** Dispatches per second the producer achieved. */
  dispatchRate: number;
  /** DispatchTask round trips as the producer saw them. */
  dispatchLatency: LatencySummary;
  deliveries: number;
  /** Deliveries over the time from the first dispatch to the last receipt. */
  deliveriesPerSecond: number;
  local: LatencySummary;
  remote?: LatencySummary;
  /** Events a subscriber never received, received twice, or out of order: all should be 0. */
  missing: number;
  duplicates: number;
  outOfOrder: number;
}

interface Subscriber {
  replica: number;
  agent: string;
  received: number;
  expected: number;
  last: bigint;
  duplicates: number;
  outOfOrder: number;
  ready: boolean;
}

/** Latencies in ms, appended without reallocation per sample. */
class Samples {
  private data = new Float64Array(1 << 16);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const grown = new Float64Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data[this.length++] = v;
  }
  summary(): LatencySummary {
    const sorted = this.data.slice(0, this.length).sort();
    const at = (q: number) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);
    return { count: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted.length ? sorted[sorted.length - 1] : NaN };
  }
}

/**
 * `transports[r]` are the subscribers' connections to replica r (several, so
 * no single HTTP/2 connection carries hundreds of streams); `writer` is the
 * producer's connection to replica 0.
 */
export async function runFanout(transports: Transport[][], writer: Transport, options: FanoutOptions): Promise<FanoutResult> {
  const n = transports.length;
  const stop = new AbortController();
  setMaxListeners(0, stop.signal);
  const local = new Samples();
  const remote = new Samples();
  let deliveries = 0;
  let lastReceipt = 0;
  const subscribers: Subscriber[] = [];
  const agentNames = Array.from({ length: options.agents }, (_, i) => `fan-agent-${i}`);
  for (let i = 0; i < options.agents + options.unfiltered; i++) {
    const agent = i < options.agents ? agentNames[i] : "";
    subscribers.push({ replica: i % n, agent, received: 0, expected: 0, last: -1n, duplicates: 0, outOfOrder: 0, ready: false });
  }
  let streamError: Error | undefined;

  const subscribe = async (s: Subscriber, index: number) => {
    const pool = transports[s.replica];
    const client = createClient(TaskService, pool[Math.floor(index / n) % pool.length]);
    const samples = s.replica === 0 ? local : remote;
    try {
      for await (const { message } of client.streamTasks({ filter: { agentId: s.agent }, skipSnapshot: true }, { signal: stop.signal })) {
        if (message.case === "snapshotComplete") {
          s.last = message.value.sequence;
          s.ready = true;
        } else if (message.case === "event") {
          const now = Date.now();
          const event = message.value;
          samples.push(now - timestampMs(event.eventTime!));
          deliveries++;
          lastReceipt = performance.now();
          if (event.sequence === s.last) s.duplicates++;
          else if (event.sequence < s.last) s.outOfOrder++;
          else s.received++;
          s.last = event.sequence;
        }
      }
    } catch (err) {
      if (!stop.signal.aborted && ConnectError.from(err).code !== Code.Canceled) streamError ??= err as Error;
    }
  };
  const streams = subscribers.map((s, i) => subscribe(s, i));
  await until(() => subscribers.every((s) => s.ready) || streamError !== undefined, 60_000, "every subscriber's snapshot_complete");
  if (streamError) throw streamError;

  // The producer: open loop at `rate`, so a slow answer does not slow the schedule.
  const tasks = createClient(TaskService, writer);
  const total = Math.round(options.rate * options.seconds);
  const inFlight = new Set<Promise<void>>();
  const roundTrips = new Samples();
  const byAgent = new Map<string, number>();
  let dispatched = 0;
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / options.rate;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    while (inFlight.size >= options.inFlight) await Promise.race(inFlight);
    const agent = agentNames[Math.floor(Math.random() * agentNames.length)];
    const sent = performance.now();
    const call = tasks
      .dispatchTask({ toolName: "fanout", agentId: agent, requestId: `fanout-${i}`, args: { i } })
      .then(() => {
        roundTrips.push(performance.now() - sent);
        dispatched++;
        byAgent.set(agent, (byAgent.get(agent) ?? 0) + 1);
      })
      .finally(() => inFlight.delete(call));
    inFlight.add(call);
  }
  await Promise.all(inFlight);
  const producedSeconds = (performance.now() - started) / 1000;

  for (const s of subscribers) s.expected = s.agent === "" ? dispatched : (byAgent.get(s.agent) ?? 0);
  await until(() => subscribers.every((s) => s.received >= s.expected) || streamError !== undefined, options.drainMs, "").catch(() => {});
  stop.abort();
  await Promise.all(streams);
  if (streamError) throw streamError;

  const missing = subscribers.reduce((sum, s) => sum + Math.max(0, s.expected - s.received), 0);
  return {
    streams: subscribers.length,
    dispatched,
    dispatchRate: dispatched / producedSeconds,
    dispatchLatency: roundTrips.summary(),
    deliveries,
    deliveriesPerSecond: deliveries / ((lastReceipt - started) / 1000),
    local: local.summary(),
    remote: n > 1 ? remote.summary() : undefined,
    missing,
    duplicates: subscribers.reduce((sum, s) => sum + s.duplicates, 0),
    outOfOrder: subscribers.reduce((sum, s) => sum + s.outOfOrder, 0),
  };
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
