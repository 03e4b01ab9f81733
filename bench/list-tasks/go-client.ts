/**
 * The Go column: clients/go/cmd/list-reader in a child process, built at the
 * start of the run, making the same sequential calls through connect-go and
 * decoding every response into the generated Go types.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { cpuSeconds } from "../support/proc-stats.js";
import { summarize, type MeasureOptions } from "./stats.js";

/** Latency figures of the Go client's calls of one case, in milliseconds. */
export interface GoStats {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
  /** Go's garbage collector during the timed calls: cycles, and its stop-the-world pauses' share of the time. */
  gcCycles: number;
  gcPauseShare: number;
}

/** Builds the Go reader into `dir`; returns its path, or why it could not. */
export function buildGoListReader(root: string, dir: string): { path?: string; error?: string } {
  const path = join(dir, "list-reader");
  try {
    execFileSync("go", ["build", "-o", path, "./cmd/list-reader"], { cwd: join(root, "clients", "go"), stdio: ["ignore", "pipe", "pipe"] });
    return { path };
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    return { error: (e.stderr?.toString().trim() || e.message).split("\n")[0] };
  }
}

type Answer = Record<string, unknown> & { ok: boolean; error?: string };

/** The running Go reader: one command at a time, answered in order. */
export class GoListReader {
  private readonly child: ChildProcess;
  private readonly answers: ((a: Answer) => void)[] = [];
  private nextId = 1;
  private exited = false;
  readonly ready: Promise<void>;

  constructor(path: string) {
    this.child = spawn(path, [], { stdio: ["pipe", "pipe", "inherit"] });
    let markReady!: () => void;
    let failReady!: (e: Error) => void;
    this.ready = new Promise((resolve, reject) => ((markReady = resolve), (failReady = reject)));
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      const a = JSON.parse(line) as Answer & { msg?: string };
      if (a.msg === "reader ready") return markReady();
      this.answers.shift()?.(a);
    });
    this.child.once("exit", (code, signal) => {
      this.exited = true;
      failReady(new Error(`list-reader exited (${code ?? signal})`));
      for (const resolve of this.answers.splice(0)) resolve({ ok: false, error: `list-reader exited (${code ?? signal})` });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** CPU seconds the Go process used so far. */
  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }

  private send(command: Record<string, unknown>): Promise<Answer> {
    if (this.exited) return Promise.resolve({ ok: false, error: "list-reader is not running" });
    return new Promise((resolve) => {
      this.answers.push(resolve);
      this.child.stdin!.write(`${JSON.stringify({ ...command, id: this.nextId++ })}\n`);
    });
  }

  /**
   * Times one case: `requests[i]` is call i's request as protobuf JSON (one
   * request when every call sends the same). Returns the figures and the task
   * ids of call 0's answer.
   */
  async run(
    url: string,
    method: "ListTasks" | "GetTask",
    gzip: boolean,
    requests: unknown[],
    options: MeasureOptions,
  ): Promise<{ stats: GoStats; firstTaskIds: string[] }> {
    const distinct = new Set(requests.map((r) => JSON.stringify(r)));
    const a = await this.send({
      cmd: "run",
      url,
      method,
      gzip,
      requests: distinct.size === 1 ? [requests[0]] : requests,
      warmup: options.warmup,
      samples: options.samples,
      maxMs: options.maxMs,
      minSamples: options.minSamples,
    });
    if (!a.ok) throw new Error(`list-reader ${method}: ${a.error}`);
    return {
      stats: { ...summarize(a.ms as number[]), gcCycles: Number(a.gcCycles), gcPauseShare: Number(a.gcPauseShare) },
      firstTaskIds: a.firstTaskIds as string[],
    };
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once("exit", () => r()));
    await this.send({ cmd: "exit" });
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await gone;
    clearTimeout(t);
  }
}
