/** Latency figures of one case, in milliseconds. */
export interface Stats {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentiles over the samples. */
export function summarize(samples: number[]): Stats {
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
  const samples: number[] = [];
  const started = performance.now();
  for (let i = 0; i < options.samples; i++) {
    const t0 = performance.now();
    await call(options.warmup + i);
    samples.push(performance.now() - t0);
    if (samples.length >= options.minSamples && performance.now() - started > options.maxMs) break;
  }
  return summarize(samples);
}
