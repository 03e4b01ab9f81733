/** The bench's processes: the worker and producer children, and /proc readings (the server: ../support/server-process.ts). */
import { fork, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { cpuSeconds, rssBytes, sleep } from "../support/proc-stats.js";
export { cpuSeconds, rssBytes, sleep };

/** A child process running one of this folder's scripts through tsx, spoken to over IPC. */
export class Child<Out extends { type: string }> {
  readonly process: ChildProcess;
  private readonly waiting = new Map<string, (message: Out) => void>();
  private readonly seen = new Map<string, Out>();
  private readonly exited: Promise<number | null>;

  constructor(script: string, config: unknown) {
    this.process = fork(new URL(script, import.meta.url).pathname, [JSON.stringify(config)], {
      execArgv: ["--import", "tsx"],
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    this.exited = new Promise((resolve) => this.process.once("exit", (code) => resolve(code)));
    this.process.on("message", (message: Out) => {
      const wake = this.waiting.get(message.type);
      if (wake) {
        this.waiting.delete(message.type);
        wake(message);
      } else this.seen.set(message.type, message);
    });
  }

  get pid(): number {
    return this.process.pid!;
  }

  /** The next message of this type (or one that came before anyone asked). */
  next<T extends Out["type"]>(type: T, timeoutMs = 600_000): Promise<Extract<Out, { type: T }>> {
    const early = this.seen.get(type);
    if (early) {
      this.seen.delete(type);
      return Promise.resolve(early as Extract<Out, { type: T }>);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child ${this.pid}: no "${type}" within ${timeoutMs} ms`)), timeoutMs);
      this.exited.then((code) => reject(new Error(`child ${this.pid} exited (${code}) before "${type}"`)));
      this.waiting.set(type, (m) => {
        clearTimeout(timer);
        resolve(m as Extract<Out, { type: T }>);
      });
    });
  }

  send(message: { type: string }): void {
    this.process.send(message);
  }

  async exit(timeoutMs = 10_000): Promise<void> {
    const timer = setTimeout(() => this.process.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}



/** The postmaster of the PostgreSQL listening on this port, found by its command line. */
export function findPostmaster(port: number): number | undefined {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (args[0]?.endsWith("/bin/postgres") && args[args.indexOf("-p") + 1] === String(port)) return Number(entry);
    } catch {
      // Gone meanwhile.
    }
  }
  return undefined;
}

/** CPU seconds of a process and its children (one level: a postmaster and its backends), per pid. */
export function treeCpu(root: number): Map<number, number> {
  const cpu = new Map<number, number>([[root, cpuSeconds(root)]]);
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === root) cpu.set(Number(entry), cpuSeconds(Number(entry)));
    } catch {
      // Gone meanwhile.
    }
  }
  return cpu;
}

/** CPU seconds a process tree used between two treeCpu readings (children that exited meanwhile are missed). */
export function treeCpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, s] of after) sum += s - (before.get(pid) ?? 0);
  return sum;
}

/** Samples a process's RSS every 250 ms; keeps the peak. */
export class RssSampler {
  peak = 0;
  private timer?: NodeJS.Timeout;
  constructor(private readonly pid: number) {}
  start(): this {
    this.peak = rssBytes(this.pid);
    this.timer = setInterval(() => (this.peak = Math.max(this.peak, rssBytes(this.pid))), 250);
    return this;
  }
  stop(): { peak: number; end: number } {
    clearInterval(this.timer);
    const end = rssBytes(this.pid);
    this.peak = Math.max(this.peak, end);
    return { peak: this.peak, end };
  }
}

/** Busy CPU seconds of the whole machine so far (all processes), from /proc/stat. */
export function machineBusySeconds(): number {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] + (cpu[4] ?? 0);
  return (cpu.reduce((a, b) => a + b, 0) - idle) / 100;
}

export function machineDescription(): string {
  const cpu = cpus();
  return `${cpu.length} cores (${cpu[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Node ${process.version}, ${process.platform}`;
}

