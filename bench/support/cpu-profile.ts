/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`): self time per function
 * (callFrame functionName + url), self time per area of the stack, and the
 * inclusive time of the functions that say where a call's time goes.
 *
 *   npx tsx bench/support/cpu-profile.ts file.cpuprofile [top]   prints a summary
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileRow {
  name: string;
  ms: number;
  /** Share of the busy (non-idle) time. */
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  busyMs: number;
  functions: ProfileRow[];
  areas: ProfileRow[];
  inclusive: ProfileRow[];
}

/** Native better-sqlite3 methods show up with no script URL. */
const SQLITE_NATIVE = new Set(["prepare", "run", "all", "get", "iterate", "exec", "pragma"]);

/** Which part of the stack a frame belongs to. */
export function area(url: string, name: string): string {
  if (name === "(idle)") return "idle";
  if (name === "(garbage collector)") return "garbage collection";
  if (name === "(program)") return "V8/native (program)";
  if (url === "" && SQLITE_NATIVE.has(name)) return "better-sqlite3 (native: prepare/run/all)";
  if (url.includes("better-sqlite3")) return "better-sqlite3 (JS wrapper)";
  if (url.includes("kysely") && /query-compiler|operation-node|parser|query-builder|expression/.test(url)) return "kysely: build + compile query";
  if (url.includes("kysely")) return "kysely: driver, transaction, results";
  if (url.includes("/pg/") || url.includes("pg-protocol") || url.includes("pg-pool") || url.includes("pg-types")) return "pg client";
  if (url.includes("@bufbuild/protobuf")) return "protobuf-es";
  if (url.includes("@connectrpc/connect-node")) return "connect-node";
  if (url.includes("@connectrpc/connect")) return "connect";
  if (url.includes("/src/storage/")) return "taskstream src/storage";
  if (url.includes("/src/fanout/")) return "taskstream src/fanout";
  if (url.includes("/src/service/")) return "taskstream src/service";
  if (url.includes("/src/")) return "taskstream src (other)";
  if (url.includes("/gen/")) return "taskstream gen";
  if (url.includes("node:internal/http2") || url.includes("node:http2")) return "node http2 (JS)";
  if (url.includes("node:internal/streams") || url.includes("node:stream")) return "node streams";
  if (url.includes("node:internal/timers") || url.includes("node:timers")) return "node timers";
  if (url.includes("node:internal/event_target") || url.includes("node:internal/abort_controller")) return "node AbortSignal/EventTarget";
  if (url.includes("node:internal/process/task_queues") || url.includes("node:internal/process/promises")) return "node microtask queue";
  if (url.startsWith("node:")) return "node (other JS)";
  if (url === "") return name === "" ? "native (anonymous)" : `native: ${name}`;
  if (url.includes("tsx") || url.includes("esbuild")) return "tsx loader";
  return "other JS";
}

/** Functions whose inclusive time is worth knowing: the per-task paths and the layers under them. */
const INCLUSIVE: { label: string; match: (name: string, url: string) => boolean }[] = [
  { label: "TaskStore.dispatch (DispatchTask transaction)", match: (n, u) => n === "dispatch" && u.endsWith("/src/storage/task-store.ts") },
  { label: "TaskStore.claim (ClaimTasks transaction)", match: (n, u) => n === "claim" && u.endsWith("/src/storage/task-store.ts") },
  { label: "TaskStore.complete (CompleteTask transaction)", match: (n, u) => n === "complete" && u.endsWith("/src/storage/task-store.ts") },
  { label: "  apply (row update + events, per task)", match: (n, u) => n === "apply" && u.endsWith("/src/storage/task-store.ts") },
  { label: "  appendEvents (log_head + events insert)", match: (n, u) => n === "appendEvents" && u.endsWith("/src/storage/event-log.ts") },
  { label: "  findDuplicate (idempotency lookup)", match: (n, u) => n === "findDuplicate" && u.endsWith("/src/storage/task-store.ts") },
  { label: "  eventFor + toBinary (build event payloads)", match: (n, u) => (n === "eventFor" || n === "eventRow") && u.endsWith("/src/storage/event-log.ts") },
  { label: "EventTail (shared stream tail)", match: (_n, u) => u.includes("/src/fanout/event-tail.ts") },
  { label: "StreamTasks handler", match: (_n, u) => u.includes("/src/service/stream-tasks.ts") },
  { label: "taskFromRow (row -> Task message)", match: (n, u) => n === "taskFromRow" && u.includes("/src/storage/task-rows.ts") },
  { label: "listTasks (storage query)", match: (n, u) => n === "listTasks" && u.includes("/src/storage/task-queries.ts") },
  { label: "gRPC fast path (binary calls)", match: (_n, u) => u.includes("/src/server/grpc-fast-path.ts") },
  { label: "kysely compileQuery (SQL text from the query tree)", match: (n, u) => n === "compileQuery" && u.includes("kysely") },
  { label: "kysely executeQuery (driver round trip)", match: (n, u) => n === "executeQuery" && u.includes("kysely") },
  { label: "better-sqlite3 prepare (native, every query)", match: (n, u) => n === "prepare" && u === "" },
  { label: "better-sqlite3 run/all/get (native: execute)", match: (n, u) => (n === "run" || n === "all" || n === "get") && u === "" },
  { label: "protobuf toBinary", match: (n, u) => n === "toBinary" && u.includes("@bufbuild/protobuf") },
  { label: "protobuf fromBinary", match: (n, u) => n === "fromBinary" && u.includes("@bufbuild/protobuf") },
  { label: "protobuf create", match: (n, u) => n === "create" && u.includes("@bufbuild/protobuf") },
  { label: "connect-node adapter (whole request handling)", match: (_n, u) => u.includes("@connectrpc/connect-node") },
  { label: "maintenance (sweeper, retention)", match: (_n, u) => u.includes("/src/execution/") },
];

export function summarizeProfile(path: string, top = 25): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  const self = new Map<number, number>();
  let totalMs = 0;
  profile.samples.forEach((id, i) => {
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    totalMs += ms;
    self.set(id, (self.get(id) ?? 0) + ms);
  });

  const functions = new Map<string, number>();
  const areas = new Map<string, number>();
  let idleMs = 0;
  for (const [id, ms] of self) {
    const { functionName, url } = byId.get(id)!.callFrame;
    const a = area(url, functionName);
    if (a === "idle") {
      idleMs += ms;
      continue;
    }
    const key = `${functionName || "(anonymous)"} ${shortUrl(url)}`;
    functions.set(key, (functions.get(key) ?? 0) + ms);
    areas.set(a, (areas.get(a) ?? 0) + ms);
  }
  const busyMs = totalMs - idleMs;

  // Inclusive: each sample counts once for every label found on its stack.
  const labelsOf = new Map<number, number[]>();
  const stackLabels = (id: number): number[] => {
    let found = labelsOf.get(id);
    if (found) return found;
    const set = new Set<number>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const { functionName, url } = byId.get(at)!.callFrame;
      INCLUSIVE.forEach((f, i) => f.match(functionName, url) && set.add(i));
    }
    found = [...set];
    labelsOf.set(id, found);
    return found;
  };
  const inclusive = new Array<number>(INCLUSIVE.length).fill(0);
  for (const [id, ms] of self) for (const i of stackLabels(id)) inclusive[i] += ms;

  const rows = (m: Map<string, number>) =>
    [...m].map(([name, ms]) => ({ name, ms, share: ms / busyMs })).sort((a, b) => b.ms - a.ms);
  return {
    totalMs,
    busyMs,
    functions: rows(functions).slice(0, top),
    areas: rows(areas),
    inclusive: INCLUSIVE.map((f, i) => ({ name: f.label, ms: inclusive[i], share: inclusive[i] / busyMs })),
  };
}

function shortUrl(url: string): string {
  if (url === "") return "(native)";
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + "node_modules/".length);
  const src = url.search(/\/(src|gen|bench)\//);
  if (src >= 0) return url.slice(src + 1);
  return url;
}

/** The biggest .cpuprofile in `dir`: the main thread's (tsx's loader thread writes a small one too). */
export function mainThreadProfile(dir: string): string | undefined {
  const file = readdirSync(dir)
    .filter((f) => f.endsWith(".cpuprofile"))
    .sort((a, b) => statSync(join(dir, b)).size - statSync(join(dir, a)).size)[0];
  return file && join(dir, file);
}

/** The summary as markdown tables. */
export function profileText(s: ProfileSummary): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const rows = (title: string, list: ProfileRow[], code = false) => [
    `| ${title} | ms | share of busy |`,
    "| --- | ---: | ---: |",
    ...list.map((r) => `| ${code ? `\`${r.name.replaceAll("|", "\\|")}\`` : r.name} | ${r.ms.toFixed(0)} | ${pct(r.share)} |`),
    "",
  ];
  return [
    `profiled ${(s.totalMs / 1000).toFixed(1)} s, busy ${(s.busyMs / 1000).toFixed(1)} s (${pct(s.busyMs / s.totalMs)})`,
    "",
    ...rows("area (self time)", s.areas.filter((r) => r.share >= 0.002)),
    ...rows("inclusive time (each sample counted once per row)", s.inclusive.filter((r) => r.ms > 0)),
    ...rows("function (self time)", s.functions, true),
  ].join("\n");
}

if (process.argv[1]?.endsWith("cpu-profile.ts") && process.argv[2]) {
  console.log(profileText(summarizeProfile(process.argv[2], Number(process.argv[3] ?? 25))));
}
