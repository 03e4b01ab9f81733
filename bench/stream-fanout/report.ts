/** The figures of a stream-fanout run: printed as markdown, and written to bench/README.md. */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { PhaseUsage } from "./procs.js";
import { profileText, type ProfileSummary } from "./profile.js";

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
  producerCores: number;
  errors: number;
  sustained: boolean;
}

export interface RawResult {
  mode: "h2" | "connect";
  deliveriesPerSec: number;
  p50: number;
  p99: number;
  usage: PhaseUsage;
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
  /** Each run, with the CPU the server and the client used during it (cores). */
  snapshot?: { ms: number; events: number; serverCores: number; clientCores: number }[];
  replay?: { ms: number; events: number; serverCores: number; clientCores: number }[];
  raw: RawResult[];
  writesAlone?: { dispatchPerSec: number; rpcP50: number; rpcP99: number; usage: PhaseUsage; producerCores: number };
  steps: StepResult[];
  max?: StepResult;
  half?: StepResult;
  idle?: { streams: number; connections: number; openMs: number; rssBefore: number; rssAfter: number; rssMax: number; activeGauge: number };
  rss: { phase: string; bytes: number }[];
  /** Server CPU profiles, each of a run of its own. */
  profiles: { what: string; summary: ProfileSummary }[];
  runtimeSeconds: number;
  /** Waits for an idle machine before measurements. */
  quietness?: { waits: number; waitedMs: number; notQuiet: string[] };
}

const n = (x: number) => Math.round(x).toLocaleString("en-US");
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const cores = (x: number) => x.toFixed(2);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
/** What the rest of the machine used meanwhile: other users' processes, and the kernel's work for nobody in particular. */
const others = (u: PhaseUsage, producer: number) => Math.max(0, u.machineCores - u.serverCores - u.clientCores - producer);
/** CPU microseconds per delivery: cores busy over deliveries per second. */
const perDelivery = (busyCores: number, perSec: number) => (perSec > 0 ? ((busyCores / perSec) * 1e6).toFixed(1) : "–");
const mark = (ok: boolean) => (ok ? "✓" : "✗");

export function goalsTable(r: Report): string {
  const c = r.cfg;
  const h2 = r.raw.find((x) => x.mode === "h2");
  const viaConnect = r.raw.find((x) => x.mode === "connect");
  const max = r.max;
  const peak = r.steps.length ? r.steps.reduce((a, b) => (b.deliveriesPerSec > a.deliveriesPerSec ? b : a)) : undefined;
  // Without a sustained step, the comparison uses the best rate any step reached.
  const best = max ?? peak;
  const ratio = best && h2 ? best.deliveriesPerSec / h2.deliveriesPerSec : NaN;
  type Run = { ms: number; serverCores: number; clientCores: number };
  const timed = (runs: Run[] | undefined, goalMs: number) => {
    if (!runs?.length) return ["not run", ""];
    const ms = runs.map((x) => x.ms);
    const cpu = (pick: (x: Run) => number) => median(runs.map((x) => (pick(x) * x.ms) / 1000)).toFixed(2);
    return [
      `**${(median(ms) / 1000).toFixed(2)} s** (${ms.map((x) => (x / 1000).toFixed(2)).join(", ")}); ` +
        `CPU per run: server ${cpu((x) => x.serverCores)} s, client ${cpu((x) => x.clientCores)} s`,
      mark(median(ms) < goalMs),
    ];
  };
  const fanoutRan = r.steps.length > 0;
  const idle = r.idle;
  const rows: string[][] = [
    [
      `deliveries/s, ${n(c.unfiltered)} unfiltered + ${n(c.agents)} agent-filtered streams, at the highest sustained rate`,
      "≥ 100,000",
      !fanoutRan
        ? "not run"
        : max
          ? `**${n(max.deliveriesPerSec)}** (${n(max.eventsPerSec)} events/s written; producer ${max.targetDispatchPerSec ? `at ${max.label}` : "flat out"})`
          : `none sustained; best step reached ${n(peak!.deliveriesPerSec)} (${n(peak!.eventsPerSec)} events/s written, p99 ${peak!.p99} ms)`,
      fanoutRan ? mark(!!max && max.deliveriesPerSec >= 100_000) : "",
    ],
    ["raw transport ceiling, same clients (trivial node:http2 server)", "–", h2 ? n(h2.deliveriesPerSec) : "not run", ""],
    ["raw ceiling through connect-node's handler (event encoded once, as the server does)", "–", viaConnect ? n(viaConnect.deliveriesPerSec) : "not run", ""],
    [
      `taskstream ÷ raw ceiling${max ? "" : " (best unsustained step)"}`,
      "≥ 50%",
      Number.isFinite(ratio) ? `**${(ratio * 100).toFixed(0)}%**` : "–", Number.isFinite(ratio) ? mark(ratio >= 0.5) : ""],
    [
      `commit-to-receipt latency at half the max rate${r.half ? ` (${n(r.half.eventsPerSec)} events/s, ${n(r.half.deliveriesPerSec)} deliveries/s)` : ""}, p50 / p99`,
      "p99 < 50 ms",
      r.half ? `${r.half.p50} ms / **${r.half.p99} ms**` : fanoutRan ? "no max rate" : "not run",
      fanoutRan ? mark(!!r.half && r.half.p99 < 50) : "",
    ],
    idle
      ? [
          `server RSS with ${n(idle.streams)} idle streams (${n(idle.connections)} connections)`,
          "< 1 GiB",
          `**${mib(idle.rssMax)}** (${mib(idle.rssBefore)} before; ${((idle.rssMax - idle.rssBefore) / idle.streams / 1024).toFixed(1)} KiB per stream)`,
          mark(idle.rssMax < 2 ** 30),
        ]
      : [`server RSS with ${n(c.idleStreams)} idle streams`, "< 1 GiB", "not run", ""],
    [
      `snapshot of ${n(r.snapshot?.[0]?.events ?? c.snapshotTasks)} running tasks, call to snapshot_complete (median of ${r.snapshot?.length ?? 0})`,
      "< 2 s",
      ...timed(r.snapshot, 2000),
    ],
    [`resume replay of ${n(r.replay?.[0]?.events ?? c.replayEvents)} events (median of ${r.replay?.length ?? 0})`, "< 1 s", ...timed(r.replay, 1000)],
    ["server RSS during fan-out (max)", "–", fanoutRan ? mib(Math.max(...r.steps.map((s) => s.usage.rssMaxBytes))) : "not run", ""],
  ];
  return ["| figure | goal | measured | |", "| --- | --- | --- | --- |", ...rows.map((row) => `| ${row.join(" | ")} |`)].join("\n");
}

