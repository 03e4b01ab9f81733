/** The bench's processes: replica servers, and what /proc says about them and the machine. */
import { readdirSync, readFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { cpuSeconds, rssBytes, sleep } from "../support/proc-stats.js";
import { spawnServer, type Spawned } from "../support/server-process.js";
export { cpuSeconds, rssBytes, sleep };

/** One `taskstream serve` process. */
export interface ReplicaProcess extends Spawned {
  name: string;
}

/**
 * Spawns `node bin/taskstream.js serve --port 0 --database <url> --log-level info --shutdown-drain-ms 0`
 * (as test/support/replica.ts does) and waits for its "taskstream listening"
 * JSON line. Warnings and errors the replica logs are passed through to stderr.
 */
export async function startReplicaProcess(name: string, database: string, flags: string[] = [], timeoutMs = 60_000): Promise<ReplicaProcess> {
  // stop() sends SIGTERM: no drain, or every stop would wait out its 5 s default.
  const args = ["bin/taskstream.js", "serve", "--port", "0", "--database", database, "--log-level", "info", "--shutdown-drain-ms", "0", ...flags];
  return { name, ...(await spawnServer(process.execPath, args, "taskstream listening", `replica ${name}`, timeoutMs)) };
}

function parentOf(pid: string): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return -1;
  }
}

/** The postmaster of the PostgreSQL listening on this port, found by its command line. */
export function findPostmaster(port: number): number | undefined {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (args[0]?.endsWith("/postgres") && args[args.indexOf("-p") + 1] === String(port)) return Number(entry);
    } catch {
      // Gone meanwhile.
    }
  }
  return undefined;
}

/** CPU seconds of a postmaster and its backends, per pid (backends that exited are missed). */
export function postgresCpu(postmaster: number | undefined): Map<number, number> {
  const cpu = new Map<number, number>();
  if (postmaster === undefined) return cpu;
  cpu.set(postmaster, cpuSeconds(postmaster));
  for (const entry of readdirSync("/proc")) {
    if (/^\d+$/.test(entry) && parentOf(entry) === postmaster) cpu.set(Number(entry), cpuSeconds(Number(entry)));
  }
  return cpu;
}

export function cpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, s] of after) sum += s - (before.get(pid) ?? 0);
  return sum;
}

/** Busy CPU seconds of the whole machine so far (every process), from /proc/stat. */
export function machineBusySeconds(): number {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] + (cpu[4] ?? 0);
  return (cpu.reduce((a, b) => a + b, 0) - idle) / 100;
}

/** This process's CPU seconds so far. */
export function selfCpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

export function machineDescription(): string {
  const cpu = cpus();
  return `${cpu.length} cores (${cpu[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Node ${process.version}, ${process.platform}`;
}

/** Samples each replica's RSS every 500 ms and keeps the peak. */
export class RssPeaks {
  readonly peak = new Map<number, number>();
  private timer?: NodeJS.Timeout;
  constructor(private readonly pids: number[]) {}
  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
    return this;
  }
  stop(): Map<number, number> {
    clearInterval(this.timer);
    this.sample();
    return this.peak;
  }
  private sample(): void {
    for (const pid of this.pids) this.peak.set(pid, Math.max(this.peak.get(pid) ?? 0, rssBytes(pid)));
  }
}

/**
 * CPU seconds spent between start() and stop(): by the replicas, by
 * PostgreSQL, by this (the client) process, and by the machine as a whole,
 * so whatever else ran meanwhile shows as "other".
 */
export class CpuMeter {
  private replicas = new Map<number, number>();
  private postgres = new Map<number, number>();
  private self = 0;
  private machine = 0;
  private startedAt = 0;
  constructor(
    private readonly replicaPids: number[],
    private readonly postmaster: number | undefined,
  ) {}
  start(): this {
    this.replicas = new Map(this.replicaPids.map((pid) => [pid, cpuSeconds(pid)]));
    this.postgres = postgresCpu(this.postmaster);
    this.self = selfCpuSeconds();
    this.machine = machineBusySeconds();
    this.startedAt = performance.now();
    return this;
  }
  stop(): CpuSplit {
    const seconds = (performance.now() - this.startedAt) / 1000;
    const replicas = cpuDelta(this.replicas, new Map(this.replicaPids.map((pid) => [pid, cpuSeconds(pid)])));
    const postgres = cpuDelta(this.postgres, postgresCpu(this.postmaster));
    const client = selfCpuSeconds() - this.self;
    const machine = machineBusySeconds() - this.machine;
    return { seconds, replicas, postgres, client, other: Math.max(0, machine - replicas - postgres - client) };
  }
}

/** CPU seconds by owner over `seconds` of wall time. */
export interface CpuSplit {
  seconds: number;
  replicas: number;
  postgres: number;
  client: number;
  other: number;
}


/**
 * Waits up to maxSeconds for one second in which the whole machine uses less
 * than `threshold` cores, since other work on a shared machine skews every
 * figure. Says how long it waited and whether it ever got quiet.
 */
export async function waitForQuiet(maxSeconds: number, threshold = 0.35): Promise<{ waited: number; quiet: boolean; lastBusy: number }> {
  const started = performance.now();
  let lastBusy = NaN;
  for (;;) {
    const before = machineBusySeconds();
    await sleep(1000);
    lastBusy = machineBusySeconds() - before;
    const waited = (performance.now() - started) / 1000;
    if (lastBusy < threshold) return { waited, quiet: true, lastBusy };
    if (waited >= maxSeconds) return { waited, quiet: false, lastBusy };
  }
}
