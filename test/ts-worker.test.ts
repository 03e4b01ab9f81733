import { fromJson, toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { JobCancelled, Suspend, TaskFailure, TaskWorker, type Handler, type WorkerOptions } from "../clients/ts/worker.js";
import { TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import type { WorkerService } from "../gen/taskstream/v1/worker_service_pb.js";
import type { Settings } from "../src/config.js";
import { eventually } from "./support/streams.js";
import { DIALECTS, startTestServer, type Dialect, type TestServer } from "./support/test-server.js";

const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1_000_000 });
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));
const json = (value: Value | undefined) => value && toJson(ValueSchema, value);

/** Each test gets a fresh server and database, closed whatever happens. */
async function withServer(work: (t: TestServer) => Promise<void>, overrides: Partial<Settings> = {}, dialect: Dialect = "sqlite") {
  const t = await startTestServer(dialect, overrides);
  try {
    await work(t);
  } finally {
    await t.close();
  }
}

/** Runs a worker in the background; stop() aborts it and waits for run() to return. */
function startWorker(t: TestServer, handlers: Record<string, Handler>, options: Partial<WorkerOptions> = {}) {
  const abort = new AbortController();
  const worker = new TaskWorker({ workers: t.workers("grpc"), workerId: "ts-worker", handlers, shutdownGraceMs: 1000, ...options });
  const done = worker.run(abort.signal);
  let returned = false;
  void done.then(
    () => (returned = true),
    () => (returned = true),
  );
  return {
    done,
    returned: () => returned,
    stop: async () => {
      abort.abort();
      await done;
    },
  };
}

async function getTask(t: TestServer, taskId: string): Promise<Task> {
  return (await t.tasks().getTask({ taskId })).task!;
}

async function waitForStatus(t: TestServer, taskId: string, status: TaskStatus, timeoutMs = 10_000): Promise<Task> {
  let task: Task | undefined;
  await eventually(async () => (task = await getTask(t, taskId)).status === status, timeoutMs, () => `${TaskStatus[status]}, have ${TaskStatus[task?.status ?? 0]}`);
  return task!;
}

/** Resolves with the reason once the signal aborts. */
function untilAborted(signal: AbortSignal): Promise<JobCancelled> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(signal.reason);
    signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
  });
}

async function dispatch(t: TestServer, toolName: string, more: { args?: JsonObject; maxRetries?: number; timeout?: ReturnType<typeof ms> } = {}) {
  return (await t.tasks().dispatchTask({ toolName, agentId: "ts-worker-test", ...more })).task!.taskId;
}

