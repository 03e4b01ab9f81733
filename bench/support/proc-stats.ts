import { readFileSync } from "node:fs";

// What the benchmarks read of a process from /proc: shared by every bench.

/** Resident memory of a process (VmRSS), in bytes; 0 once it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** CPU seconds a process has used (user + system); 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Nanoseconds a thread has run and has waited, runnable, for a CPU
 * (/proc/<pid>/task/<tid>/schedstat; the main thread's tid is the pid).
 * Waiting while runnable is CPU starvation, as against a long callback.
 */
export function schedStat(pid: number, tid = pid): { runNs: number; waitNs: number } {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").trim().split(" ").map(Number);
    return { runNs: run, waitNs: wait };
  } catch {
    return { runNs: 0, waitNs: 0 };
  }
}

/** What taskstream's /metrics says of its event loop and GC (see src/server/metrics.ts). */
export interface LoopMetrics {
  /** Timer firings that came more than 50 ms / 100 ms late. */
  lateOver50: number;
  lateOver100: number;
  samples: number;
  /** Events the log tail handed to live streams, and those it handed more than 25 / 50 ms after their commit. */
  handOffs: number;
  handOffsOver25: number;
  handOffsOver50: number;
  gcRuns: number;
  gcSeconds: number;
  /** Mark-compact collections, and collections of any kind that took over 25 ms. */
  gcMajor: number;
  gcOver25: number;
}

export async function loopMetrics(serverUrl: string): Promise<LoopMetrics> {
  const text = await (await fetch(new URL("/metrics", serverUrl))).text();
  // The sum of a metric's series (one per label set) whose labels include `having`.
  const sumOf = (metric: string, having = "") =>
    text
      .split("\n")
      .filter((line) => (line.startsWith(`${metric} `) || line.startsWith(`${metric}{`)) && line.includes(having))
      .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
  // A histogram's observations above `le` seconds.
  const over = (histogram: string, le: string) => sumOf(`${histogram}_count`) - sumOf(`${histogram}_bucket`, `le="${le}"`);
  return {
    lateOver50: over("nodejs_eventloop_lag_seconds", "0.05"),
    lateOver100: over("nodejs_eventloop_lag_seconds", "0.1"),
    samples: sumOf("nodejs_eventloop_lag_seconds_count"),
    handOffs: sumOf("taskstream_tail_handoff_lag_seconds_count"),
    handOffsOver25: over("taskstream_tail_handoff_lag_seconds", "0.025"),
    handOffsOver50: over("taskstream_tail_handoff_lag_seconds", "0.05"),
    gcRuns: sumOf("nodejs_gc_duration_seconds_count"),
    gcSeconds: sumOf("nodejs_gc_duration_seconds_sum"),
    gcMajor: sumOf("nodejs_gc_duration_seconds_count", 'kind="major"'),
    gcOver25: over("nodejs_gc_duration_seconds", "0.025"),
  };
}

/** The difference of two LoopMetrics readings. */
export function loopDelta(a: LoopMetrics, b: LoopMetrics): LoopMetrics {
  const keys = Object.keys(a) as (keyof LoopMetrics)[];
  return Object.fromEntries(keys.map((key) => [key, b[key] - a[key]])) as unknown as LoopMetrics;
}
