/** The figures of a stream-fanout run: printed as markdown, and written to bench/README.md. */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { CLIENT_LABEL, type ClientKind } from "./clients.js";
import type { PhaseUsage } from "./procs.js";
import { profileText, type ProfileSummary } from "../support/cpu-profile.js";
import type { LoopMetrics } from "../support/proc-stats.js";

export interface StepResult {
  label: string;
  /** Dispatches per second asked of the producer; 0 = flat out. */
  targetDispatchPerSec: number;
  dispatchPerSec: number;
  eventsPerSec: number;
  deliveriesPerSec: number;
  /** What the streams should receive for the events written: each goes to every unfiltered stream and one filtered one. */
  expectedDeliveriesPerSec: number;
  p50: number;
  p99: number;
  max: number;
  /** How long the unfiltered streams took, after the producer stopped, to reach its last event. */
  drainMs: number;
  rpcP99: number;
  usage: PhaseUsage;
  /** The server's event loop and GC over the step, from its /metrics. */
  loop: LoopMetrics;
  producerCores: number;
  errors: number;
  /** Events the streams received out of sequence order (should be 0). */
  orderErrors: number;
  sustained: boolean;
}

export interface RawResult {
  mode: "h2" | "connect";
  /** Set when the raw server sent this many events a second rather than as fast as the clients took them. */
  pacedEventsPerSec?: number;
  deliveriesPerSec: number;
  p50: number;
  p99: number;
  usage: PhaseUsage;
  orderErrors: number;
}

/** One client's CPU for one snapshot or replay run (cores while it ran). */
export interface TimedRun {
  ms: number;
  events: number;
  serverCores: number;
  clientCores: number;
  orderErrors: number;
}

/** What one stream client measured. */
export interface ClientFigures {
  snapshot?: TimedRun[];
  replay?: TimedRun[];
  raw: RawResult[];
  steps: StepResult[];
  max?: StepResult;
  half?: StepResult;
  /** The raw transport paced at the half step's event rate. */
  rawAtHalf?: RawResult;
}

export interface Report {
  command: string;
  date: string;
  /** The commit measured. */
  revision: string;
  machine: string;
  loadBefore: number;
  loadAfter: number;
  dialect: string;
  cfg: Record<string, number>;
  seedSeconds?: number;
  /** The stream clients measured with, in the order they ran. */
  clients: ClientKind[];
  /** Why the run used another client than the default, if it did. */
  clientNote?: string;
  byClient: Partial<Record<ClientKind, ClientFigures>>;
  writesAlone?: { dispatchPerSec: number; rpcP50: number; rpcP99: number; usage: PhaseUsage; producerCores: number };
  idle?: {
    client: ClientKind;
    streams: number;
    connections: number;
    openMs: number;
    rssBefore: number;
    rssAfter: number;
    rssMax: number;
    activeGauge: number;
  };
  rss: { phase: string; bytes: number }[];
  /** Server CPU profiles, each of a run of its own. */
  profiles: { what: string; summary: ProfileSummary }[];
  runtimeSeconds: number;
  /** Waits for an idle machine before measurements. */
  quietness?: { waits: number; waitedMs: number; notQuiet: string[] };
}

const n = (x: number) => Math.round(x).toLocaleString("en-US");
/** `part` as a percentage of `whole`. */
export const pct = (part: number, whole: number) => `${((100 * part) / Math.max(whole, 1e-9)).toFixed(1)}%`;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const cores = (x: number) => x.toFixed(2);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
/** What the rest of the machine used meanwhile: other users' processes, and the kernel's work for nobody in particular. */
const others = (u: PhaseUsage, producer: number) => Math.max(0, u.machineCores - u.serverCores - u.clientCores - producer);
/** CPU microseconds per delivery: cores busy over deliveries per second. */
const perDelivery = (busyCores: number, perSec: number) => (perSec > 0 ? ((busyCores / perSec) * 1e6).toFixed(1) : "–");
const mark = (ok: boolean) => (ok ? "✓" : "✗");

type Cell = [measured: string, mark: string];