export function stepsTable(r: Report): string {
  const rows = [...r.steps, ...(r.half ? [r.half] : [])];
  return [
    "| producer target | events/s written | deliveries/s | expected | p50 ms | p99 ms | max ms | drain ms | server cores | server CPU µs per delivery | client cores | producer cores | other processes, cores | server RSS | sustained |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ...rows.map(
      (s) =>
        `| ${s.label} | ${n(s.eventsPerSec)} | ${n(s.deliveriesPerSec)} | ${n(s.expectedDeliveriesPerSec)} | ${s.p50} | ${s.p99} | ${s.max} | ` +
        `${n(s.drainMs)} | ${cores(s.usage.serverCores)} | ${perDelivery(s.usage.serverCores, s.deliveriesPerSec)} | ${cores(s.usage.clientCores)} | ${cores(s.producerCores)} | ${cores(others(s.usage, s.producerCores))} | ` +
        `${mib(s.usage.rssMaxBytes)} | ${s.sustained ? "yes" : "no"} |`,
    ),
  ].join("\n");
}

export function rawTable(r: Report): string {
  return [
    "| raw server | deliveries/s | p50 ms | p99 ms | server cores | client cores | client CPU µs per delivery | other processes, cores | server RSS |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...r.raw.map(
      (x) =>
        `| ${x.mode === "h2" ? "node:http2, bytes written directly" : "connect-node handler"} | ${n(x.deliveriesPerSec)} | ${x.p50} | ${x.p99} | ` +
        `${cores(x.usage.serverCores)} | ${cores(x.usage.clientCores)} | ${perDelivery(x.usage.clientCores, x.deliveriesPerSec)} | ${cores(others(x.usage, 0))} | ${mib(x.usage.rssMaxBytes)} |`,
    ),
  ].join("\n");
}

export function rssTable(r: Report): string {
  return ["| phase | server RSS |", "| --- | ---: |", ...r.rss.map((x) => `| ${x.phase} | ${mib(x.bytes)} |`)].join("\n");
}

