/**
 * bench/stream-fanout: StreamTasks fan-out, measured against the raw
 * transport in the same run. Prints figures (it passes or fails nothing) and
 * writes them to the "## stream-fanout" section of bench/README.md.
 *
 *   npm run bench:stream-fanout -- [--quick] [--dialect sqlite|postgres] [--profile [--profile-rate N]] [--no-readme]
 *     [--client go|node|go,node] [--producer go|node]
 *     [--agents 1000] [--unfiltered 100] [--connections 16] [--idle-streams 10000]
 *     [--streams-per-connection 100] [--snapshot-tasks 100000] [--replay-events 100000]
 *     [--step-seconds 8] [--start-rate 100] [--rate-factor 1.4] [--max-steps 12]
 *     [--half-seconds 15] [--raw-seconds 8] [--concurrency 32] [--dispatch-batch 50] [--producer-tick-ms 10] [--repeats 3]
 *     [--phases snapshot,raw,fanout,idle] [--quiet-wait-seconds 45] [--quiet-budget-seconds 240]
 *
 * Processes: the server (`node bin/taskstream.js serve`) and the raw server
 * are children; the producer is a child. The stream clients are the Go reader
 * (clients/go/cmd/stream-reader, a child, built at the start of the run), or
 * connect-node's createGrpcTransport in this process (`--client node`), or
 * both in turn (`--client go,node`); the default is go when it builds. The
 * producer is clients/go/cmd/producer (`--producer go`, the default when it
 * builds) or producer.ts forked (`--producer node`): the same dispatches,
 * paced the same way; the report's settings line says which ran.
 */
import { execFileSync, fork } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { startBenchPostgres } from "../support/postgres.js";
import { CLIENT_LABEL, goReaders, nodeReaders, type ClientKind, type ReaderGroup, type Readers, type Request } from "./clients.js";
import { PhaseSampler, rssBytes, sleep, waitForQuiet, type PhaseUsage } from "./procs.js";
import { spawnServer, type Spawned } from "../support/server-process.js";
import { loopDelta, loopMetrics } from "../support/proc-stats.js";
import {
  dispatchShape,
  goProducer,
  nodeProducer,
  PRODUCER_LABEL,
  type ProduceRequest,
  type ProduceResult,
  type ProducerProcess,
} from "./producer.js";
import { mainThreadProfile, summarizeProfile } from "../support/cpu-profile.js";
import { buildGoCommand, goOrNode } from "../support/go-command.js";
import { pct, printAndWrite, type ClientFigures, type RawResult, type Report, type StepResult } from "./report.js";
import type { SeedRequest, SeedResult } from "./seed.js";

const here = dirname(fileURLToPath(import.meta.url));
const DAY_MS = 86_400_000;
const root = join(here, "..", "..");

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    dialect: { type: "string", default: "sqlite" },
    profile: { type: "boolean", default: false },
    "profile-rate": { type: "string" },
    client: { type: "string" },
    producer: { type: "string" },
    "no-readme": { type: "boolean", default: false },
    "quiet-wait-seconds": { type: "string" },
    "quiet-budget-seconds": { type: "string" },
    phases: { type: "string", default: "snapshot,raw,fanout,idle" },
    agents: { type: "string" },
    unfiltered: { type: "string" },
    connections: { type: "string" },
    "idle-streams": { type: "string" },
    "streams-per-connection": { type: "string" },
    "snapshot-tasks": { type: "string" },
    "replay-events": { type: "string" },
    "step-seconds": { type: "string" },
    "start-rate": { type: "string" },
    "rate-factor": { type: "string" },
    "max-steps": { type: "string" },
    "half-seconds": { type: "string" },
    "raw-seconds": { type: "string" },
    concurrency: { type: "string" },
    "dispatch-batch": { type: "string" },
    "producer-tick-ms": { type: "string" },
    repeats: { type: "string" },
  },
  strict: true,
});

