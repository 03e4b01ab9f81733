/**
 * A worker runner for TypeScript, in Node.js (connect-node) and in browsers
 * (connect-web): give it a handler per tool and it claims, runs, heartbeats,
 * reports and settles tasks, as the Go and Python clients' workers do.
 * It uses no Node.js API, like follow.ts.
 */
import { fromJson, toJson, type JsonObject, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { durationFromMs, msFromTimestamp } from "../../src/domain/time.js";
import { errorReason } from "../../src/errors.js";
import { delay, jitter, retryable } from "./follow.js";
import { TaskErrorSchema, type Lease, type Task } from "../../gen/taskstream/v1/task_pb.js";
import type { ClaimedTask, WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";

/** What a handler gets for one task. */
export interface Job {
  /** The task as claimed: args, attempt, resumeData, ... */
  readonly task: Task;
  readonly lease: Lease;
  /** task.args, or {} when it has none. */
  readonly args: JsonObject;
  /** task.resumeData as JSON: what ResumeTask gave, after a Suspend. */
  readonly resumeData: JsonValue | undefined;
  /** Aborts, with a JobCancelled reason, when the handler should stop. */
  readonly signal: AbortSignal;
  /**
   * Appends a chunk of output to the task's events. Refused because the lease
   * is gone, it aborts `signal` ("lease lost") and throws the error.
   */
  reportOutput(value: JsonValue): Promise<void>;
}

/** A handler's answer is the task's result; what it throws fails it (or suspends it, for Suspend). */
export type Handler = (job: Job) => Promise<JsonValue> | JsonValue;

export interface WorkerOptions {
  workers: Client<typeof WorkerService>;
  /** Recorded on the tasks it claims. Required. */
  workerId: string;
  /** One per tool name; the worker claims tasks of these tools only. At least one. */
  handlers: Record<string, Handler>;
  /** Handlers running at once; 10 by default. */
  concurrency?: number;
  /** How long one ClaimTasks waits for work; 20 s by default (the server caps it). */
  claimWaitMs?: number;
  /** The lease asked for on claims and heartbeats; the server's default (30 s) when unset. */
  leaseDurationMs?: number;
  /** After run()'s signal aborts, how long running handlers may go on; 30 s by default. */
  shutdownGraceMs?: number;
  /** Told each error the worker drops: a settle call refused (the task moved on) or failed for good. */
  onError?: (error: ConnectError, task: Task) => void;
}

/** Why a job's signal aborted. */
export type CancelReason = "cancel requested" | "lease lost" | "worker stopping";

/** The reason of an aborted Job.signal; thrown by `signal.throwIfAborted()`. */
export class JobCancelled extends Error {
  constructor(readonly reason: CancelReason) {
    super(reason);
    this.name = "JobCancelled";
  }
}

/** Thrown by a handler: the task is suspended with `payload` until a producer's ResumeTask. */
export class Suspend extends Error {
  constructor(readonly payload?: JsonValue) {
    super("suspend");
    this.name = "Suspend";
  }
}

/** Thrown by a handler: the task fails with this code, retryable or not (not by default). */
export class TaskFailure extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly details?: JsonObject;

  constructor(message: string, options: { code?: string; retryable?: boolean; details?: JsonObject } = {}) {
    super(message);
    this.name = "TaskFailure";
    this.code = options.code ?? "";
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }
}

const MAX_CLAIM_BATCH = 100;
const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 5000;
const SETTLE_ATTEMPTS = 5;
const MIN_HEARTBEAT_MS = 100;
/** How much of a handler's error a FailTask refused for its size still carries. */
const REFUSED_ERROR_EXCERPT = 1000;
/** Unary calls other than the long-poll: a connection gone silent must not stall a job forever. */
const CALL_TIMEOUT_MS = 10_000;
/** Whether a claim that failed may succeed on a later try: what `retryable` says of a stream, and RESOURCE_EXHAUSTED (no free slot now). */
function transient(error: ConnectError): boolean {
  return retryable(error) || error.code === Code.ResourceExhausted;
}

type Outcome =
  | { kind: "complete"; result?: Value }
  | { kind: "suspend"; payload?: Value }
  | { kind: "fail"; error: MessageInitShape<typeof TaskErrorSchema> };

/**
 * Runs tasks with the handlers, following README's worker loop: claims while
 * there is a free slot, heartbeats each task every third of its lease, and
 * settles it from what its handler did. See run() for how it stops.
 */
export class TaskWorker {
  private readonly toolNames: string[];
  private readonly concurrency: number;
  private readonly jobs = new Set<RunningJob>();
  private readonly slotFreed = new Wakeup();
  private active = false;

  constructor(private readonly options: WorkerOptions) {
    if (!options.workerId) throw new TypeError("TaskWorker: workerId is required");
    this.toolNames = Object.keys(options.handlers).sort();
    if (this.toolNames.length === 0) throw new TypeError("TaskWorker: at least one handler is required");
    this.concurrency = options.concurrency ?? 10;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) throw new RangeError("TaskWorker: concurrency must be a positive integer");
  }

  /**
   * Claims and runs tasks until `signal` aborts. Then it claims no more, lets
   * running handlers finish for up to shutdownGraceMs, aborts the others
   * ("worker stopping") and fails their tasks as retryable, so that another
   * worker takes them at once, and returns. A handler that ignores its signal
   * may still be running then; its answer is dropped.
   * A claim refused for good (not a transient error) ends it with that error,
   * after the same shutdown.
   */
  async run(signal?: AbortSignal): Promise<void> {
    if (this.active) throw new Error("TaskWorker: run() is already running");
    this.active = true;
    try {
      await this.claimUntilStopped(signal).finally(() => this.shutdown());
    } finally {
      this.active = false;
    }
  }

  private async claimUntilStopped(signal?: AbortSignal): Promise<void> {
    let backoff = MIN_BACKOFF_MS;
    while (!signal?.aborted) {
      await this.freeSlot(signal);
      if (signal?.aborted) return;
      let claimed: ClaimedTask[];
      try {
        claimed = await this.claim(signal);
      } catch (err) {
        if (signal?.aborted) return;
        const error = ConnectError.from(err);
        if (!transient(error)) throw error;
        await delay(jitter(backoff), signal);
        backoff = Math.min(2 * backoff, MAX_BACKOFF_MS);
        continue;
      }
      backoff = MIN_BACKOFF_MS;
      for (const c of claimed) this.start(c);
    }
  }

  private async claim(signal?: AbortSignal): Promise<ClaimedTask[]> {
    const waitMs = this.options.claimWaitMs ?? 20_000;
    const { tasks } = await this.options.workers.claimTasks(
      {
        workerId: this.options.workerId,
        toolNames: this.toolNames,
        maxTasks: Math.min(this.concurrency - this.jobs.size, MAX_CLAIM_BATCH),
        wait: durationFromMs(Math.round(waitMs)),
        leaseDuration: this.leaseDuration(),
      },
      // Past the wait, the call is dead: DEADLINE_EXCEEDED, and claimed again.
      { signal, timeoutMs: waitMs + CALL_TIMEOUT_MS },
    );
    return tasks;
  }

  private leaseDuration() {
    const ms = this.options.leaseDurationMs;
    return ms === undefined ? undefined : durationFromMs(Math.round(ms));
  }

  private async freeSlot(signal?: AbortSignal): Promise<void> {
    while (this.jobs.size >= this.concurrency && !signal?.aborted) await this.slotFreed.wait(signal);
  }

  private start(claimed: ClaimedTask): void {
    const { handlers, workers, onError } = this.options;
    const job = new RunningJob(claimed, workers, this.leaseDuration(), onError);
    this.jobs.add(job);
    const handler = Object.hasOwn(handlers, job.task.toolName) ? handlers[job.task.toolName] : undefined;
    void job.run(handler).finally(() => {
      this.jobs.delete(job);
      this.slotFreed.notify();
    });
  }

  private async shutdown(): Promise<void> {
    const running = [...this.jobs];
    if (running.length === 0) return;
    const allDone = new AbortController();
    void Promise.all(running.map((j) => j.done)).then(() => allDone.abort());
    await delay(this.options.shutdownGraceMs ?? 30_000, allDone.signal);
    await Promise.all(running.map((j) => j.abandon()));
  }
}

