/**
 * The Go column: clients/go/cmd/list-reader in a child process, built at the
 * start of the run, making the same sequential calls through connect-go and
 * decoding every response into the generated Go types.
 */
import { GoCommand } from "../support/go-command.js";
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

/** The running Go reader: one command at a time. */
export class GoListReader {
  private readonly program: GoCommand;
  readonly ready: Promise<void>;

  constructor(path: string) {
    this.program = new GoCommand(path, "list-reader");
    this.ready = this.program.ready;
  }

  /** CPU seconds the Go process used so far. */
  cpuSeconds(): number {
    return cpuSeconds(this.program.pid);
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
    const a = await this.program.send({
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

  stop(): Promise<void> {
    return this.program.stop();
  }
}