const quick = values.quick;
const num = (name: keyof typeof values, full: number, short: number): number => {
  const raw = values[name];
  if (raw === undefined || typeof raw === "boolean") return quick ? short : full;
  const n = Number(String(raw).replaceAll("_", ""));
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: expected a positive number, got "${raw}"`);
  return n;
};
const dialect = values.dialect;
if (dialect !== "sqlite" && dialect !== "postgres") throw new Error(`--dialect: sqlite or postgres, not "${dialect}"`);

const PHASES = ["snapshot", "raw", "fanout", "idle"];
const phases = new Set(values.phases.split(",").map((p) => p.trim()));
for (const p of phases) if (!PHASES.includes(p)) throw new Error(`--phases: ${p} is not one of ${PHASES.join(",")}`);

const cfg = {
  agents: num("agents", 1000, 100),
  unfiltered: num("unfiltered", 100, 10),
  connections: num("connections", 16, 4),
  idleStreams: num("idle-streams", 10_000, 1000),
  streamsPerConnection: num("streams-per-connection", 100, 100),
  snapshotTasks: num("snapshot-tasks", 100_000, 10_000),
  replayEvents: num("replay-events", 100_000, 10_000),
  stepSeconds: num("step-seconds", 8, 3),
  startRate: num("start-rate", 100, 100),
  rateFactor: num("rate-factor", 1.4, 1.6),
  maxSteps: num("max-steps", 12, 4),
  halfSeconds: num("half-seconds", 15, 4),
  rawSeconds: num("raw-seconds", 8, 3),
  concurrency: num("concurrency", 32, 16),
  dispatchBatch: num("dispatch-batch", 50, 50),
  producerTickMs: num("producer-tick-ms", 10, 10),
  repeats: num("repeats", 3, 1),
  quietWaitSeconds: values["quiet-wait-seconds"] === "0" ? 0 : num("quiet-wait-seconds", 45, 5),
  /** All the quiet waits of a run together stop at this. */
  quietBudgetSeconds: num("quiet-budget-seconds", 240, 20),
};
if (cfg.replayEvents > 2 * cfg.snapshotTasks) throw new Error("--replay-events: the seed writes 2 events per snapshot task; ask for fewer");

const command = ["npm run bench:stream-fanout", ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : [])].join(" ");
const log = (line: string) => process.stderr.write(`${line}\n`);
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

/** Runs a bench script in a child process and returns its one answer. */
function inChild<T>(script: string, message: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, script), [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    child.once("message", (m: { ok: boolean; result?: T; error?: string }) => {
      child.kill();
      if (m.ok) resolve(m.result!);
      else reject(new Error(`${script}: ${m.error}`));
    });
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code}`)));
    child.send(message as never);
  });
}

/** The producer process (Go or Node, see producer.ts), kept for the whole fan-out phase. */
class Producer {
  private runs = 0;

  constructor(private readonly proc: ProducerProcess) {}

  run(request: Omit<ProduceRequest, "tag" | "agents" | "concurrency" | "batch" | "tickMs"> & { concurrency?: number }): Promise<ProduceResult> {
    return this.proc.run({
      concurrency: cfg.concurrency,
      batch: cfg.dispatchBatch,
      tickMs: cfg.producerTickMs,
      ...request,
      agents: cfg.agents,
      tag: `p${process.pid}-${Date.now()}-${this.runs++}`,
    } satisfies ProduceRequest);
  }

  stop(): void {
    this.proc.stop();
  }
}

/**
 * The producer to dispatch with: --producer, or go when clients/go/cmd/producer
 * builds (node otherwise, and the report says why). The report's settings
 * line names it (in clientNote, which it prints after the stream clients).
 */
async function chooseProducer(report: Report): Promise<Producer> {
  const { paths, note } = goOrNode("producer", values.producer, root, workDir, ["producer"]);
  const proc = paths ? await goProducer(paths.producer) : nodeProducer();
  log(`producer: ${PRODUCER_LABEL[proc.kind]}`);
  report.clientNote = [report.clientNote, `producer: ${PRODUCER_LABEL[proc.kind]}${note ? ` (${note})` : ""}`].filter(Boolean).join("; ");
  return new Producer(proc);
}

/**
 * The server as `taskstream serve` runs it. Leases and timeouts up to a day
 * are allowed, so that the sweeper never ends a bench task mid-run (which
 * would write events the producer did not ask for).
 */
function startTaskstream(database: string, nodeFlags: string[] = []): Promise<Spawned> {
  const args = [...nodeFlags, join(root, "bin", "taskstream.js"), "serve", "--port", "0", "--database", database, "--log-level", "info"];
  // Spawned.stop() sends SIGTERM: no drain, or every stop would wait out its 5 s default.
  args.push("--shutdown-drain-ms", "0");
  args.push("--max-lease-ms", String(DAY_MS), "--max-task-timeout-ms", String(DAY_MS));
  return spawnServer(process.execPath, args, "taskstream listening", "taskstream");
}

/** The raw server (see raw-server.ts): as fast as the clients take events, or `eventsPerSec`. */
function startRaw(mode: "h2" | "connect", eventsPerSec = 0): Promise<Spawned> {
  const args = ["--import", "tsx", join(here, "raw-server.ts"), "--mode", mode, "--agents", String(cfg.agents), "--rate", String(eventsPerSec)];
  return spawnServer(process.execPath, args, "raw listening", `raw-${mode}`);
}