/** The whole block of one run: goals, then the detail tables. */
export function runBlock(r: Report): string {
  const w = r.writesAlone;
  const parts = [
    `Run of ${r.date} at ${r.revision} on ${r.machine}, ${r.dialect === "sqlite" ? "SQLite" : "PostgreSQL"}, in ${(r.runtimeSeconds / 60).toFixed(1)} min: ` +
      `\`${r.command}\`. Load average ${r.loadBefore.toFixed(2)} before the run, ${r.loadAfter.toFixed(2)} after.` +
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
        `**${n(w.dispatchPerSec)} DispatchTask/s = ${n(2 * w.dispatchPerSec)} events/s**, call p50 ${w.rpcP50.toFixed(1)} ms / p99 ${w.rpcP99.toFixed(1)} ms, ` +
        `server ${cores(w.usage.serverCores)} cores, producer ${cores(w.producerCores)} cores, other processes ${cores(others(w.usage, w.producerCores))} cores.`,
    );
  }
  if (r.steps.length) {
    parts.push("", "Producer steps with the fan-out streams open (each step runs its rate, then waits for the streams to drain):", "", stepsTable(r));
  }
  if (r.raw.length) parts.push("", "Raw transport, same clients, same streams:", "", rawTable(r));
  parts.push("", "Server memory by phase (VmRSS):", "", rssTable(r));
  const notes: string[] = [];
  const cpu = (runs: { serverCores: number; clientCores: number }[]) =>
    `server ${runs.map((x) => cores(x.serverCores)).join(", ")} cores, client ${runs.map((x) => cores(x.clientCores)).join(", ")} cores`;
  if (r.snapshot?.length) notes.push(`While the snapshot was sent: ${cpu(r.snapshot)}.`);
  if (r.replay?.length) notes.push(`While the replay was sent: ${cpu(r.replay)}.`);
  if (r.seedSeconds !== undefined) notes.push(`Seeding ${n(r.cfg.snapshotTasks)} running tasks (${n(2 * r.cfg.snapshotTasks)} events) took ${r.seedSeconds.toFixed(1)} s.`);
  if (r.idle) {
    notes.push(
      `${n(r.idle.streams)} idle streams opened in ${(r.idle.openMs / 1000).toFixed(1)} s; the server's taskstream_streams_active gauge read ${n(r.idle.activeGauge)}.`,
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
npm run bench:stream-fanout -- --quick          # small sizes, ~1 min
\`\`\`

How it runs:

- **Processes.** The server is \`node bin/taskstream.js serve --port 0\` on a temp
  SQLite file (\`--dialect postgres\`: an embedded PostgreSQL), a child process;
  its RSS is read from \`/proc/<pid>/status\` (VmRSS) every 200 ms and its CPU from
  \`/proc/<pid>/stat\`. Every stream client runs in the bench's own process;
  the producer is a third process. *cores* columns are CPU seconds per second:
  1.00 is one core busy; *other processes* is what the rest of the 2-core machine
  used meanwhile (anything else running, which skews every figure: check it).
- **Clients.** connect-node \`createGrpcTransport\` (gRPC over HTTP/2) with the
  generated client, which decodes every message. connect-node opens one HTTP/2
  connection per transport and puts all that transport's calls on it as
  streams; Node's client assumes the peer allows 100 concurrent streams until
  the server's SETTINGS arrive, and Node's server advertises 2^32-1. The bench
  keeps at most 100 streams per connection so no stream waits either way:
  the 1,100 fan-out streams go round-robin over 16 transports (~69 per
  connection), the 10,000 idle streams over 100.
- **Fan-out.** 100 streams with no filter and 1,000 each filtered to its own
  agent (\`agent-0\`…\`agent-999\`), all \`skip_snapshot\` (the database holds the
  100,000 seeded running tasks). The producer calls \`DispatchTask\` with
  \`claim\` for a random one of those agents, so each call writes 2 events in one
  transaction, and each event is delivered 101 times (every unfiltered stream,
  and its agent's). It steps its rate up by 1.4× from 100 dispatches/s; a step
  is *sustained* when the producer kept ≥ 90% of its rate, the streams received
  ≥ 90% of the deliveries those writes call for, p99 stayed under 1 s and no
  call failed. The ladder stops at the first unsustained step, then one step
  runs the producer flat out (32 calls in flight; it counts as sustained, at
  the rate it reached, when the streams kept up), then one at half the best
  sustained rate gives the latency figures. If the first step is not
  sustained, the ladder steps down instead (at most 3 times).
- **Latency** is commit to receipt: the client's \`Date.now()\` at receipt minus
  the event's \`event_time\`, which the server stamps in the writing transaction
  (its clock reading when the transaction starts, so the figure includes the
  write itself), same machine, millisecond precision.
- **Server path.** taskstream answers gRPC (binary) calls itself
  (\`src/server/grpc-fast-path.ts\`), not through connect-node's handler: each
  event's frame (its stored bytes behind the 5-byte prefix) is built once and
  shared by every stream that sends it, and a stream's frames of one
  event-loop turn leave in one corked write. A parked stream is woken only by
  an event its filter matches (\`src/fanout/stream-waiters.ts\`), not at every
  commit. The *connect-node handler* raw row below is the ceiling of the path
  the server took before.
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
