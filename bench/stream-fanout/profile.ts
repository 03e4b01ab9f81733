/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): self time per
 * function, and per area (protobuf, connect, HTTP/2, SQLite, the fanout...).
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileRow {
  name: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Time not idle: what the process spent working. */
  busyMs: number;
  functions: ProfileRow[];
  areas: ProfileRow[];
}

/** Which part of the stack a frame belongs to, by its script. */
function area(url: string, name: string): string {
  if (name === "(idle)") return "idle";
  if (name === "(garbage collector)") return "garbage collection";
  if (name === "(program)") return "V8/native (program)";
  if (url.includes("@bufbuild/protobuf")) return "protobuf-es (encode/decode/create)";
  if (url.includes("@connectrpc/connect-node")) return "connect-node (HTTP/2 adapter)";
  if (url.includes("@connectrpc/connect")) return "connect (RPC framing, async iterables)";
  if (url.includes("better-sqlite3")) return "better-sqlite3";
  if (url.includes("kysely")) return "kysely";
  if (url.includes("/src/fanout/")) return "taskstream src/fanout";
  if (url.includes("/src/service/stream-tasks")) return "taskstream StreamTasks handler";
  if (url.includes("/src/storage/")) return "taskstream src/storage";
  if (url.includes("/src/")) return "taskstream src (other)";
  if (url.includes("node:internal/http2") || url.includes("node:http2")) return "node http2";
  if (url.includes("node:internal/streams") || url.includes("node:stream")) return "node streams";
  if (url.includes("node:internal/timers") || url.includes("node:timers")) return "node timers";
  if (url.includes("node:internal/event_target") || url.includes("node:internal/abort_controller")) return "node AbortSignal/EventTarget";
  if (url.includes("node:internal/process/task_queues") || url.includes("node:internal/process/promises")) return "node microtask queue";
  if (url.startsWith("node:")) return "node (other)";
  if (url === "") return name === "" ? "native (anonymous)" : `native: ${name}`;
  if (url.includes("tsx") || url.includes("esbuild")) return "tsx loader";
  return "other JS";
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf("node_modules/");
  if (nm !== -1) return url.slice(nm + "node_modules/".length);
  const src = url.search(/\/(src|bench|gen)\//);
  if (src !== -1) return url.slice(src + 1);
  return url.replace(/^file:\/\//, "");
}

export function summarizeProfile(path: string, top = 25): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const functions = new Map<string, number>();
  const areas = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    totalUs += us;
    if (functionName === "(idle)") idleUs += us;
    const key = `${functionName || "(anonymous)"} ${url ? `${shortUrl(url)}:${lineNumber + 1}` : ""}`.trim();
    functions.set(key, (functions.get(key) ?? 0) + us);
    const a = area(url, functionName);
    areas.set(a, (areas.get(a) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const rows = (m: Map<string, number>, n: number) =>
    [...m]
      .filter(([name]) => name !== "(idle)" && name !== "idle")
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, us]) => ({ name, ms: us / 1000, share: busyUs > 0 ? us / busyUs : 0 }));
  return { totalMs: totalUs / 1000, busyMs: busyUs / 1000, functions: rows(functions, top), areas: rows(areas, 30) };
}

export function profileText(s: ProfileSummary): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  return [
    `profiled ${(s.totalMs / 1000).toFixed(1)} s, busy ${(s.busyMs / 1000).toFixed(1)} s (${pct(s.busyMs / s.totalMs)})`,
    "",
    "| area (self time) | ms | share of busy |",
    "| --- | ---: | ---: |",
    ...s.areas.map((r) => `| ${r.name} | ${r.ms.toFixed(0)} | ${pct(r.share)} |`),
    "",
    "| function (self time) | ms | share of busy |",
    "| --- | ---: | ---: |",
    ...s.functions.map((r) => `| \`${r.name.replaceAll("|", "\\|")}\` | ${r.ms.toFixed(0)} | ${pct(r.share)} |`),
  ].join("\n");
}

// `tsx bench/stream-fanout/profile.ts file.cpuprofile` prints a summary.
if (process.argv[1]?.endsWith("profile.ts") && process.argv[2]) {
  console.log(profileText(summarizeProfile(process.argv[2], Number(process.argv[3] ?? 25))));
}
