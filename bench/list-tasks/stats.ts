import { PerformanceObserver, type PerformanceEntry } from "node:perf_hooks";

/** Latency figures of one case, in milliseconds. */
export interface Stats {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
  /** The garbage collector of this (the calling) process during the timed calls. */
  gc: {
    /** Its pauses' share of the calls' time. */
    share: number;
    /** The calls at or above p99, and how many of them a pause overlapped. */
    slowCalls: number;
    slowWithGc: number;
  };
}

/** Nearest-rank percentiles over the samples. */
export function summarize(samples: number[]): Omit<Stats, "gc"> {
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
  return {
    n: sorted.length,
    p50: rank(0.5),
    p99: rank(0.99),
    max: sorted[sorted.length - 1],
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
  };
}

export interface MeasureOptions {
  warmup: number;
  samples: number;
  /** Stop early once this much time went by and at least minSamples were taken. */
  maxMs: number;
  minSamples: number;
}

/** Calls `call(i)` one at a time: warm-up calls first, then timed ones. */
export async function measure(call: (i: number) => Promise<unknown>, options: MeasureOptions): Promise<Stats> {
  // Warm-up: the given number of calls, or 5 s of them (at least 10) when calls are slow.
  const warming = performance.now();
  for (let i = 0; i < options.warmup; i++) {
    await call(i);
    if (i >= 9 && performance.now() - warming > 5000) break;
  }
  const pauses: PerformanceEntry[] = [];
  const observer = new PerformanceObserver((list) => pauses.push(...list.getEntries()));
  observer.observe({ entryTypes: ["gc"] });
  const calls: { start: number; ms: number }[] = [];
  const started = performance.now();
  try {
    for (let i = 0; i < options.samples; i++) {
      const t0 = performance.now();
      await call(options.warmup + i);
      calls.push({ start: t0, ms: performance.now() - t0 });
      if (calls.length >= options.minSamples && performance.now() - started > options.maxMs) break;
    }
    // The observer is told of the last pauses on a later turn of the event loop.
    await new Promise((r) => setTimeout(r, 10));
  } finally {
    observer.disconnect();
  }
  const stats = summarize(calls.map((c) => c.ms));
  const gcMs = (c: { start: number; ms: number }) =>
    pauses.reduce((sum, p) => sum + Math.max(0, Math.min(c.start + c.ms, p.startTime + p.duration) - Math.max(c.start, p.startTime)), 0);
  const slow = calls.filter((c) => c.ms >= stats.p99);
  return {
    ...stats,
    gc: {
      share: calls.reduce((sum, c) => sum + gcMs(c), 0) / calls.reduce((sum, c) => sum + c.ms, 0),
      slowCalls: slow.length,
      slowWithGc: slow.filter((c) => gcMs(c) > 0).length,
    },
  };
}
