import { PerformanceObserver } from "node:perf_hooks";
import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { ServiceDeps } from "../service/deps.js";

/** Upper bounds of the event-loop lag histogram's buckets, in seconds. */
const LAG_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const LAG_SAMPLE_MS = 10;

/**
 * How the event loop and the garbage collector fare. The server runs on one
 * thread: a stall there delays every call and every stream's events at once,
 * so a latency tail starts here. The lag is how late a 10 ms timer fires, as
 * a histogram. (Node 20's monitorEventLoopDelay missed stalls in I/O and
 * setImmediate callbacks: a 150 ms one read as 10 ms.)
 */
export class RuntimeMetrics {
  private readonly lagCounts = new Array<number>(LAG_BUCKETS.length + 1).fill(0);
  private lagSum = 0;
  private sampler: NodeJS.Timeout | undefined;
  private gcRuns = 0;
  private gcSeconds = 0;
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      this.gcRuns++;
      this.gcSeconds += entry.duration / 1000;
    }
  });

  start(): void {
    let last = performance.now();
    this.sampler = setInterval(() => {
      const now = performance.now();
      this.recordLag(Math.max(0, now - last - LAG_SAMPLE_MS) / 1000);
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
    let cumulative = 0;
    const buckets = [...LAG_BUCKETS.map(String), "+Inf"].map((le, i) => {
      cumulative += this.lagCounts[i];
      return `nodejs_eventloop_lag_seconds_bucket{le="${le}"} ${cumulative}`;
    });
    const lines = [
      `# HELP nodejs_eventloop_lag_seconds How late a timer due every ${LAG_SAMPLE_MS} ms fired.`,
      "# TYPE nodejs_eventloop_lag_seconds histogram",
      ...buckets,
      `nodejs_eventloop_lag_seconds_sum ${this.lagSum}`,
      `nodejs_eventloop_lag_seconds_count ${cumulative}`,
      "# HELP nodejs_gc_runs_total Garbage collections since the server started.",
      "# TYPE nodejs_gc_runs_total counter",
      `nodejs_gc_runs_total ${this.gcRuns}`,
      "# HELP nodejs_gc_seconds_total Time spent in garbage collection since the server started.",
      "# TYPE nodejs_gc_seconds_total counter",
      `nodejs_gc_seconds_total ${this.gcSeconds}`,
    ];
    return `${lines.join("\n")}\n`;
  }

  private recordLag(seconds: number): void {
    const bucket = LAG_BUCKETS.findIndex((le) => seconds <= le);
    this.lagCounts[bucket === -1 ? LAG_BUCKETS.length : bucket]++;
    this.lagSum += seconds;
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
  return gauges.map(([name, help, value]) => `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${value}\n`).join("");
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