/** The goals, one pair of columns per client. */
export function goalsTable(r: Report): string {
  const c = r.cfg;
  const timed = (runs: TimedRun[] | undefined, goalMs: number): Cell => {
    if (!runs?.length) return ["not run", ""];
    const ms = runs.map((x) => x.ms);
    const cpu = (pick: (x: TimedRun) => number) => median(runs.map((x) => (pick(x) * x.ms) / 1000)).toFixed(2);
    return [
      `**${(median(ms) / 1000).toFixed(2)} s** (${ms.map((x) => (x / 1000).toFixed(2)).join(", ")}); ` +
        `CPU per run: server ${cpu((x) => x.serverCores)} s, client ${cpu((x) => x.clientCores)} s`,
      mark(median(ms) < goalMs),
    ];
  };
  const rows: { figure: string; goal: string; cell: (f: ClientFigures, kind: ClientKind) => Cell }[] = [
    {
      figure: `deliveries/s, ${n(c.unfiltered)} unfiltered + ${n(c.agents)} agent-filtered streams, at the highest sustained rate`,
      goal: "≥ 100,000",
      cell: (f) => {
        if (!f.steps.length) return ["not run", ""];
        const peak = f.steps.reduce((a, b) => (b.deliveriesPerSec > a.deliveriesPerSec ? b : a));
        return f.max
          ? [
              `**${n(f.max.deliveriesPerSec)}** (${n(f.max.eventsPerSec)} events/s written; producer ${f.max.targetDispatchPerSec ? `at ${f.max.label}` : "flat out"})`,
              mark(f.max.deliveriesPerSec >= 100_000),
            ]
          : [`none sustained; best step reached ${n(peak.deliveriesPerSec)} (${n(peak.eventsPerSec)} events/s written, p99 ${peak.p99} ms)`, mark(false)];
      },
    },
    {
      figure: "raw transport ceiling, same client (trivial node:http2 server)",
      goal: "–",
      cell: (f) => [f.raw.find((x) => x.mode === "h2") ? n(f.raw.find((x) => x.mode === "h2")!.deliveriesPerSec) : "not run", ""],
    },
    {
      figure: "raw ceiling through connect-node's handler (event encoded once, as the server does)",
      goal: "–",
      cell: (f) => [f.raw.find((x) => x.mode === "connect") ? n(f.raw.find((x) => x.mode === "connect")!.deliveriesPerSec) : "not run", ""],
    },
    {
      figure: "taskstream ÷ raw ceiling (the best unsustained step when none was sustained)",
      goal: "≥ 50%",
      cell: (f) => {
        const h2 = f.raw.find((x) => x.mode === "h2");
        const best = f.max ?? (f.steps.length ? f.steps.reduce((a, b) => (b.deliveriesPerSec > a.deliveriesPerSec ? b : a)) : undefined);
        const ratio = best && h2 ? best.deliveriesPerSec / h2.deliveriesPerSec : NaN;
        return Number.isFinite(ratio) ? [`**${(ratio * 100).toFixed(0)}%**`, mark(ratio >= 0.5)] : ["–", ""];
      },
    },
    {
      figure: "commit-to-receipt latency at half the max rate, p50 / p99",
      goal: "p99 < 50 ms",
      cell: (f) =>
        f.half
          ? [
              `${f.half.p50} ms / **${f.half.p99} ms** (${n(f.half.eventsPerSec)} events/s, ${n(f.half.deliveriesPerSec)} deliveries/s)` +
                (f.rawAtHalf ? `; the raw transport paced at the same rate: ${f.rawAtHalf.p50} ms / ${f.rawAtHalf.p99} ms` : ""),
              mark(f.half.p99 < 50),
            ]
          : f.steps.length
            ? ["no max rate", mark(false)]
            : ["not run", ""],
    },
    {
      figure: `server RSS with ${n(r.idle?.streams ?? c.idleStreams)} idle streams${r.idle ? ` (${n(r.idle.connections)} connections)` : ""}`,
      goal: "< 1 GiB",
      cell: (_f, kind) => {
        const idle = r.idle;
        if (!idle) return ["not run", ""];
        if (idle.client !== kind) return [`(${CLIENT_LABEL[idle.client]} client's run)`, ""];
        return [
          `**${mib(idle.rssMax)}** (${mib(idle.rssBefore)} before; ${((idle.rssMax - idle.rssBefore) / idle.streams / 1024).toFixed(1)} KiB per stream)`,
          mark(idle.rssMax < 2 ** 30),
        ];
      },
    },
    {
      figure: `snapshot of ${n(Object.values(r.byClient).find((f) => f?.snapshot?.length)?.snapshot?.[0]?.events ?? c.snapshotTasks)} running tasks, call to snapshot_complete (median of ${c.repeats})`,
      goal: "< 2 s",
      cell: (f) => timed(f.snapshot, 2000),
    },
    {
      figure: `resume replay of ${n(c.replayEvents)} events (median of ${c.repeats})`,
      goal: "< 1 s",
      cell: (f) => timed(f.replay, 1000),
    },
    {
      figure: "server RSS during fan-out (max)",
      goal: "–",
      cell: (f) => [f.steps.length ? mib(Math.max(...f.steps.map((s) => s.usage.rssMaxBytes))) : "not run", ""],
    },
  ];
  const head = `| figure | goal | ${r.clients.map((k) => `${CLIENT_LABEL[k]} client | | `).join("")}`;
  const rule = `| --- | --- | ${r.clients.map(() => "--- | --- | ").join("")}`;
  return [
    head.trimEnd(),
    rule.trimEnd(),
    ...rows.map((row) => `| ${row.figure} | ${row.goal} | ${r.clients.map((k) => `${row.cell(r.byClient[k]!, k).join(" | ")} | `).join("")}`.trimEnd()),
  ].join("\n");
}