/** The fan-out streams: `unfiltered` with no filter, one per agent filtered to it; all live only. */
async function openFanout(readers: Readers, url: string): Promise<ReaderGroup> {
  const group = readers.group(url, cfg.connections);
  const heartbeatInterval = { seconds: 60n };
  const requests: Request[] = [];
  // Unfiltered streams first, so that round-robin spreads them over the connections.
  for (let i = 0; i < cfg.unfiltered; i++) requests.push({ skipSnapshot: true, heartbeatInterval });
  for (let a = 0; a < cfg.agents; a++) requests.push({ filter: { agentId: `agent-${a}` }, skipSnapshot: true, heartbeatInterval });
  await group.open(requests);
  if (!(await group.waitUntil({ live: requests.length }, 60_000))) {
    const s = await group.stats();
    await group.close();
    throw new Error(`only ${s.live} of ${requests.length} streams went live; ${s.errors.slice(0, 3).join("; ")}`);
  }
  return group;
}

/** CPU the client processes use from start() to stop(), in cores. */
function clientMeter(readers: Readers): { stop(): number } {
  const t0 = performance.now();
  const cpu0 = readers.cpuSeconds();
  return { stop: () => (readers.cpuSeconds() - cpu0) / ((performance.now() - t0) / 1000) };
}

/** A PhaseSampler of the server whose clientCores are the readers' (this process, and the Go reader's). */
function sampleWith(readers: Readers, pid: number): { stop(): PhaseUsage } {
  const sampler = new PhaseSampler(pid).start();
  const client = clientMeter(readers);
  return { stop: () => ({ ...sampler.stop(), clientCores: client.stop() }) };
}

/** Deliveries per second over a window, and the latency of what arrived from its start until the streams drained. */
async function measureWindow(
  readers: Readers,
  group: ReaderGroup,
  pid: number,
  seconds: number,
  drive: () => Promise<ProduceResult | undefined>,
  caughtUp: (produced?: ProduceResult) => Promise<void>,
): Promise<{ deliveriesPerSec: number; p50: number; p99: number; max: number; usage: PhaseUsage; produced?: ProduceResult; drainMs: number; orderErrors: number }> {
  const warm = Math.min(1, seconds / 4);
  const sampler = sampleWith(readers, pid);
  const driving = drive();
  await sleep(warm * 1000);
  await group.latency(true);
  const s0 = await group.stats();
  const t0 = performance.now();
  await sleep((seconds - warm) * 1000);
  const produced = await driving;
  const s1 = await group.stats();
  const t1 = performance.now();
  const usage = sampler.stop();
  const drainStart = performance.now();
  await caughtUp(produced);
  const drainMs = performance.now() - drainStart;
  const latency = await group.latency();
  const end = await group.stats();
  if (end.errorCount > 0) log(`  ${end.errorCount} stream errors, first: ${end.errors[0]}`);
  if (end.orderErrors > s0.orderErrors) log(`  ${end.orderErrors - s0.orderErrors} events out of sequence order, first: ${end.firstOrder}`);
  return {
    deliveriesPerSec: (s1.deliveries - s0.deliveries) / ((t1 - t0) / 1000),
    p50: latency.p50,
    p99: latency.p99,
    max: latency.max,
    usage,
    produced,
    drainMs,
    orderErrors: end.orderErrors - s0.orderErrors,
  };
}

/** Waits for the machine to be idle before a measurement, and keeps account of the waits. */
const quietness = { waits: 0, waitedMs: 0, notQuiet: [] as string[] };
async function quiet(what: string): Promise<void> {
  if (cfg.quietWaitSeconds === 0) return;
  const left = cfg.quietBudgetSeconds * 1000 - quietness.waitedMs;
  const q = await waitForQuiet(Math.max(0, Math.min(cfg.quietWaitSeconds * 1000, left)));
  quietness.waits++;
  quietness.waitedMs += q.waitedMs;
  if (q.waitedMs > 1500) log(`  (waited ${(q.waitedMs / 1000).toFixed(0)} s for the machine to be idle before: ${what})`);
  if (!q.quiet) {
    quietness.notQuiet.push(`${what} (${q.busyCores.toFixed(2)} cores busy)`);
    log(`  (the machine was still busy before ${what}: ${q.busyCores.toFixed(2)} cores; measuring anyway)`);
  }
}

/** Things to stop if a phase fails midway, latest first. */
const cleanups: (() => Promise<void> | void)[] = [];

async function withCleanup<T extends { stop(): unknown }>(thing: T, work: (thing: T) => Promise<void>): Promise<void> {
  const cleanup = () => void thing.stop();
  cleanups.push(cleanup);
  try {
    await work(thing);
  } finally {
    cleanups.splice(cleanups.indexOf(cleanup), 1);
    await thing.stop();
  }
}

