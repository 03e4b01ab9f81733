/**
 * Reads a server's GET /metrics once. The returned function gives a metric's
 * value: the sum of its series (one per label set) whose line includes
 * `having` (such as `le="0.1"` or `kind="major"`). A metric that is absent
 * throws, so a renamed metric fails its test rather than reading 0.
 */
export async function scrapeMetrics(serverUrl: string): Promise<(metric: string, having?: string) => number> {
  const lines = (await (await fetch(`${serverUrl}/metrics`)).text()).split("\n");
  return (metric, having = "") => {
    const series = lines.filter((line) => (line.startsWith(`${metric} `) || line.startsWith(`${metric}{`)) && line.includes(having));
    if (series.length === 0) throw new Error(`no ${metric}${having ? ` with ${having}` : ""} on /metrics`);
    return series.reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
  };
}