export function stepsTable(f: ClientFigures): string {
  const rows = [...f.steps, ...(f.half ? [f.half] : [])];
  return [
    "| producer target | events/s written | deliveries/s | expected | p50 ms | p99 ms | max ms | drain ms | events the server handed over > 25 / > 50 ms after commit | server thread waiting for a CPU | server cores | server CPU µs per delivery | client cores | producer cores | other processes, cores | server RSS | sustained |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ...rows.map(
      (s) =>
        `| ${s.label} | ${n(s.eventsPerSec)} | ${n(s.deliveriesPerSec)} | ${n(s.expectedDeliveriesPerSec)} | ${s.p50} | ${s.p99} | ${s.max} | ` +
        `${n(s.drainMs)} | ${pct(s.loop.handOffsOver25, s.loop.handOffs)} / ${pct(s.loop.handOffsOver50, s.loop.handOffs)} | ${pct(s.usage.serverRunQueueShare, 1)} | ${cores(s.usage.serverCores)} | ${perDelivery(s.usage.serverCores, s.deliveriesPerSec)} | ${cores(s.usage.clientCores)} | ${cores(s.producerCores)} | ${cores(others(s.usage, s.producerCores))} | ` +
        `${mib(s.usage.rssMaxBytes)} | ${s.sustained ? "yes" : "no"} |`,
    ),
  ].join("\n");
}

export function rawTable(r: Report): string {
  return [
    "| client | raw server | deliveries/s | p50 ms | p99 ms | server cores | client cores | client CPU µs per delivery | other processes, cores | server RSS |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...r.clients.flatMap((k) => [...r.byClient[k]!.raw, ...(r.byClient[k]!.rawAtHalf ? [r.byClient[k]!.rawAtHalf!] : [])].map((x) => ({ k, x }))).map(
      ({ k, x }) =>
        `| ${CLIENT_LABEL[k]} | ${rawLabel(x)} | ${n(x.deliveriesPerSec)} | ${x.p50} | ${x.p99} | ` +
        `${cores(x.usage.serverCores)} | ${cores(x.usage.clientCores)} | ${perDelivery(x.usage.clientCores, x.deliveriesPerSec)} | ${cores(others(x.usage, 0))} | ${mib(x.usage.rssMaxBytes)} |`,
    ),
  ].join("\n");
}

function rawLabel(x: RawResult): string {
  if (x.pacedEventsPerSec) return `node:http2, paced at ${n(x.pacedEventsPerSec)} events/s (the half-rate step's)`;
  return x.mode === "h2" ? "node:http2, bytes written directly" : "connect-node handler";
}

export function rssTable(r: Report): string {
  return ["| phase | server RSS |", "| --- | ---: |", ...r.rss.map((x) => `| ${x.phase} | ${mib(x.bytes)} |`)].join("\n");
}