/**
 * One stream on a fresh connection, until `until` holds: the snapshot's
 * snapshot_complete, or the replay's last event. Returns the time from the
 * call to then, the events received, and the CPU meanwhile.
 */
async function timedStream(readers: Readers, server: Spawned, request: Request, until: (received: number) => { live?: number; received?: number }, label: string) {
  const group = readers.group(server.url, 1);
  await group.setMeasuring(false);
  const run = sampleWith(readers, server.pid);
  const t0 = performance.now();
  await group.open([request]);
  const ok = await group.waitUntil({ from: 0, to: 1, ...until(cfg.replayEvents) }, 120_000);
  const ms = performance.now() - t0;
  const usage = run.stop();
  const s = await group.stats(0, 1);
  await group.close();
  if (!ok) throw new Error(`${label}: ${s.errors[0] ?? "timed out"}`);
  if (s.orderErrors) log(`  ${s.orderErrors} events out of sequence order, first: ${s.firstOrder}`);
  return { ms, events: s.minReceived ?? s.deliveries, serverCores: usage.serverCores, clientCores: usage.clientCores, orderErrors: s.orderErrors };
}

/** Seeds the running tasks (once), for the snapshot and the replay. */
async function seedPhase(database: string, report: Report): Promise<SeedResult> {
  log(`\n== seed: ${fmt(cfg.snapshotTasks)} running tasks (${fmt(2 * cfg.snapshotTasks)} events) through the storage layer`);
  let templateTaskId = "";
  // The server migrates the fresh database; one DispatchTask with claim makes the task the seed clones.
  await withCleanup(await startTaskstream(database), async (server) => {
    const tasks = createClient(TaskService, createGrpcTransport({ baseUrl: server.url }));
    const { task } = await tasks.dispatchTask({
      ...dispatchShape,
      toolName: "seed-tool",
      toolCallId: "seed-template",
      agentId: "seed-template",
      args: { query: "seeded task", n: -1 },
    });
    templateTaskId = task!.taskId;
  });
  const seeded = await inChild<SeedResult>("seed.ts", {
    location: database,
    templateTaskId,
    tasks: cfg.snapshotTasks,
    agents: 1000,
  } satisfies SeedRequest);
  log(`  ${(seeded.seedMs / 1000).toFixed(1)} s, log at sequence ${fmt(seeded.lastSequence)}`);
  report.seedSeconds = seeded.seedMs / 1000;
  return seeded;
}

/** Times the snapshot and the resume replay with one client, on a fresh server. */
async function snapshotPhase(database: string, seeded: SeedResult, readers: Readers, report: Report, figures: ClientFigures): Promise<void> {
  const who = CLIENT_LABEL[readers.kind];
  await withCleanup(await startTaskstream(database), async (server) => {
    await sleep(500);
    report.rss.push({ phase: `server started on the seeded database (${who} client)`, bytes: rssBytes(server.pid) });
    await quiet(`the snapshot (${readers.kind})`);
    const sampler = new PhaseSampler(server.pid).start();
    log(`\n== snapshot, ${who} client: one unfiltered StreamTasks, from the call to snapshot_complete`);
    figures.snapshot = [];
    for (let i = 0; i < cfg.repeats; i++) {
      const r = await timedStream(readers, server, {}, () => ({ live: 1 }), "snapshot");
      figures.snapshot.push(r);
      log(`  ${fmt(r.events)} tasks in ${r.ms.toFixed(0)} ms; server ${r.serverCores.toFixed(2)} cores, client ${r.clientCores.toFixed(2)} cores`);
    }
    log(`\n== resume replay, ${who} client: after_sequence = last - ${fmt(cfg.replayEvents)}, until that many events arrived`);
    figures.replay = [];
    for (let i = 0; i < cfg.repeats; i++) {
      const request = { afterSequence: BigInt(seeded.lastSequence - cfg.replayEvents) };
      const r = await timedStream(readers, server, request, (n) => ({ received: n }), "replay");
      figures.replay.push(r);
      log(`  ${fmt(r.events)} events in ${r.ms.toFixed(0)} ms; server ${r.serverCores.toFixed(2)} cores, client ${r.clientCores.toFixed(2)} cores`);
    }
    report.rss.push({ phase: `snapshot and replay, ${who} client (max)`, bytes: sampler.stop().rssMaxBytes });
  });

  if (values.profile) {
    const what = `one snapshot, then one resume replay (${who} client)`;
    log(`\n== profile: ${what}`);
    await profiled(database, what, report, async (server) => {
      await timedStream(readers, server, {}, () => ({ live: 1 }), "snapshot");
      await timedStream(readers, server, { afterSequence: BigInt(seeded.lastSequence - cfg.replayEvents) }, (n) => ({ received: n }), "replay");
    });
  }
}