describe("the TypeScript worker (clients/ts/worker.ts)", () => {
  for (const dialect of DIALECTS) {
    it(`completes a task with its handler's value, its outputs reported on the way (${dialect})`, async () => {
      await withServer(
        async (t) => {
          const seenArgs: JsonValue[] = [];
          const w = startWorker(t, {
            echo: async (job) => {
              seenArgs.push(job.args);
              await job.reportOutput({ chunk: 1 });
              await job.reportOutput("two");
              return { echoed: job.args.text ?? null, attempt: job.task.attempt };
            },
          });
          try {
            const taskId = await dispatch(t, "echo", { args: { text: "hello" } });
            const task = await waitForStatus(t, taskId, TaskStatus.COMPLETED);
            expect(json(task.result)).toEqual({ echoed: "hello", attempt: 1 });
            expect(seenArgs).toEqual([{ text: "hello" }]);
            const { events } = await t.tasks().listTaskEvents({ taskId });
            expect(events.map((e) => e.kind.case)).toEqual(["queued", "running", "output", "output", "completed"]);
            expect(events.filter((e) => e.kind.case === "output").map((e) => json((e.kind.value as { output?: Value }).output))).toEqual([{ chunk: 1 }, "two"]);
            expect(events[1].kind.case === "running" && events[1].kind.value.workerId).toBe("ts-worker");
          } finally {
            await w.stop();
          }
        },
        {},
        dialect,
      );
    });
  }

  it("fails a plain error as retryable (the retry completes) and a TaskFailure with its code, not retried", async () => {
    await withServer(
      async (t) => {
        const w = startWorker(t, {
          flaky: (job) => {
            if (job.task.attempt === 1) throw new Error("first try fails");
            return `ok at ${job.task.attempt}`;
          },
          strict: () => {
            throw new TaskFailure("bad input", { code: "BAD", details: { field: "x" } });
          },
          // Deeper than the server stores (32 levels).
          deep: () => Array.from({ length: 40 }).reduce<JsonValue>((inner) => ({ a: inner }), 1),
        });
        try {
          const flaky = await dispatch(t, "flaky", { maxRetries: 1 });
          const strict = await dispatch(t, "strict", { maxRetries: 1 });
          const deep = await dispatch(t, "deep");
          const done = await waitForStatus(t, flaky, TaskStatus.COMPLETED);
          expect(done.attempt).toBe(2);
          expect(json(done.result)).toBe("ok at 2");
          const { events } = await t.tasks().listTaskEvents({ taskId: flaky });
          const failed = events.find((e) => e.kind.case === "failed")!;
          const firstError = failed.kind.case === "failed" ? failed.kind.value.error! : undefined;
          expect(firstError).toMatchObject({ message: "first try fails", retryable: true });
          expect(firstError!.stack).toContain("first try fails");

          const refused = await waitForStatus(t, strict, TaskStatus.FAILED);
          expect(refused.attempt).toBe(1);
          expect(refused.error).toMatchObject({ message: "bad input", code: "BAD", retryable: false, details: { field: "x" } });

          // A result the server refuses fails the task at once, rather than leaving it to its lease.
          const refusedResult = await waitForStatus(t, deep, TaskStatus.FAILED);
          expect(refusedResult.error).toMatchObject({ code: "INVALID_ARGUMENT", retryable: false });
          expect(refusedResult.error!.message).toMatch(/^CompleteTask refused: result: nests lists and objects more than 32 levels deep/);
        } finally {
          await w.stop();
        }
      },
      { retryDelayMs: 0 },
    );
  });

  it("runs no more handlers at once than its concurrency", async () => {
    await withServer(async (t) => {
      let running = 0;
      let peak = 0;
      let finished = 0;
      const taskIds = await Promise.all(Array.from({ length: 20 }, () => dispatch(t, "slow")));
      const w = startWorker(
        t,
        {
          slow: async () => {
            peak = Math.max(peak, ++running);
            await sleep(40);
            running--;
            finished++;
            return null;
          },
        },
        { concurrency: 3 },
      );
      try {
        await eventually(() => finished === 20, 10_000, () => `20 handlers done, have ${finished}`);
        expect(peak).toBe(3);
        for (const taskId of taskIds) await waitForStatus(t, taskId, TaskStatus.COMPLETED);
      } finally {
        await w.stop();
      }
    });
  });

  it("aborts the handler's signal when the producer cancels the task, which ends CANCELLED", async () => {
    await withServer(async (t) => {
      let started = false;
      let reason: JobCancelled | undefined;
      const w = startWorker(
        t,
        {
          patient: async (job) => {
            started = true;
            reason = await untilAborted(job.signal);
            job.signal.throwIfAborted();
            return "not cancelled";
          },
        },
        { leaseDurationMs: 1500 },
      );
      try {
        const taskId = await dispatch(t, "patient");
        await eventually(() => started, 5000, "the handler to start");
        await t.tasks().cancelTask({ taskId, reason: "user asked" });
        await eventually(() => reason !== undefined, 3000, "the handler to see the cancel");
        expect(reason).toBeInstanceOf(JobCancelled);
        expect(reason!.reason).toBe("cancel requested");
        await waitForStatus(t, taskId, TaskStatus.CANCELLED);
      } finally {
        await w.stop();
      }
    });
  });

  it("keeps a task past its lease with heartbeats", async () => {
    await withServer(async (t) => {
      let aborted = false;
      const w = startWorker(
        t,
        {
          long: async (job) => {
            await sleep(3000);
            aborted = job.signal.aborted;
            return "made it";
          },
        },
        { leaseDurationMs: 1000 },
      );
      try {
        const taskId = await dispatch(t, "long", { maxRetries: 1 });
        const task = await waitForStatus(t, taskId, TaskStatus.COMPLETED, 8000);
        expect(task.attempt).toBe(1);
        expect(json(task.result)).toBe("made it");
        expect(aborted).toBe(false);
      } finally {
        await w.stop();
      }
    });
  });

  it("suspends on Suspend, and after ResumeTask runs the handler again with the resume data", async () => {
    await withServer(async (t) => {
      const runs: (JsonValue | undefined)[] = [];
      const w = startWorker(t, {
        ask: (job) => {
          runs.push(job.resumeData);
          if (job.resumeData === undefined) throw new Suspend({ question: "which one?" });
          return { answer: job.resumeData };
        },
      });
      try {
        const taskId = await dispatch(t, "ask");
        const suspended = await waitForStatus(t, taskId, TaskStatus.SUSPENDED);
        expect(json(suspended.suspendPayload)).toEqual({ question: "which one?" });
        await t.tasks().resumeTask({ taskId, resumeData: fromJson(ValueSchema, { choice: "b" }) });
        const task = await waitForStatus(t, taskId, TaskStatus.COMPLETED);
        expect(json(task.result)).toEqual({ answer: { choice: "b" } });
        expect(runs).toEqual([undefined, { choice: "b" }]);
      } finally {
        await w.stop();
      }
    });
  });

  it("cancels a handler whose task timed out, drops the refused FailTask and goes on with the next task", async () => {
    await withServer(async (t) => {
      let reason: JobCancelled | undefined;
      const dropped: ConnectError[] = [];
      const w = startWorker(
        t,
        {
          stuck: async (job) => {
            reason = await untilAborted(job.signal);
            throw reason;
          },
          quick: () => "quick",
        },
        { leaseDurationMs: 1500, onError: (error) => dropped.push(error) },
      );
      try {
        const stuck = await dispatch(t, "stuck", { timeout: ms(1000) });
        await waitForStatus(t, stuck, TaskStatus.TIMED_OUT, 5000);
        await eventually(() => reason !== undefined, 3000, "the handler to be cancelled");
        expect(reason!.reason).toBe("cancel requested");
        await eventually(() => dropped.length > 0, 3000, "the refused FailTask");
        expect(dropped.map((e) => e.code)).toEqual([Code.FailedPrecondition]);
        expect((await getTask(t, stuck)).status).toBe(TaskStatus.TIMED_OUT);

        const quick = await dispatch(t, "quick");
        expect(json((await waitForStatus(t, quick, TaskStatus.COMPLETED)).result)).toBe("quick");
        expect(w.returned()).toBe(false);
      } finally {
        await w.stop();
      }
    });
  });

  it("on stop, lets a running handler finish within the grace, and its task completes", async () => {
    await withServer(async (t) => {
      let started = false;
      const w = startWorker(
        t,
        {
          brief: async () => {
            started = true;
            await sleep(400);
            return "finished";
          },
        },
        { shutdownGraceMs: 5000 },
      );
      const taskId = await dispatch(t, "brief");
      await eventually(() => started, 5000, "the handler to start");
      const stopAt = Date.now();
      await w.stop();
      expect(Date.now() - stopAt).toBeLessThan(3000);
      expect((await getTask(t, taskId)).status).toBe(TaskStatus.COMPLETED);
    });
  });

  it("on stop, cancels a handler that outlasts the grace and gives its task back as a retryable failure", async () => {
    await withServer(async (t) => {
      let started = false;
      let reason: JobCancelled | undefined;
      const w = startWorker(
        t,
        {
          endless: async (job) => {
            started = true;
            reason = await untilAborted(job.signal);
            throw reason;
          },
        },
        { shutdownGraceMs: 200 },
      );
      const taskId = await dispatch(t, "endless", { maxRetries: 1 });
      await eventually(() => started, 5000, "the handler to start");
      const stopAt = Date.now();
      await w.stop();
      expect(Date.now() - stopAt).toBeLessThan(2000);
      expect(reason?.reason).toBe("worker stopping");
      const task = await getTask(t, taskId);
      expect(task.status).toBe(TaskStatus.PENDING);
      const { events } = await t.tasks().listTaskEvents({ taskId });
      const failed = events.filter((e) => e.kind.case === "failed");
      expect(failed).toHaveLength(1);
      // The event's status is the task's once it applied: PENDING, to be retried.
      expect(failed[0].status).toBe(TaskStatus.PENDING);
      expect(failed[0].kind.value).toMatchObject({ error: { message: "worker stopping", retryable: true } });
    });
  });

  it("claims only the tools it has handlers for", async () => {
    await withServer(async (t) => {
      const w = startWorker(t, { mine: () => "mine" });
      try {
        const theirs = await dispatch(t, "theirs");
        const mine = await dispatch(t, "mine");
        await waitForStatus(t, mine, TaskStatus.COMPLETED);
        await sleep(300);
        const other = await getTask(t, theirs);
        expect(other.status).toBe(TaskStatus.PENDING);
        expect(other.attempt).toBe(0);
      } finally {
        await w.stop();
      }
    });
  });

  it("retries transient claim errors, and ends run() with any other", async () => {
    await withServer(async (t) => {
      const real = t.workers("grpc");
      let refusals = 0;
      const flaky: Client<typeof WorkerService> = {
        ...real,
        claimTasks: (request, options) => (++refusals <= 2 ? Promise.reject(new ConnectError("try later", Code.Unavailable)) : real.claimTasks(request, options)),
      };
      const w = startWorker(t, { mine: () => "despite the refusals" }, { workers: flaky });
      try {
        const taskId = await dispatch(t, "mine");
        expect(json((await waitForStatus(t, taskId, TaskStatus.COMPLETED)).result)).toBe("despite the refusals");
        expect(refusals).toBeGreaterThan(2);
      } finally {
        await w.stop();
      }

      // The server refuses a tool name with a NUL character: INVALID_ARGUMENT is not worth retrying.
      const bad = new TaskWorker({ workers: real, workerId: "ts-worker", handlers: { "bad\0tool": () => null } });
      const error = await bad.run().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(ConnectError);
      expect((error as ConnectError).code).toBe(Code.InvalidArgument);
    });
  });

  it("refuses to be built without a worker id or handlers", () => {
    const workers = {} as Client<typeof WorkerService>;
    expect(() => new TaskWorker({ workers, workerId: "", handlers: { a: () => null } })).toThrow(/workerId/);
    expect(() => new TaskWorker({ workers, workerId: "w", handlers: {} })).toThrow(/handler/);
    expect(() => new TaskWorker({ workers, workerId: "w", handlers: { a: () => null }, concurrency: 0 })).toThrow(/concurrency/);
  });
});
