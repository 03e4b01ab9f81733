import { PerformanceObserver, constants, type PerformanceEntry } from "node:perf_hooks";
import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import { Histogram, histogramHeader } from "../histogram.js";
import type { ServiceDeps } from "../service/deps.js";

/** Upper bounds of the event-loop lag histogram's buckets, in seconds. */
const LAG_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const LAG_SAMPLE_MS = 10;
const GC_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
/** The kinds of collection, as prom-client names them. */
const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb",
};

/**
 * How the event loop and the garbage collector fare. The server runs on one
 * thread: a stall there delays every call and every stream's events at once,
 * so a latency tail starts here. The lag is how late a 10 ms timer fires, as
 * a histogram. (Node 20's monitorEventLoopDelay missed stalls in I/O and
 * setImmediate callbacks: a 150 ms one read as 10 ms.)
 */
export class RuntimeMetrics {
  private readonly lag = new Histogram(LAG_BUCKETS);
  private sampler: NodeJS.Timeout | undefined;
  private readonly gcByKind = new Map<string, Histogram>();
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) this.recordGc(entry);
  });

  start(): void {
    let last = performance.now();
    this.sampler = setInterval(() => {
      const now = performance.now();
      this.lag.observe(Math.max(0, now - last - LAG_SAMPLE_MS) / 1000);
      last = now;
    }, LAG_SAMPLE_MS).unref();
    this.gcObserver.observe({ entryTypes: ["gc"] });
  }

  stop(): void {
    clearInterval(this.sampler);
    this.gcObserver.disconnect();
  }

  /** The Prometheus text of these metrics. */
  text(): string {
    const gc = [
      ...histogramHeader("nodejs_gc_duration_seconds", "Garbage collections by kind, and how long each took."),
      ...[...this.gcByKind].flatMap(([kind, histogram]) => histogram.series("nodejs_gc_duration_seconds", `kind="${kind}"`)),
    ];
    return this.lag.text("nodejs_eventloop_lag_seconds", `How late a timer due every ${LAG_SAMPLE_MS} ms fired.`) + `${gc.join("\n")}\n`;
  }

  private recordGc(entry: PerformanceEntry): void {
    const kind = GC_KINDS[(entry.detail as { kind?: number } | undefined)?.kind ?? -1] ?? "other";
    let histogram = this.gcByKind.get(kind);
    if (!histogram) this.gcByKind.set(kind, (histogram = new Histogram(GC_BUCKETS)));
    histogram.observe(entry.duration / 1000);
  }
}

/** The gauges an operator (and the tests) can read, in Prometheus text format. */
export function metricsText(deps: ServiceDeps): string {
  const gauges: [string, string, number][] = [
    ["taskstream_streams_active", "Open StreamTasks calls.", deps.gauges.activeStreams],
    ["taskstream_stream_waiters", "Streams parked waiting for the log to grow.", deps.tail.waiterCount],
    ["taskstream_log_last_sequence", "The newest event sequence this process has read.", deps.tail.lastSequence],
    ["taskstream_tail_window_events", "Recent events kept in memory for streams.", deps.tail.windowLength],
    ["taskstream_claim_waiters", "ClaimTasks calls long-polling for work.", deps.pendingSignal.waiterCount],
    ["process_resident_memory_bytes", "Resident memory of this process.", process.memoryUsage.rss()],
  ];
  const handOff = deps.tail.handOffLag.text(
    "taskstream_tail_handoff_lag_seconds",
    "From an event's commit (its transaction's start) to this process's log tail handing it to live streams.",
  );
  const counters: [string, string, number][] = [
    ["taskstream_streams_refused_total", "StreamTasks calls refused because --max-streams were open.", deps.gauges.refusedStreams],
  ];
  const series = (type: string) => ([name, help, value]: [string, string, number]) => `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${value}\n`;
  return gauges.map(series("gauge")).join("") + counters.map(series("counter")).join("") + handOff;
}

/** Answers what is not an RPC: GET /metrics, and 404 for anything else. */
export function fallbackHandler(deps: ServiceDeps, runtime: RuntimeMetrics): NonNullable<ConnectNodeAdapterOptions["fallback"]> {
  return (req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method === "GET" && path === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metricsText(deps) + runtime.text());
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  };
}
