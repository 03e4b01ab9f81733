import { getEventListeners } from "node:events";
import { runInNewContext } from "node:vm";
import { fromJson, toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { JobCancelled, Suspend, TaskFailure, TaskWorker, type Handler, type WorkerOptions } from "../clients/ts/worker.js";
import { TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import { WorkerService } from "../gen/taskstream/v1/worker_service_pb.js";
import type { Settings } from "../src/config.js";
import { eventually } from "./support/streams.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { DIALECTS, freshDatabase, startTestServer, startWith, withClients, type Dialect, type TestServer } from "./support/test-server.js";

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

/** A WorkerService client whose calls go through `proxy`, so a test can stall them. */
function workersVia(proxy: TcpProxy): Client<typeof WorkerService> {
  return createClient(WorkerService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proxy.port}` }));
}

/** `workers`, noting the lease of every settle call (CompleteTask, FailTask, SuspendTask) the worker makes. */
function noteSettles(workers: Client<typeof WorkerService>) {
  const leases: string[] = [];
  const client: Client<typeof WorkerService> = {
    ...workers,
    completeTask: (request, options) => (leases.push(request.leaseId ?? ""), workers.completeTask(request, options)),
    failTask: (request, options) => (leases.push(request.leaseId ?? ""), workers.failTask(request, options)),
    suspendTask: (request, options) => (leases.push(request.leaseId ?? ""), workers.suspendTask(request, options)),
  };
  return { client, leases };
}

async function kindsOf(t: TestServer, taskId: string): Promise<string[]> {
  const { events } = await t.tasks().listTaskEvents({ taskId });
  return events.map((e) => (e.kind.case === "failed" ? `failed:${e.kind.value.error?.code}` : String(e.kind.case)));
}

describe("the TypeScript worker when its lease is lost", () => {
  /** Waits until the stalled worker's lease ran out and the server's sweeper took the task back. */
  async function requeued(t: TestServer, taskId: string): Promise<Task> {
    const task = await waitForStatus(t, taskId, TaskStatus.PENDING, 6000);
    expect(task.attempt).toBe(2);
    return task;
  }

  it("cancels the handler once a heartbeat gets through and is refused, reports nothing for it, and runs the retry", async () => {
    await withServer(
      async (t) => {
        const proxy = await startTcpProxy({ host: "127.0.0.1", port: t.server.port });
        const settles = noteSettles(workersVia(proxy));
        const dropped: ConnectError[] = [];
        let firstLease = "";
        let firstReason: JobCancelled | undefined;
        const w = startWorker(
          t,
          {
            long: async (job) => {
              if (job.task.attempt > 1) return `attempt ${job.task.attempt}`;
              firstLease = job.lease.leaseId;
              firstReason = await untilAborted(job.signal);
              return "late result of attempt 1"; // must not be reported
            },
            quick: () => "quick",
          },
          { workers: settles.client, leaseDurationMs: 1500, claimWaitMs: 1000, onError: (error) => dropped.push(error) },
        );
        try {
          const taskId = await dispatch(t, "long", { maxRetries: 1 });
          await eventually(() => firstLease !== "", 5000, "attempt 1 to start");
          proxy.setStalled(true);
          await requeued(t, taskId);
          expect(firstReason).toBeUndefined(); // nothing has told the worker yet

          proxy.setStalled(false);
          await eventually(() => firstReason !== undefined, 5000, "attempt 1's handler to be cancelled");
          expect(firstReason!.reason).toBe("lease lost");
          const done = await waitForStatus(t, taskId, TaskStatus.COMPLETED);
          expect([done.attempt, json(done.result)]).toEqual([2, "attempt 2"]);
          expect(await kindsOf(t, taskId)).toEqual(["queued", "running", "failed:LEASE_EXPIRED", "running", "completed"]);

          const quick = await dispatch(t, "quick");
          expect(json((await waitForStatus(t, quick, TaskStatus.COMPLETED)).result)).toBe("quick");
          expect(w.returned()).toBe(false);
        } finally {
          await w.stop();
          await proxy.close();
        }
        // Once run() returned, every settle call has been made: none with the lost lease.
        expect(settles.leases).not.toContain(firstLease);
        expect(settles.leases.length).toBe(2);
        expect(dropped).toEqual([]);
      },
      { retryDelayMs: 0 },
    );
  });

  it("cancels the handler when another worker finished the task meanwhile, and goes on claiming", async () => {
    await withServer(
      async (t) => {
        const proxy = await startTcpProxy({ host: "127.0.0.1", port: t.server.port });
        const settles = noteSettles(workersVia(proxy));
        const dropped: ConnectError[] = [];
        let started = false;
        let reason: JobCancelled | undefined;
        let handlerEnded = false;
        const a = startWorker(
          t,
          {
            long: async (job) => {
              started = true;
              try {
                reason = await untilAborted(job.signal);
                job.signal.throwIfAborted(); // the usual way out: must not fail the task either
                return "unreachable";
              } finally {
                handlerEnded = true;
              }
            },
            later: () => "later",
          },
          { workers: settles.client, leaseDurationMs: 1500, claimWaitMs: 1000, onError: (error) => dropped.push(error) },
        );
        try {
          const taskId = await dispatch(t, "long", { maxRetries: 1 });
          await eventually(() => started, 5000, "the handler to start");
          proxy.setStalled(true);
          await requeued(t, taskId);

          // Worker B, with a working network, takes the retry and completes it.
          const b = startWorker(t, { long: () => "done by B" }, { workerId: "ts-worker-b" });
          const done = await waitForStatus(t, taskId, TaskStatus.COMPLETED);
          await b.stop();
          expect([done.attempt, done.workerId, json(done.result)]).toEqual([2, "ts-worker-b", "done by B"]);

          proxy.setStalled(false);
          await eventually(() => handlerEnded, 5000, "A's handler to be cancelled");
          expect(reason!.reason).toBe("lease lost");
          const later = await dispatch(t, "later");
          expect(json((await waitForStatus(t, later, TaskStatus.COMPLETED)).result)).toBe("later");
          expect(a.returned()).toBe(false);
          const final = await getTask(t, taskId);
          expect([final.status, final.workerId, json(final.result)]).toEqual([TaskStatus.COMPLETED, "ts-worker-b", "done by B"]);
        } finally {
          await a.stop();
          await proxy.close();
        }
        expect(settles.leases.length).toBe(1); // the later task's CompleteTask only
        expect(dropped).toEqual([]);
      },
      { retryDelayMs: 0 },
    );
  });
});

describe("the TypeScript worker, probed", () => {
  it("fails a task at once when the server refuses its result or error as larger than one message", async () => {
    await withServer(async (t) => {
      const dropped: ConnectError[] = [];
      const big = "x".repeat(5 * 1024 * 1024); // over the server's 4 MiB per message
      const w = startWorker(
        t,
        {
          hugeResult: () => big,
          hugeError: () => {
            throw new Error(`upstream said: ${big}`);
          },
        },
        // A connection of its own: the server's HTTP/2 session refuses other streams while it takes in megabytes.
        { workers: createClient(WorkerService, createGrpcTransport({ baseUrl: t.server.url })), onError: (error) => dropped.push(error) },
      );
      try {
        const result = await dispatch(t, "hugeResult", { maxRetries: 1 });
        const error = await dispatch(t, "hugeError");
        // Not left RUNNING until its lease (30 s) runs out, to run again and fail the same way.
        const failed = await waitForStatus(t, result, TaskStatus.FAILED, 5000);
        expect(failed.attempt).toBe(1);
        expect(failed.error).toMatchObject({ code: "MESSAGE_TOO_LARGE", retryable: false, message: "CompleteTask refused: request message larger than 4194304 bytes" });

        const failedError = (await waitForStatus(t, error, TaskStatus.FAILED, 5000)).error!;
        expect(failedError).toMatchObject({ code: "MESSAGE_TOO_LARGE", retryable: true });
        expect(failedError.message).toMatch(/^FailTask refused: request message larger than 4194304 bytes; the error was: upstream said: x{900}/);
        expect(failedError.message.length).toBeLessThan(1200);
        expect(dropped).toEqual([]);
      } finally {
        await w.stop();
      }
    });
  });

  it("rides out a server restart on the same database: the running handler keeps its lease and completes, and claims go on", async () => {
    const database = await freshDatabase("sqlite");
    const first = await startWith(database.location);
    let t = withClients(first, database.location, () => first.close());
    const { port } = first;
    let started = false;
    let restarted = false;
    let aborted = false;
    const workers = createClient(WorkerService, createGrpcTransport({ baseUrl: first.url }));
    const w = startWorker(
      t,
      {
        long: async (job) => {
          started = true;
          await eventually(() => restarted, 20_000, "the restart");
          await sleep(2000); // past a heartbeat (every 1.3 s) on the new server; the lease outlasts a slow restart
          aborted = job.signal.aborted;
          return "survived";
        },
        quick: () => "quick",
      },
      { workers, leaseDurationMs: 4000, claimWaitMs: 1000 },
    );
    try {
      const taskId = await dispatch(t, "long");
      await eventually(() => started, 5000, "the handler to start");
      await t.close();
      // The same port and SQLite file: the same URL for the worker.
      const second = await startWith(database.location, { port });
      t = withClients(second, database.location, () => second.close());
      restarted = true;
      const done = await waitForStatus(t, taskId, TaskStatus.COMPLETED, 8000);
      expect([done.attempt, json(done.result), aborted]).toEqual([1, "survived", false]);
      const quick = await dispatch(t, "quick");
      expect(json((await waitForStatus(t, quick, TaskStatus.COMPLETED)).result)).toBe("quick");
      expect(w.returned()).toBe(false);
    } finally {
      await w.stop();
      await t.close();
      await database.drop();
    }
  });

  it("waits out a server it cannot reach at start, then works", async () => {
    await withServer(async (t) => {
      const proxy = await startTcpProxy({ host: "127.0.0.1", port: t.server.port });
      await proxy.setMode({ kind: "refuse" });
      const w = startWorker(t, { echo: (job) => job.args }, { workers: workersVia(proxy) });
      try {
        await sleep(1000);
        expect(w.returned()).toBe(false);
        await proxy.setMode({ kind: "forward" });
        const taskId = await dispatch(t, "echo", { args: { n: 1 } });
        // The claim backoff has grown to under 2 s by now.
        expect(json((await waitForStatus(t, taskId, TaskStatus.COMPLETED, 5000)).result)).toEqual({ n: 1 });
      } finally {
        await w.stop();
        await proxy.close();
      }
    });
  });

  it("fails a task with what a handler threw that is not an Error", async () => {
    await withServer(async (t) => {
      // An Error made in another realm is no `instanceof Error` here.
      const foreign = runInNewContext("new Error('from another realm')") as Error;
      const thrown: Record<string, unknown> = { string: "plain string", undefined: undefined, null: null, object: { message: "an object's message" }, number: 42, foreign };
      const w = startWorker(
        t,
        Object.fromEntries(
          Object.entries(thrown).map(([tool, value]) => [
            tool,
            async () => {
              throw value;
            },
          ]),
        ),
      );
      try {
        const ids = await Promise.all(Object.keys(thrown).map((tool) => dispatch(t, tool)));
        const messages = [];
        for (const taskId of ids) {
          const { error } = await waitForStatus(t, taskId, TaskStatus.FAILED);
          expect(error!.retryable).toBe(true);
          messages.push(error!.message);
          if (taskId === ids.at(-1)) expect(error!.stack).toMatch(/^Error: from another realm\n/);
          else expect(error!.stack).toBe("");
        }
        expect(messages).toEqual(["plain string", "undefined", "null", "an object's message", "42", "from another realm"]);
        expect(w.returned()).toBe(false);
      } finally {
        await w.stop();
      }
    });
  });

  it("returns at once from run() given an aborted signal, runs again after returning, and refuses two runs at once", async () => {
    await withServer(async (t) => {
      const worker = new TaskWorker({ workers: t.workers(), workerId: "ts-worker", handlers: { echo: () => "ran" }, claimWaitMs: 1000 });
      const taskId = await dispatch(t, "echo");
      const began = Date.now();
      await worker.run(AbortSignal.abort());
      expect(Date.now() - began).toBeLessThan(500);
      expect((await getTask(t, taskId)).status).toBe(TaskStatus.PENDING);

      const stop = new AbortController();
      const running = worker.run(stop.signal);
      await expect(worker.run(stop.signal)).rejects.toThrow(/already running/);
      expect(json((await waitForStatus(t, taskId, TaskStatus.COMPLETED)).result)).toBe("ran");
      stop.abort();
      stop.abort(); // twice: harmless
      await running;
    });
  });

  it("runs many quick tasks without piling up listeners or timers", async () => {
    await withServer(async (t) => {
      const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === "Timeout").length;
      const stop = new AbortController();
      let ran = 0;
      let mostListeners = 0;
      const worker = new TaskWorker({
        workers: t.workers(),
        workerId: "ts-worker",
        handlers: {
          quick: async (job) => {
            mostListeners = Math.max(mostListeners, getEventListeners(stop.signal, "abort").length);
            ran++;
            return job.task.toolCallId;
          },
        },
        leaseDurationMs: 1000,
      });
      const requests = Array.from({ length: 300 }, (_, i) => ({ toolName: "quick", agentId: "ts-worker-test", toolCallId: `q${i}` }));
      for (let i = 0; i < requests.length; i += 100) await t.tasks().dispatchTasks({ requests: requests.slice(i, i + 100) });
      const before = timers(); // the connection's own, the server's
      const running = worker.run(stop.signal);
      await eventually(() => ran === 300, 20_000, () => `300 handlers run, have ${ran}`);
      const { totalSize } = await t.tasks().listTasks({ statuses: [TaskStatus.COMPLETED], pageSize: 1 });
      expect(totalSize).toBe(300n);
      // One for the claim in flight (or the wait for a slot), not one per call.
      expect(mostListeners).toBeLessThanOrEqual(2);
      stop.abort();
      await running;
      expect(getEventListeners(stop.signal, "abort")).toHaveLength(0);
      // The last calls' own timers end soon after; none of the worker's is left.
      await eventually(() => timers() <= before, 3000, () => `at most ${before} timers, have ${timers()}`);
    });
  });
});
