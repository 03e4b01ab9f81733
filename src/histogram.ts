/** A Prometheus histogram of seconds: cumulative buckets, sum and count. */
export class Histogram {
  private readonly counts: number[];
  private sum = 0;

  /** `buckets`: upper bounds in seconds, ascending. */
  constructor(private readonly buckets: readonly number[]) {
    this.counts = new Array<number>(buckets.length + 1).fill(0);
  }

  observe(seconds: number): void {
    const bucket = this.buckets.findIndex((le) => seconds <= le);
    this.counts[bucket === -1 ? this.buckets.length : bucket]++;
    this.sum += seconds;
  }

  /** The histogram in Prometheus text format, under `name`. */
  text(name: string, help: string): string {
    return [...histogramHeader(name, help), ...this.series(name), ""].join("\n");
  }

  /** Its bucket, sum and count lines, each with `labels` (such as `kind="major"`) if given. */
  series(name: string, labels = ""): string[] {
    let cumulative = 0;
    const lines = [...this.buckets.map(String), "+Inf"].map((le, i) => {
      cumulative += this.counts[i];
      return `${name}_bucket{${labels ? `${labels},` : ""}le="${le}"} ${cumulative}`;
    });
    const suffix = labels ? `{${labels}}` : "";
    return [...lines, `${name}_sum${suffix} ${this.sum}`, `${name}_count${suffix} ${cumulative}`];
  }
}

export function histogramHeader(name: string, help: string): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
}