/** The raw transport's ceiling, both ways, with the fan-out streams of one client. */
async function rawPhase(readers: Readers, figures: ClientFigures): Promise<void> {
  for (const mode of ["h2", "connect"] as const) {
    log(`\n== raw ceiling (${mode}), ${CLIENT_LABEL[readers.kind]} client: ${fmt(cfg.unfiltered + cfg.agents)} streams over ${cfg.connections} connections, ${cfg.rawSeconds} s`);
    // The raw server streams as soon as a stream opens: wait for quiet before.
    await quiet(`raw ${mode} (${readers.kind})`);
    await withCleanup(await startRaw(mode), async (raw) => {
      const group = await openFanout(readers, raw.url);
      const m = await measureWindow(readers, group, raw.pid, cfg.rawSeconds, async () => undefined, async () => {});
      await group.close();
      figures.raw.push({ mode, deliveriesPerSec: m.deliveriesPerSec, p50: m.p50, p99: m.p99, usage: m.usage, orderErrors: m.orderErrors });
      log(
        `  ${fmt(m.deliveriesPerSec)} deliveries/s; p50 ${m.p50} ms, p99 ${m.p99} ms; server ${m.usage.serverCores.toFixed(2)} cores, ` +
          `clients ${m.usage.clientCores.toFixed(2)} cores, machine ${m.usage.machineCores.toFixed(2)} cores; RSS ${mib(m.usage.rssMaxBytes)}`,
      );
    });
  }
}

/**
 * The raw transport paced at taskstream's half-rate event rate, same streams:
 * the latency the transport, the clients and this machine add on their own.
 */
async function rawAtRate(readers: Readers, eventsPerSec: number): Promise<RawResult> {
  const rate = Math.round(eventsPerSec);
  log(`\n== raw transport (h2) paced at ${fmt(rate)} events/s, ${CLIENT_LABEL[readers.kind]} client, ${cfg.halfSeconds} s`);
  await quiet(`raw at ${fmt(rate)} events/s (${readers.kind})`);
  let result: RawResult | undefined;
  await withCleanup(await startRaw("h2", rate), async (raw) => {
    const group = await openFanout(readers, raw.url);
    const m = await measureWindow(readers, group, raw.pid, cfg.halfSeconds, async () => undefined, async () => {});
    await group.close();
    result = { mode: "h2", pacedEventsPerSec: rate, deliveriesPerSec: m.deliveriesPerSec, p50: m.p50, p99: m.p99, usage: m.usage, orderErrors: m.orderErrors };
    log(
      `  ${fmt(m.deliveriesPerSec)} deliveries/s; p50 ${m.p50} ms, p99 ${m.p99} ms, max ${m.max} ms; server ${m.usage.serverCores.toFixed(2)} cores, ` +
        `clients ${m.usage.clientCores.toFixed(2)} cores, machine ${m.usage.machineCores.toFixed(2)} cores`,
    );
  });
  return result!;
}

/**
 * On a fresh server: writes alone (first client only), then the rate ladder
 * with one client's fan-out streams open, flat out, and half the best rate;
 * then the profile.
 */
