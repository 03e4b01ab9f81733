/** Child processes of the bench: sampling RSS and CPU from /proc (spawning: ../support/server-process.ts). */
import { readFileSync } from "node:fs";
import { cpuSeconds, rssBytes, schedStat, sleep } from "../support/proc-stats.js";
export { cpuSeconds, rssBytes, sleep };

/** Busy and total jiffies of the whole machine, from /proc/stat. */
function machineTicks(): { busy: number; total: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = cpu[3] + (cpu[4] ?? 0);
  return { busy: total - idle, total };
}

export interface PhaseUsage {
  seconds: number;
  /** Server CPU as a share of one core (1 = one core busy). */
  serverCores: number;
  /** This (client) process's CPU, in cores. */
  clientCores: number;
  /** The whole machine's busy share, in cores (all processes, other users included). */
  machineCores: number;
  rssMaxBytes: number;
  rssEndBytes: number;
  /** Share of the time the server's main thread was runnable but waiting for a CPU (starved by other threads or processes). */
  serverRunQueueShare: number;
}

/**
 * Samples a server's RSS every 200 ms from start() to stop(), and the CPU the
 * server, this process and the machine used in between.
 */
export class PhaseSampler {
  private timer?: NodeJS.Timeout;
  private rssMax = 0;
  private startedAt = 0;
  private serverCpu0 = 0;
  private clientCpu0 = process.cpuUsage();
  private machine0 = machineTicks();
  private sched0 = { runNs: 0, waitNs: 0 };

  constructor(private readonly pid: number) {}

  start(): this {
    this.startedAt = performance.now();
    this.serverCpu0 = cpuSeconds(this.pid);
    this.clientCpu0 = process.cpuUsage();
    this.machine0 = machineTicks();
    this.sched0 = schedStat(this.pid);
    this.rssMax = rssBytes(this.pid);
    this.timer = setInterval(() => (this.rssMax = Math.max(this.rssMax, rssBytes(this.pid))), 200);
    return this;
  }

  stop(): PhaseUsage {
    clearInterval(this.timer);
    const seconds = (performance.now() - this.startedAt) / 1000;
    const client = process.cpuUsage(this.clientCpu0);
    const machine = machineTicks();
    const cores = Number(readFileSync("/proc/cpuinfo", "utf8").match(/^processor/gm)?.length ?? 1);
    const rssEnd = rssBytes(this.pid);
    return {
      seconds,
      serverCores: (cpuSeconds(this.pid) - this.serverCpu0) / seconds,
      clientCores: (client.user + client.system) / 1e6 / seconds,
      machineCores: ((machine.busy - this.machine0.busy) / Math.max(1, machine.total - this.machine0.total)) * cores,
      rssMaxBytes: Math.max(this.rssMax, rssEnd),
      rssEndBytes: rssEnd,
      serverRunQueueShare: (schedStat(this.pid).waitNs - this.sched0.waitNs) / 1e9 / seconds,
    };
  }
}

/** Latencies in whole milliseconds (event_time has millisecond precision), up to 120 s. */
export class Histogram {
  private counts = new Uint32Array(120_001);
  count = 0;
  max = 0;

  add(ms: number): void {
    const i = ms < 0 ? 0 : ms > 120_000 ? 120_000 : Math.round(ms);
    this.counts[i]++;
    this.count++;
    if (i > this.max) this.max = i;
  }

  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.max = 0;
  }

  quantile(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return i;
    }
    return this.max;
  }
}


/** Waits until `done()` or the timeout; returns whether it became true. */
export async function waitFor(done: () => boolean, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > until) return false;
    await sleep(stepMs);
  }
  return true;
}

/** The machine's busy cores over the next `ms`, all processes. */
export async function machineBusyCores(ms = 1000): Promise<number> {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  const cores = Number(readFileSync("/proc/cpuinfo", "utf8").match(/^processor/gm)?.length ?? 1);
  return ((b.busy - a.busy) / Math.max(1, b.total - a.total)) * cores;
}

/**
 * Waits (up to maxWaitMs) for a second in which the whole machine is nearly
 * idle, so that a measurement does not share the 2 cores with someone else's
 * work. Returns how long it waited, and whether the machine got quiet.
 */
export async function waitForQuiet(maxWaitMs: number, thresholdCores = 0.35): Promise<{ waitedMs: number; quiet: boolean; busyCores: number }> {
  const started = performance.now();
  let busy = await machineBusyCores(1000);
  while (busy > thresholdCores && performance.now() - started < maxWaitMs) busy = await machineBusyCores(1000);
  return { waitedMs: performance.now() - started, quiet: busy <= thresholdCores, busyCores: busy };
}
