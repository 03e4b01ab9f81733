/** The bench's processes: the worker and producer children, and /proc readings (the server: ../support/server-process.ts). */
import { fork, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { cpuSeconds, rssBytes, sleep } from "../support/proc-stats.js";
import { GoCommand } from "../support/go-command.js";
import type { ProducerConfig, ProducerMessage } from "./producer.js";
import type { WorkerConfig, WorkerMessage } from "./worker.js";
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

// ---- the workers and producers: Node (worker.ts, producer.ts) or Go (clients/go/cmd/lifecycle-*) ----

export type ClientKind = "go" | "node";
export const CLIENT_LABEL: Record<ClientKind, string> = {
  go: "Go (connect-go, clients/go/cmd/lifecycle-worker and lifecycle-producer)",
  node: "Node (connect-node, bench/lifecycle/worker.ts and producer.ts)",
};

export type WorkerStats = Omit<Extract<WorkerMessage, { type: "stats" }>, "type">;
export type ProducerDone = Omit<Extract<ProducerMessage, { type: "done" }>, "type">;

/** The workers' process, its claim loops running once it is returned. */
export interface Workers {
  readonly pid: number;
  /** Stops the loops (the long-polls cancelled) and says what they did. */
  stop(): Promise<WorkerStats>;
  /** Waits for (or makes) the process to exit. */
  exit(): Promise<void>;
}

/** The producers' process, connections open once it is returned. */
export interface Producers {
  readonly pid: number;
  /** Dispatches every task; resolves when the last call answered. */
  run(timeoutMs: number): Promise<ProducerDone>;
  exit(): Promise<void>;
}

/** The Go programs, built once for the bench's runs. */
export interface GoPaths {
  worker: string;
  producer: string;
}

/** Starts the workers: worker.ts in a child, or the Go worker at `go.worker`. */
export async function startWorkers(config: WorkerConfig, go?: GoPaths): Promise<Workers> {
  if (!go) {
    const child = new Child<WorkerMessage>("./worker.ts", config);
    await child.next("ready");
    return {
      pid: child.pid,
      stop: async () => {
        child.send({ type: "stop" });
        const { type: _, ...stats } = await child.next("stats");
        return stats;
      },
      exit: () => child.exit(),
    };
  }
  const program = new GoCommand(go.worker, "lifecycle-worker");
  await program.ready;
  await checked(program, "lifecycle-worker", { cmd: "start", ...config });
  return {
    pid: program.pid,
    stop: async () => {
      const r = (await checked(program, "lifecycle-worker", { cmd: "stop" })) as Record<string, unknown>;
      return {
        claimCalls: Number(r.claimCalls),
        emptyClaims: Number(r.emptyClaims),
        claimed: Number(r.claimed),
        completed: Number(r.completed),
        errors: Number(r.errors),
        firstError: (r.firstError as string | undefined) || undefined,
      };
    },
    exit: () => program.stop(),
  };
}

/** Starts the producers: producer.ts in a child, or the Go producer at `go.producer`. */
export async function startProducers(config: ProducerConfig, go?: GoPaths): Promise<Producers> {
  if (!go) {
    const child = new Child<ProducerMessage>("./producer.ts", config);
    await child.next("ready");
    return {
      pid: child.pid,
      run: async (timeoutMs) => {
        child.send({ type: "go" });
        const { type: _, ...done } = await child.next("done", timeoutMs);
        return done;
      },
      exit: () => child.exit(),
    };
  }
  const program = new GoCommand(go.producer, "lifecycle-producer");
  await program.ready;
  await checked(program, "lifecycle-producer", { cmd: "start", ...config });
  return {
    pid: program.pid,
    run: async (timeoutMs) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`lifecycle-producer: no answer within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        const r = (await Promise.race([checked(program, "lifecycle-producer", { cmd: "go" }), timeout])) as Record<string, unknown>;
        return {
          startMs: Number(r.startMs),
          endMs: Number(r.endMs),
          dispatched: Number(r.dispatched),
          errors: Number(r.errors),
          firstError: (r.firstError as string | undefined) || undefined,
          cpuSeconds: Number(r.cpuSeconds),
        };
      } finally {
        clearTimeout(timer);
      }
    },
    exit: () => program.stop(),
  };
}

/** A Go program's answer to a command, its result; throws if it was not ok. */
async function checked(program: GoCommand, label: string, command: Record<string, unknown>): Promise<unknown> {
  const a = await program.send(command);
  if (!a.ok) throw new Error(`${label} ${String(command.cmd)}: ${a.error ?? "failed"}`);
  return a.result;
}