/** One claimed task, from its handler's start to its settle call. */
class RunningJob {
  readonly task: Task;
  readonly done: Promise<void>;
  private readonly cancel = new AbortController();
  private readonly heartbeatsStop = new AbortController();
  private readonly leaseMs: number;
  /** The local time the lease runs out, as of the last heartbeat. */
  private validUntil: number;
  /** "running" until the handler returns; "abandoned" once shutdown took over. */
  private state: "running" | "settling" | "abandoned" = "running";
  private leaseLost = false;
  private finish!: () => void;

  constructor(
    private readonly claimed: ClaimedTask,
    private readonly workers: Client<typeof WorkerService>,
    private readonly leaseDuration: ReturnType<typeof durationFromMs> | undefined,
    private readonly onError?: (error: ConnectError, task: Task) => void,
  ) {
    this.task = claimed.task!;
    const now = Date.now();
    const expire = claimed.lease?.expireTime;
    this.leaseMs = Math.max(expire ? msFromTimestamp(expire) - now : 0, MIN_HEARTBEAT_MS);
    this.validUntil = now + this.leaseMs;
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  private get leaseId(): string {
    return this.claimed.lease?.leaseId ?? "";
  }

  async run(handler: Handler | undefined): Promise<void> {
    void this.heartbeat();
    try {
      const outcome = await this.outcome(handler);
      // Settle calls get the rest of the lease; a heartbeat racing them would only see the task gone.
      this.heartbeatsStop.abort();
      if (this.state !== "running" || this.leaseLost) return;
      this.state = "settling";
      await this.settle(outcome);
    } finally {
      this.heartbeatsStop.abort();
      this.finish();
    }
  }

  /** Shutdown's end: a handler still running is aborted and its task failed as retryable. */
  async abandon(): Promise<void> {
    if (this.state !== "running") return this.done;
    this.state = "abandoned";
    this.abort("worker stopping");
    this.heartbeatsStop.abort();
    if (!this.leaseLost) await this.settle({ kind: "fail", error: { message: "worker stopping", retryable: true } });
    this.finish();
  }

  private async outcome(handler: Handler | undefined): Promise<Outcome> {
    try {
      if (!handler) throw new TaskFailure(`no handler for tool ${this.task.toolName}`, { code: "NO_HANDLER" });
      const value = await handler(this.job());
      return { kind: "complete", result: toValue(value) };
    } catch (err) {
      if (!(err instanceof Suspend)) return { kind: "fail", error: taskError(err) };
      try {
        return { kind: "suspend", payload: toValue(err.payload) };
      } catch (notJson) {
        return { kind: "fail", error: taskError(notJson) };
      }
    }
  }

  private job(): Job {
    const { task } = this;
    return {
      task,
      lease: this.claimed.lease!,
      args: task.args ?? {},
      resumeData: task.resumeData && toJson(ValueSchema, task.resumeData),
      signal: this.cancel.signal,
      reportOutput: (value) => this.reportOutput(value),
    };
  }

  private async reportOutput(value: JsonValue): Promise<void> {
    try {
      const request = { taskId: this.task.taskId, leaseId: this.leaseId, output: fromJson(ValueSchema, value) };
      await this.workers.reportOutput(request, { timeoutMs: CALL_TIMEOUT_MS });
    } catch (err) {
      const error = ConnectError.from(err);
      if (leaseGone(error)) this.loseLease();
      throw error;
    }
  }

  /** Extends the lease every third of it until the job ends or the lease is lost. */
  private async heartbeat(): Promise<void> {
    const stop = this.heartbeatsStop.signal;
    const interval = Math.max(this.leaseMs / 3, MIN_HEARTBEAT_MS);
    for (;;) {
      await delay(interval, stop);
      if (stop.aborted) return;
      const sent = Date.now();
      try {
        const request = { taskId: this.task.taskId, leaseId: this.leaseId, leaseDuration: this.leaseDuration };
        const response = await this.workers.heartbeat(request, { signal: stop, timeoutMs: CALL_TIMEOUT_MS });
        this.validUntil = sent + this.leaseMs;
        if (response.cancelRequested) this.abort("cancel requested");
      } catch (err) {
        if (stop.aborted) return;
        if (leaseGone(ConnectError.from(err))) return this.loseLease();
        // Anything else may be passing: the lease may still be good, keep the schedule.
      }
    }
  }

  private loseLease(): void {
    this.leaseLost = true;
    this.heartbeatsStop.abort();
    this.abort("lease lost");
  }

  private abort(reason: CancelReason): void {
    if (!this.cancel.signal.aborted) this.cancel.abort(new JobCancelled(reason));
  }

  /** Reports the outcome; a refusal means the task moved on without us, and is dropped. */
  private async settle(outcome: Outcome, isFallback = false): Promise<void> {
    try {
      await this.withRetries(() => this.send(outcome));
    } catch (err) {
      const error = ConnectError.from(err);
      // What the call carries is refused (too large, too deep): fail the task saying so, rather than
      // leave it to its lease and have each retry end the same way.
      if (contentRefused(error) && !isFallback) return this.settle(refusal(outcome, error), true);
      this.onError?.(error, this.task);
    }
  }

  private async send(outcome: Outcome): Promise<void> {
    const leased = { taskId: this.task.taskId, leaseId: this.leaseId };
    const options = { timeoutMs: CALL_TIMEOUT_MS };
    if (outcome.kind === "complete") await this.workers.completeTask({ ...leased, result: outcome.result }, options);
    else if (outcome.kind === "suspend") await this.workers.suspendTask({ ...leased, payload: outcome.payload }, options);
    else await this.workers.failTask({ ...leased, error: outcome.error }, options);
  }

  /** Retries transient errors a few times, with backoff, while the lease may still hold. */
  private async withRetries(call: () => Promise<void>): Promise<void> {
    let wait = MIN_BACKOFF_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        const error = ConnectError.from(err);
        const sleep = jitter(wait);
        // Not RESOURCE_EXHAUSTED: a settle call gets it only for a message over the server's limit.
        const worthIt = retryable(error) && attempt < SETTLE_ATTEMPTS && Date.now() + sleep < this.validUntil;
        if (!worthIt) throw error;
        await delay(sleep);
        wait = Math.min(2 * wait, MAX_BACKOFF_MS);
      }
    }
  }
}