async function fanoutPhase(database: string, readers: Readers, report: Report, figures: ClientFigures, producer: Producer): Promise<void> {
  const who = CLIENT_LABEL[readers.kind];
  await withCleanup(await startTaskstream(database), async (server) => {
    await sleep(500);
    report.rss.push({ phase: `fan-out server started (${who} client)`, bytes: rssBytes(server.pid) });

    if (!report.writesAlone) {
      log(`\n== writes alone: producer flat out (${cfg.concurrency} DispatchTasks calls of ${cfg.dispatchBatch} in flight), no streams open, ${cfg.stepSeconds} s`);
      await quiet("writes alone");
      const sampler = new PhaseSampler(server.pid).start();
      const p = await producer.run({ url: server.url, rate: 0, seconds: cfg.stepSeconds });
      const usage = sampler.stop();
      report.writesAlone = { dispatchPerSec: p.dispatched / p.seconds, rpcP50: p.rpcP50Ms, rpcP99: p.rpcP99Ms, usage, producerCores: p.cpuCores };
      log(
        `  ${fmt(p.dispatched / p.seconds)} dispatches/s = ${fmt((2 * p.dispatched) / p.seconds)} events/s; ` +
          `DispatchTasks p50 ${p.rpcP50Ms.toFixed(1)} ms, p99 ${p.rpcP99Ms.toFixed(1)} ms; server ${usage.serverCores.toFixed(2)} cores`,
      );
      if (p.errors) log(`  ${p.errors} errors, first: ${p.firstError}`);
    }

    log(`\n== fan-out, ${who} client: ${cfg.unfiltered} unfiltered + ${cfg.agents} agent-filtered streams over ${cfg.connections} connections`);
    const group = await openFanout(readers, server.url);
    await withCleanup({ stop: () => group.close() }, async () => {
      await sleep(1000);
      report.rss.push({ phase: `${fmt(cfg.unfiltered + cfg.agents)} fan-out streams open, no writes (${who} client)`, bytes: rssBytes(server.pid) });
      // Drained: every unfiltered stream reached the producer's last event.
      const caughtUp = async (p?: ProduceResult) => {
        if (p) await group.waitUntil({ from: 0, to: cfg.unfiltered, lastSequence: p.lastSequence }, 30_000);
      };
      const perEvent = cfg.unfiltered + 1;
      const steps = figures.steps;

      const step = async (rate: number, seconds: number, label?: string): Promise<StepResult> => {
        await quiet(`the step ${label ?? `${fmt(rate)}/s`} (${readers.kind})`);
        const loop0 = await loopMetrics(server.url);
        const m = await measureWindow(readers, group, server.pid, seconds, () => producer.run({ url: server.url, rate, seconds }), caughtUp);
        const loop = loopDelta(loop0, await loopMetrics(server.url));
        const p = m.produced!;
        const dispatchPerSec = p.dispatched / p.seconds;
        const expected = 2 * dispatchPerSec * perEvent;
        const result: StepResult = {
          label: label ?? `${fmt(rate)}/s`,
          targetDispatchPerSec: rate,
          dispatchPerSec,
          eventsPerSec: 2 * dispatchPerSec,
          deliveriesPerSec: m.deliveriesPerSec,
          expectedDeliveriesPerSec: expected,
          p50: m.p50,
          p99: m.p99,
          max: m.max,
          drainMs: m.drainMs,
          rpcP99: p.rpcP99Ms,
          usage: m.usage,
          loop,
          producerCores: p.cpuCores,
          errors: p.errors,
          orderErrors: m.orderErrors,
          sustained:
            (rate === 0 || dispatchPerSec >= 0.9 * rate) && m.deliveriesPerSec >= 0.9 * expected && m.p99 < 1000 && p.errors === 0,
        };
        log(
          `  ${result.label.padEnd(9)} ${fmt(result.eventsPerSec).padStart(6)} events/s -> ${fmt(m.deliveriesPerSec).padStart(8)} deliveries/s ` +
            `(expected ${fmt(expected)}); p50 ${m.p50} ms, p99 ${m.p99} ms, max ${m.max} ms; drain ${m.drainMs.toFixed(0)} ms; ` +
            `server ${m.usage.serverCores.toFixed(2)}, clients ${m.usage.clientCores.toFixed(2)}, producer ${p.cpuCores.toFixed(2)}, ` +
            `machine ${m.usage.machineCores.toFixed(2)} cores; RSS ${mib(m.usage.rssMaxBytes)}${result.sustained ? "" : "  (not sustained)"}\n` +
            `            server loop: ${loop.lateOver50} timer firings > 50 ms late (${loop.lateOver100} > 100 ms) of ${fmt(loop.samples)}; ` +
            `tail handed ${fmt(loop.handOffs)} events to streams, ${pct(loop.handOffsOver25, loop.handOffs)} > 25 ms and ` +
            `${pct(loop.handOffsOver50, loop.handOffs)} > 50 ms after commit; ` +
            `GC ${loop.gcRuns} runs (${loop.gcMajor} major, ${loop.gcOver25} over 25 ms), ${(loop.gcSeconds * 1000).toFixed(0)} ms; main thread waited for a CPU ${pct(m.usage.serverRunQueueShare, 1)} of the time`,
        );
        if (p.errors) log(`  ${p.errors} producer errors, first: ${p.firstError}`);
        return result;
      };

      // Up by rateFactor while sustained; if the first step is not, down (at most 3 times) until one is.
      let rate = cfg.startRate;
      for (let i = 0, down = 0; i < cfg.maxSteps; i++) {
        const result = await step(Math.round(rate), cfg.stepSeconds);
        steps.push(result);
        const anySustained = steps.some((s) => s.sustained);
        if (result.sustained) rate *= cfg.rateFactor;
        else if (!anySustained && down++ < 3 && rate / cfg.rateFactor >= 5) rate /= cfg.rateFactor;
        else break;
        if (result.sustained && down > 0) break;
      }
      // Between the best sustained step and the one above it that was not,
      // one more step at their geometric mean narrows the maximum to ~18%.
      const failed = steps[steps.length - 1];
      const best = steps.filter((s) => s.sustained).sort((a, b) => b.targetDispatchPerSec - a.targetDispatchPerSec)[0];
      if (!failed.sustained && best && best.targetDispatchPerSec < failed.targetDispatchPerSec) {
        steps.push(await step(Math.round(Math.sqrt(best.targetDispatchPerSec * failed.targetDispatchPerSec)), cfg.stepSeconds));
      }
      // Flat out only when the ladder ran out of steps still sustained: past
      // an unsustained step it only piles up minutes of backlog in the
      // clients, which the next step would then measure.
      if (steps.every((s) => s.sustained)) steps.push(await step(0, cfg.stepSeconds, "flat out"));
      // The best sustained step; flat out counts too (at the rate it reached) when the streams kept up with it.
      figures.max = steps.filter((s) => s.sustained).sort((a, b) => b.deliveriesPerSec - a.deliveriesPerSec)[0];
      if (figures.max) {
        const halfRate = Math.max(1, Math.round((figures.max.targetDispatchPerSec || figures.max.dispatchPerSec) / 2));
        log(`\n== half the maximum rate, ${who} client: ${fmt(halfRate)} dispatches/s for ${cfg.halfSeconds} s`);
        figures.half = await step(halfRate, cfg.halfSeconds, `half: ${fmt(halfRate)}/s`);
      }
      if (figures.half) figures.rawAtHalf = await rawAtRate(readers, figures.half.eventsPerSec);
      report.rss.push({ phase: `fan-out, ${who} client (max over all steps)`, bytes: Math.max(...steps.map((s) => s.usage.rssMaxBytes)) });
    });
  });

  // The profiler slows the server, so it gets a run of its own at the best sustained rate (or --profile-rate).
  if (values.profile) {
    const best = figures.max ? figures.max.targetDispatchPerSec || figures.max.dispatchPerSec : cfg.startRate;
    const rate = Math.round(values["profile-rate"] === undefined ? best : num("profile-rate", best, best));
    const what = `fan-out at ${fmt(rate)} dispatches/s for ${cfg.stepSeconds * 2} s (${who} client)`;
    log(`\n== profile: ${what}`);
    await profiled(database, what, report, async (server) => {
      const group = await openFanout(readers, server.url);
      const p = await producer.run({ url: server.url, rate, seconds: cfg.stepSeconds * 2 });
      await sleep(500);
      log(`  ${fmt((2 * p.dispatched) / p.seconds)} events/s, ${fmt((await group.stats()).deliveries)} deliveries`);
      await group.close();
    });
  }
}