/** The whole block of one run: goals, then the detail tables. */
export function runBlock(r: Report): string {
  const w = r.writesAlone;
  const parts = [
    `Run of ${r.date} at ${r.revision} on ${r.machine}, ${r.dialect === "sqlite" ? "SQLite" : "PostgreSQL"}, in ${(r.runtimeSeconds / 60).toFixed(1)} min: ` +
      `\`${r.command}\`. Load average ${r.loadBefore.toFixed(2)} before the run, ${r.loadAfter.toFixed(2)} after. ` +
      `Stream clients: ${r.clients.map((k) => CLIENT_LABEL[k]).join(", then ")}${r.clientNote ? ` (${r.clientNote})` : ""}.` +
      (r.quietness && r.quietness.waits > 0
        ? ` Before each of ${r.quietness.waits} measurements the bench waited for a second with the machine idle ` +
          `(${(r.quietness.waitedMs / 1000).toFixed(0)} s of waiting in all)` +
          (r.quietness.notQuiet.length ? `; it never got idle before: ${r.quietness.notQuiet.join(", ")}.` : "; it always got idle.")
        : ""),
    "",
    goalsTable(r),
  ];
  if (w) {
    parts.push(
      "",
      `Writes alone (producer flat out with ${r.cfg.concurrency} calls in flight, no stream open): ` +
        `**${n(w.dispatchPerSec)} dispatches/s = ${n(2 * w.dispatchPerSec)} events/s** (DispatchTasks of ${r.cfg.dispatchBatch}), call p50 ${w.rpcP50.toFixed(1)} ms / p99 ${w.rpcP99.toFixed(1)} ms, ` +
        `server ${cores(w.usage.serverCores)} cores, producer ${cores(w.producerCores)} cores, other processes ${cores(others(w.usage, w.producerCores))} cores.`,
    );
  }
  for (const k of r.clients) {
    const f = r.byClient[k]!;
    if (!f.steps.length) continue;
    parts.push(
      "",
      `Producer steps with the fan-out streams of the ${CLIENT_LABEL[k]} client open (each step runs its rate, then waits for the streams to drain):`,
      "",
      stepsTable(f),
    );
  }
  if (r.clients.some((k) => r.byClient[k]!.raw.length || r.byClient[k]!.rawAtHalf)) parts.push("", "Raw transport, the same streams of each client:", "", rawTable(r));
  parts.push("", "Server memory by phase (VmRSS):", "", rssTable(r));
  const notes: string[] = [];
  const cpu = (runs: { serverCores: number; clientCores: number }[]) =>
    `server ${runs.map((x) => cores(x.serverCores)).join(", ")} cores, client ${runs.map((x) => cores(x.clientCores)).join(", ")} cores`;
  for (const k of r.clients) {
    const f = r.byClient[k]!;
    if (f.snapshot?.length) notes.push(`While the snapshot was sent to the ${CLIENT_LABEL[k]} client: ${cpu(f.snapshot)}.`);
    if (f.replay?.length) notes.push(`While the replay was sent to the ${CLIENT_LABEL[k]} client: ${cpu(f.replay)}.`);
  }
  const outOfOrder = r.clients.flatMap((k) => {
    const f = r.byClient[k]!;
    return [...(f.snapshot ?? []), ...(f.replay ?? []), ...f.raw, ...f.steps, ...(f.half ? [f.half] : [])].map((x) => x.orderErrors);
  });
  if (outOfOrder.length) {
    const total = outOfOrder.reduce((a, b) => a + b, 0);
    notes.push(total === 0 ? "Every stream received its events in sequence order." : `**${n(total)} events arrived out of sequence order.**`);
  }
  if (r.seedSeconds !== undefined) notes.push(`Seeding ${n(r.cfg.snapshotTasks)} running tasks (${n(2 * r.cfg.snapshotTasks)} events) took ${r.seedSeconds.toFixed(1)} s.`);
  if (r.idle) {
    notes.push(
      `${n(r.idle.streams)} idle streams (${CLIENT_LABEL[r.idle.client]} client) opened in ${(r.idle.openMs / 1000).toFixed(1)} s; the server's taskstream_streams_active gauge read ${n(r.idle.activeGauge)}.`,
    );
  }
  if (notes.length) parts.push("", notes.join(" "));
  for (const p of r.profiles) {
    parts.push("", `<details><summary>Server CPU profile: ${p.what} (self time)</summary>`, "", profileText(p.summary), "", "</details>");
  }
  return parts.join("\n");
}

const INTRO = "# Benchmarks\n\nPrograms that measure the service and print figures; they pass or fail nothing.\n";