function leaseGone(error: ConnectError): boolean {
  return error.code === Code.FailedPrecondition || error.code === Code.NotFound;
}

/** A settle call refused for what it carries: invalid (too deep, too large to store) or larger than one message. */
function contentRefused(error: ConnectError): boolean {
  return error.code === Code.InvalidArgument || error.code === Code.ResourceExhausted;
}

/** The failure that stands for an outcome the server refused: why, and what of a handler's error fits. */
function refusal(outcome: Outcome, error: ConnectError): Outcome {
  const call = { complete: "CompleteTask", suspend: "SuspendTask", fail: "FailTask" }[outcome.kind];
  const code = errorReason(error) ?? (error.code === Code.InvalidArgument ? "INVALID_ARGUMENT" : "RESOURCE_EXHAUSTED");
  const message = `${call} refused: ${error.rawMessage}`;
  if (outcome.kind !== "fail") return { kind: "fail", error: { message, code } };
  const original = outcome.error.message ?? "";
  const excerpt = original.length > REFUSED_ERROR_EXCERPT ? `${original.slice(0, REFUSED_ERROR_EXCERPT)}…` : original;
  return { kind: "fail", error: { message: `${message}; the error was: ${excerpt}`, code, retryable: outcome.error.retryable } };
}

/** A handler's JSON as a google.protobuf.Value; undefined (a handler returning nothing) as no value. */
function toValue(value: JsonValue | undefined): Value | undefined {
  return value === undefined ? undefined : fromJson(ValueSchema, value);
}

function taskError(err: unknown): MessageInitShape<typeof TaskErrorSchema> {
  // Duck-typed: an Error of another realm (a vm context, a frame) fails `instanceof Error`, as do thrown { message } objects.
  const errorLike = typeof err === "object" && err !== null && typeof (err as Error).message === "string";
  const stack = errorLike && typeof (err as Error).stack === "string" ? (err as Error).stack! : "";
  if (err instanceof TaskFailure) return { message: err.message, stack, code: err.code, retryable: err.retryable, details: err.details };
  // A plain error: the task's retry policy decides whether another attempt comes.
  return { message: errorLike ? (err as Error).message : String(err), stack, retryable: true };
}

/** Wakes whoever waits for a free slot. */
class Wakeup {
  private waiters: (() => void)[] = [];

  wait(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        signal?.removeEventListener("abort", done);
        resolve();
      };
      if (signal?.aborted) return done();
      signal?.addEventListener("abort", done);
      this.waiters.push(done);
    });
  }

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