/** Runs `work` against a server under `node --cpu-prof`, and adds the profile's summary to the report. */
async function profiled(database: string, what: string, report: Report, work: (server: Spawned) => Promise<void>): Promise<void> {
  const profileDir = join(workDir, `profile-${report.profiles.length}`);
  await withCleanup(await startTaskstream(database, ["--cpu-prof", "--cpu-prof-dir", profileDir]), work);
  const file = mainThreadProfile(profileDir);
  if (!file) {
    log("  no .cpuprofile was written");
    return;
  }
  // Kept outside the work directory, which is removed at the end.
  const kept = join(tmpdir(), `taskstream-fanout-server-${Date.now()}.cpuprofile`);
  copyFileSync(file, kept);
  log(`  profile kept at ${kept}`);
  report.profiles.push({ what, summary: summarizeProfile(kept, 30) });
}

/** Idle streams on a fresh server: its RSS before and with them open. */
async function idlePhase(database: string, readers: Readers, report: Report): Promise<void> {
  const connections = Math.ceil(cfg.idleStreams / cfg.streamsPerConnection);
  log(`\n== idle, ${CLIENT_LABEL[readers.kind]} client: ${fmt(cfg.idleStreams)} streams (skip_snapshot, 300 s heartbeat) over ${connections} connections`);
  await withCleanup(await startTaskstream(database), async (server) => {
    await sleep(1000);
    await quiet("idle streams");
    const before = rssBytes(server.pid);
    const sampler = new PhaseSampler(server.pid).start();
    const group = readers.group(server.url, connections);
    await withCleanup({ stop: () => group.close() }, async () => {
      const t0 = performance.now();
      const requests: Request[] = [];
      for (let i = 0; i < cfg.idleStreams; i++) {
        requests.push({ filter: { agentId: `idle-${i}` }, skipSnapshot: true, heartbeatInterval: { seconds: 300n } });
      }
      await group.open(requests);
      const ok = await group.waitUntil({ live: cfg.idleStreams }, 180_000);
      const openMs = performance.now() - t0;
      if (!ok) {
        const s = await group.stats();
        throw new Error(`idle: ${s.live} of ${cfg.idleStreams} live; ${s.errors.slice(0, 3).join("; ")}`);
      }
      await sleep(3000);
      const usage = sampler.stop();
      const metrics = await fetch(`${server.url}/metrics`).then((r) => r.text(), () => "");
      const active = Number(metrics.match(/^taskstream_streams_active (\d+)/m)?.[1] ?? NaN);
      report.idle = {
        client: readers.kind,
        streams: cfg.idleStreams,
        connections,
        openMs,
        rssBefore: before,
        rssAfter: usage.rssEndBytes,
        rssMax: usage.rssMaxBytes,
        activeGauge: active,
      };
      log(`  all live in ${openMs.toFixed(0)} ms; server RSS ${mib(before)} -> ${mib(usage.rssEndBytes)} (max ${mib(usage.rssMaxBytes)}); gauge ${active}`);
      report.rss.push({ phase: "idle server started", bytes: before }, { phase: `${fmt(cfg.idleStreams)} idle streams`, bytes: usage.rssMaxBytes });
    });
  });
}

