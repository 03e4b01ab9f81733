import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { ServiceDeps } from "../service/deps.js";

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
export function fallbackHandler(deps: ServiceDeps): NonNullable<ConnectNodeAdapterOptions["fallback"]> {
  return (req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method === "GET" && path === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metricsText(deps));
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  };
}
