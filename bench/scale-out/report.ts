/** The scale-out figures as markdown, and their section of bench/README.md. */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { FanoutResult, LatencySummary } from "./fanout.js";
import type { LifecycleResult } from "./lifecycle.js";
import type { CpuSplit } from "./procs.js";

export interface ConfigResult {
  replicas: number;
  lifecycle: LifecycleResult;
  lifecycleCpu: CpuSplit;
  /** Mean PostgreSQL sessions waiting on a lock (row or transaction) during the phase. */
  lifecycleLockWaiters: number;
  fanout: FanoutResult;
  fanoutCpu: CpuSplit;
  /** p99 of this (client) process's event-loop delay during fan-out, in ms. */
  clientLoopDelayP99: number;
  /** Peak RSS of each replica, bytes. */
  rss: number[];
  /** Before the configuration: how long the bench waited for an idle machine, and whether it got one. */
  quiet: { waited: number; quiet: boolean; lastBusy: number };
}

export interface RunSettings {
  tasks: number;
  lifecycleSeconds: number;
  producers: number;
  workers: number;
  batch: number;
  completeConcurrency: number;
  agents: number;
  unfiltered: number;
  rate: number;
  inFlight: number;
  seconds: number;
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–");
const ms = (n: number) => (Number.isFinite(n) ? (n < 10 ? fmt(n, 1) : fmt(n)) : "–");
const latency = (l: LatencySummary | undefined) => (l ? `${ms(l.p50)} / ${ms(l.p99)} ms` : "–");
const mib = (b: number) => fmt(b / 2 ** 20);
const cores = (s: number, wall: number) => fmt(s / wall, 2);

export function resultsTable(results: ConfigResult[]): string {
  const rows = [
    "| replicas | lifecycle tasks/s | fan-out deliveries/s | commit→receipt p50 / p99, writer's subscribers | p50 / p99, other replicas' subscribers | peak RSS per replica (MiB) | lost / duplicate / out of order |",
    "| ---: | ---: | ---: | ---: | ---: | --- | --- |",
  ];
  for (const r of results) {
    const f = r.fanout;
    rows.push(
      `| ${r.replicas} | ${fmt(r.lifecycle.tasksPerSecond)} (${fmt(r.lifecycle.tasks)} tasks) | ${fmt(f.deliveriesPerSecond)} | ${latency(f.local)} | ${latency(f.remote)} | ${r.rss.map(mib).join(" / ")} | ${f.missing} / ${f.duplicates} / ${f.outOfOrder} |`,
    );
  }
  return rows.join("\n");
}

export function cpuTable(results: ConfigResult[]): string {
  const rows = [
    "| replicas | phase | wall s | replicas | PostgreSQL | bench client | other processes | notes |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const r of results) {
    const l = r.lifecycleCpu;
    const f = r.fanoutCpu;
    rows.push(
      `| ${r.replicas} | lifecycle | ${fmt(l.seconds, 1)} | ${cores(l.replicas, l.seconds)} | ${cores(l.postgres, l.seconds)} | ${cores(l.client, l.seconds)} | ${cores(l.other, l.seconds)} | mean claim batch ${fmt(r.lifecycle.meanBatch, 1)}; ${fmt(r.lifecycle.crossReplicaCompletions)} completions on another replica than the claim; ${fmt(r.lifecycleLockWaiters, 1)} sessions waiting on a lock (mean) |`,
    );
    rows.push(
      `| ${r.replicas} | fan-out | ${fmt(f.seconds, 1)} | ${cores(f.replicas, f.seconds)} | ${cores(f.postgres, f.seconds)} | ${cores(f.client, f.seconds)} | ${cores(f.other, f.seconds)} | ${fmt(r.fanout.dispatched)} dispatches at ${fmt(r.fanout.dispatchRate)}/s (round trip p50 / p99 ${latency(r.fanout.dispatchLatency)}) to ${r.fanout.streams} streams; client event-loop delay p99 ${ms(r.clientLoopDelayP99)} ms |`,
    );
  }
  return rows.join("\n");
}

export function settingsLine(s: RunSettings): string {
  return (
    `lifecycle: up to ${fmt(s.tasks)} tasks or ${s.lifecycleSeconds} s of dispatching, ${s.producers} producer loops, ${s.workers} worker loops claiming up to ${s.batch} and completing ${s.completeConcurrency} at a time; ` +
    `fan-out: ${s.agents} streams each filtered to one agent + ${s.unfiltered} unfiltered, ${s.rate} dispatches/s (at most ${s.inFlight} in flight) for ${s.seconds} s through replica 1`
  );
}

/** Replaces the `## scale-out` section (heading to the next `## ` or the end), or appends it. Re-reads the file first. */
export function writeReadmeSection(path: string, body: string): void {
  let text = existsSync(path) ? readFileSync(path, "utf8") : "# Benchmarks\n";
  const section = `## scale-out\n\n${body.trim()}\n`;
  const heading = /^## scale-out[ \t]*$/m.exec(text);
  if (!heading) {
    text = `${text.trimEnd()}\n\n${section}`;
  } else {
    const after = heading.index + heading[0].length;
    const next = /^## /m.exec(text.slice(after));
    const end = next ? after + next.index : text.length;
    text = text.slice(0, heading.index) + section + (next ? "\n" : "") + text.slice(end);
  }
  writeFileSync(path, text);
}

/** Whether each configuration started on an idle machine. */
export function quietLine(results: ConfigResult[]): string {
  const parts = results.map((r) =>
    r.quiet.quiet
      ? `${r.replicas}: idle after ${Math.round(r.quiet.waited)} s`
      : `${r.replicas}: never idle in ${Math.round(r.quiet.waited)} s (${r.quiet.lastBusy.toFixed(2)} cores busy)`,
  );
  return `Before each configuration the bench waited for a second in which the whole machine used under 0.35 cores (${parts.join("; ")}).`;
}