/**
 * The clients to measure with: --client, or go when the Go reader builds
 * (node otherwise, and the report says why).
 */
function chooseClients(report: Report): { kinds: ClientKind[]; goPath?: string } {
  const asked = values.client?.split(",").map((c) => c.trim()).filter(Boolean);
  for (const c of asked ?? []) if (c !== "go" && c !== "node") throw new Error(`--client: go, node or go,node, not "${c}"`);
  const kinds = [...new Set((asked ?? ["go"]) as ClientKind[])];
  if (!kinds.includes("go")) return { kinds };
  log("building the Go reader (clients/go/cmd/stream-reader)");
  const built = buildGoCommand(root, workDir, "stream-reader");
  if (built.path) return { kinds, goPath: built.path };
  if (asked) throw new Error(`--client go: the Go reader did not build: ${built.error}`);
  report.clientNote = `the Go reader did not build (${built.error}), so the Node client measured`;
  log(`  ${report.clientNote}`);
  return { kinds: ["node"] };
}

/** The commit measured, and whether the working tree differed from it. */
function gitRevision(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src", "gen", "proto"], { cwd: root, encoding: "utf8" }).trim() !== "";
    return dirty ? `${head} with uncommitted changes in src/gen/proto` : head;
  } catch {
    return "unknown revision";
  }
}

const workDir = mkdtempSync(join(tmpdir(), "taskstream-fanout-"));

async function main(): Promise<void> {
  const runStarted = performance.now();
  const report: Report = {
    command,
    date: new Date().toISOString().slice(0, 10),
    revision: gitRevision(),
    machine: `${cpus().length} cores (${cpus()[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.versions.node}`,
    loadBefore: loadavg()[0],
    loadAfter: 0,
    dialect,
    cfg,
    clients: [],
    byClient: {},
    rss: [],
    profiles: [],
    runtimeSeconds: 0,
  };
  log(`stream-fanout: ${dialect}, ${quick ? "quick" : "full"} sizes; load average before: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  let database = join(workDir, "bench.db");
  let stopPostgres: (() => Promise<void>) | undefined;
  try {
    if (dialect === "postgres") {
      const pg = await startBenchPostgres("taskstream_fanout");
      database = pg.url;
      stopPostgres = pg.stop;
    }
    const { kinds, goPath } = chooseClients(report);
    report.clients = kinds;
    const readers = new Map<ClientKind, Readers>();
    for (const kind of kinds) {
      const r = kind === "go" ? await goReaders(goPath!) : nodeReaders();
      cleanups.push(() => r.stop());
      readers.set(kind, r);
      report.byClient[kind] = { raw: [], steps: [] };
    }
    log(`clients: ${kinds.map((k) => CLIENT_LABEL[k]).join(", ")}`);
    if (phases.has("snapshot")) {
      const seeded = await seedPhase(database, report);
      for (const kind of kinds) await snapshotPhase(database, seeded, readers.get(kind)!, report, report.byClient[kind]!);
    }
    if (phases.has("raw")) for (const kind of kinds) await rawPhase(readers.get(kind)!, report.byClient[kind]!);
    if (phases.has("fanout")) {
      await withCleanup(await chooseProducer(report), async (producer) => {
        for (const kind of kinds) await fanoutPhase(database, readers.get(kind)!, report, report.byClient[kind]!, producer);
      });
    }
    // The idle streams measure the server's memory: the first client's are enough.
    if (phases.has("idle")) await idlePhase(database, readers.get(kinds[0])!, report);
    report.loadAfter = loadavg()[0];
    report.quietness = quietness;
    report.runtimeSeconds = (performance.now() - runStarted) / 1000;
    printAndWrite(report, values["no-readme"] ? undefined : join(root, "bench", "README.md"));
  } finally {
    for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => {});
    await stopPostgres?.();
    rmSync(workDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