const ABOUT = `## stream-fanout

\`bench/stream-fanout\`: \`StreamTasks\` fan-out under a steady event rate, next to the
raw transport's ceiling measured in the same run; then 10,000 idle streams, the
snapshot of 100,000 running tasks, and the resume replay of 100,000 events.
Figures, not pass/fail.

\`\`\`sh
npm run bench:stream-fanout                     # full sizes, SQLite, ~6 min
npm run bench:stream-fanout -- --profile        # and a CPU profile of the server at the max rate
npm run bench:stream-fanout -- --phases fanout --profile --profile-rate 100  # ... at 100 dispatches/s
npm run bench:stream-fanout -- --quick          # small sizes, ~1 min
npm run bench:stream-fanout -- --client go,node # both stream clients, side by side (twice the time)
npm run bench:stream-fanout -- --producer node  # the Node producer instead of the Go one
\`\`\`

How it runs:

- **Processes.** The server is \`node bin/taskstream.js serve --port 0\` on a temp
  SQLite file (\`--dialect postgres\`: an embedded PostgreSQL), a child process;
  its RSS is read from \`/proc/<pid>/status\` (VmRSS) every 200 ms and its CPU from
  \`/proc/<pid>/stat\`. The stream clients run in the Go reader's process (or,
  with \`--client node\`, in the bench's own); the producer is another process:
  \`clients/go/cmd/producer\` (connect-go, built at the start of the run; about
  0.1 of a core at the top rates), or with \`--producer node\` \`producer.ts\`
  (connect-node, about 0.3 of a core at any rate), the same calls paced the
  same way. The Go stream reader reads each response body through an 8 KiB
  buffer and runs its garbage collector at GOGC=400.
  *cores* columns are CPU seconds per second: 1.00 is one core busy; *client
  cores* count the bench's process and the Go reader's; *other processes* is
  what the rest of the 2-core machine used meanwhile (anything else running,
  which skews every figure: check it).
- **Clients.** \`--client go\` (the default, when \`go build\` succeeds; else the
  run falls back to node and says so), \`--client node\`, or \`--client go,node\`:
  the snapshot, replay, raw ceilings and fan-out run once per client, and the
  tables show them side by side (the idle streams, a server-memory figure, run
  with the first). *Go*: \`clients/go/cmd/stream-reader\`, built at the start of
  the run, on the Go client (\`clients/go\`: connect-go's gRPC client on
  net/http's HTTP/2 transport), decodes every message into the generated Go
  types; the bench sends it commands (open these streams, counts, latency
  quantiles, wait until...) as JSON lines and reads the answers. *Node*:
  connect-node \`createGrpcTransport\` with the generated client, in the bench's
  process, which decodes every message with protobuf-es (about 19 µs of CPU
  each: before the Go reader, the Node client bounded the raw ceiling). Both
  count the same things: deliveries, each stream's last sequence, latency in
  whole milliseconds, and sequence order (after \`snapshot_complete\`, each
  event's sequence must exceed the stream's previous event's and heartbeat's;
  the run says whether any did not). Each group of streams has its own HTTP/2
  connections, the streams going round-robin over them: one per
  connect-node transport, one per Go \`http.Transport\`. Node's client assumes
  the peer allows 100 concurrent streams until the server's SETTINGS arrive,
  Go's opens another connection past the peer's limit, and Node's server
  advertises 2^32-1. The bench keeps at most 100 streams per connection so no
  stream waits and no connection is added: the 1,100 fan-out streams go over
  16 connections (~69 each), the 10,000 idle streams over 100.
- **Fan-out.** 100 streams with no filter and 1,000 each filtered to its own
  agent (\`agent-0\`…\`agent-999\`), all \`skip_snapshot\` (the database holds the
  100,000 seeded running tasks). The producer dispatches with \`claim\`, each
  task for a random one of those agents, so each dispatch writes 2 events, and
  each event is delivered 101 times (every unfiltered stream, and its agent's).
  The dispatches due at a moment go in one \`DispatchTasks\` call (at most
  \`--dispatch-batch\`, 50), as a producer with work piling up sends them. It steps its rate up by 1.4× from 100 dispatches/s; a step
  is *sustained* when the producer kept ≥ 90% of its rate, the streams received
  ≥ 90% of the deliveries those writes call for, p99 stayed under 1 s and no
  call failed. The ladder stops at the first unsustained step (if it runs
  out of steps instead, one more runs the producer flat out, 32 calls of 50
  in flight, sustained when the streams kept up), then one at half the best
  sustained rate gives the latency figures. If the first step is not
  sustained, the ladder steps down instead (at most 3 times).
- **Latency** is commit to receipt: the client's clock at receipt minus
  the event's \`event_time\`, which the server stamps in the writing transaction
  (its clock reading when the transaction starts, so the figure includes the
  write itself), same machine, millisecond precision.
- **Where the latency arises.** Each step also reads, from the server's
  \`/metrics\`, how many events its log tail handed to the live streams more
  than 25 and 50 ms after their commit (\`taskstream_tail_handoff_lag_seconds\`:
  the server's share, up to its writes into HTTP/2), and from
  \`/proc/<pid>/task/<pid>/schedstat\` how much of the step the server's main
  thread was runnable but waiting for a CPU (taken by the clients, the
  producer or its own helper threads). After the half-rate step, the raw
  server (below) sends the same number of events a second to the same
  streams, paced every 10 ms: the latency the transport, the clients and
  this machine add with no taskstream in the path.
- **Server path.** taskstream answers gRPC (binary) calls itself
  (\`src/server/grpc-fast-path.ts\`), not through connect-node's handler, and
  \`StreamTasks\` writes its own frames there: an event's frame is its stored
  bytes behind the 5-byte prefix and the \`event\` tag, framed straight into one
  buffer per write (up to 64 KiB of a snapshot or replay page; a batch every
  unfiltered stream sends is framed once for all). A stream caught up with the
  log's tail is handed each new event its filter matches as the tail reads it
  (\`src/fanout/stream-waiters.ts\`) and writes it at once, with no wake-up to
  schedule; one whose client reads slower goes back to reading pages. The
  *connect-node handler* raw row below is the ceiling of the path the server
  took before.
- **Raw ceiling.** \`raw-server.ts\` implements the same \`TaskService.StreamTasks\`
  with no storage: it makes events as fast as the clients take them (each event
  to every unfiltered stream and to its random agent's stream, same message
  shape, \`snapshot_complete\` first), waiting on HTTP/2 backpressure. Both
  modes encode each event once. *node:http2* frames it once and writes the same
  bytes to every stream: the ceiling of the transport and the clients.
  *connect-node handler* yields one shared response per event, carrying the
  encoded event as its field 1 the way the server carries stored events, to
  every stream through connect-node's handler: the ceiling once connect-node's
  per-message, per-stream handling is added.
- **Seed.** Before any server starts, a child process writes the 100,000 RUNNING
  tasks and their 200,000 events (queued, running) through the storage layer:
  rows as \`TaskStore.dispatch\` builds them, events through the log's own
  \`appendEvents\` (same sequences and payloads), 1,000 tasks per transaction.
- **Snapshot**: one unfiltered \`StreamTasks\` from the call to \`snapshot_complete\`.
  **Replay**: \`after_sequence\` = last − 100,000, until 100,000 events arrived.
  Each is run 3 times on a fresh connection; the median is reported.
- **Idle**: 10,000 streams, \`skip_snapshot\`, each filtered to an agent that
  never writes, heartbeat interval 300 s, on a freshly started server; RSS is
  the max seen from opening them until 3 s after all are live.
- Each group of phases runs on a freshly started server process, so each RSS
  figure is that phase's own.
- The machine may be shared: before each measurement the bench waits (up to
  45 s, \`--quiet-wait-seconds\`; 240 s in all, \`--quiet-budget-seconds\`) for a
  second in which all processes together use under 0.35 of a core, and the
  run's line says whether it ever had to measure on a busy machine. The
  *other processes* columns show what else ran during each measurement.
- *CPU µs per delivery* is the CPU time a process spent over the deliveries in
  the same window (the server's in the steps, its writes included; the
  clients' in the raw rows): a cost that holds up better than a rate when
  others share the machine.
`;

/** Writes (or rewrites) the "## stream-fanout" section, leaving every other section as it is. */
export function updateReadme(path: string, r: Report): void {
  const section = `${ABOUT}\n### Latest run\n\n${runBlock(r)}\n`;
  // Read right before writing: another bench may have written its section meanwhile.
  const old = existsSync(path) ? readFileSync(path, "utf8") : INTRO;
  const start = old.startsWith("## stream-fanout\n") ? 0 : old.indexOf("\n## stream-fanout\n");
  let next: string;
  if (start === -1) {
    next = `${old.trimEnd()}\n\n${section}`;
  } else {
    const from = start === 0 ? 0 : start + 1;
    const after = old.indexOf("\n## ", from + 1);
    next = `${old.slice(0, from)}${section}${after === -1 ? "" : `\n${old.slice(after + 1)}`}`;
  }
  writeFileSync(path, `${next.trimEnd()}\n`);
}

export function printAndWrite(r: Report, readme: string | undefined): void {
  console.log(`\n## stream-fanout (${r.command})\n\n${runBlock(r)}\n`);
  if (readme) {
    updateReadme(readme, r);
    console.log(`Wrote the "## stream-fanout" section of ${readme}`);
  }
}
