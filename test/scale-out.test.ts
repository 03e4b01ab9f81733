import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/health/v1/health_pb.js";
import { TaskStatus, type TaskEvent } from "../gen/taskstream/v1/task_pb.js";
import { openDatabase, type Db } from "../src/storage/connect.js";
import { readEvents, type EventFilter } from "../src/storage/event-log.js";
import { checkAgainstLog, eventFilter, type Subscriber } from "./support/log-check.js";
import { startEmbeddedPostgres } from "./support/postgres-global.js";
import { startReplica, type Replica } from "./support/replica.js";
import { collect, eventually, type Received } from "./support/streams.js";

const FLAGS = ["--sweep-interval-ms", "100", "--log-poll-ms", "500"];
// What a client retries elsewhere: the replica went away, or storage was out of reach.
const RETRYABLE = new Set([Code.Unavailable, Code.Aborted, Code.Unknown, Code.Internal, Code.DeadlineExceeded, Code.Canceled]);
const AGENTS = ["agent-0", "agent-1", "agent-2"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pick = <T,>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)];

describe("three replicas on one PostgreSQL", () => {
  let postgres: Awaited<ReturnType<typeof startEmbeddedPostgres>>;
  let db: Db;
  let replicas: Replica[] = [];
  const alive = () => replicas.filter((r) => r.process.exitCode === null && r.process.signalCode === null);

  beforeAll(async () => {
    // Its own PostgreSQL, so this file can restart it without disturbing others.
    postgres = await startEmbeddedPostgres({ persistent: true });
    replicas = await Promise.all(["a", "b", "c"].map((name) => startReplica(name, postgres.url, FLAGS)));
    db = openDatabase(postgres.url, { poolSize: 2 });
  }, 120_000);
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await db?.close();
    await postgres?.stop();
  });

  /** Calls on a live replica, moving to the next on a failure a client would retry. */
  async function onAny<T>(call: (r: Replica) => Promise<T>, start = 0, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (let i = start; ; i++) {
      const live = alive();
      try {
        return await call(live[i % live.length]);
      } catch (err) {
        if (!RETRYABLE.has(ConnectError.from(err).code) || Date.now() > deadline) throw err;
        await sleep(50);
      }
    }
  }

  /** A subscriber that resumes from its cursor on another replica whenever its stream fails. */
  function resilientSubscriber(name: string, filter: EventFilter, home: number, stop: AbortSignal) {
    const received: Received = { snapshot: [], events: [], heartbeats: [], live: false };
    let reconnects = 0;
    const done = (async () => {
      for (let i = home; !stop.aborted; i++) {
        const live = alive();
        const request = received.live
          ? { filter, afterSequence: received.cursor, heartbeatInterval: { nanos: 200_000_000 } }
          : { filter, heartbeatInterval: { nanos: 200_000_000 } };
        await collect(live[i % live.length].clients.tasks(), request, { signal: stop, received }).done;
        if (stop.aborted) break;
        received.error = undefined;
        reconnects++;
        await sleep(100);
      }
    })();
    return { subscriber: { name, filter, received } as Subscriber, done, reconnects: () => reconnects };
  }

  /** Dispatchers and workers spread over the replicas, failing over as a client would. */
  async function workload(label: string, tasks: number, during?: () => Promise<void>) {
    let dispatched = 0;
    const dispatcher = async (d: number) => {
      for (let i = d; i < tasks; i += 3) {
        // A request_id makes a dispatch retried after an ambiguous failure create one task.
        // A claim the killed replica committed but never answered holds its task until the
        // lease expires; a retry then runs it again, as in any deployment that kills replicas.
        const retry = { maxRetries: 2, retryPolicy: { initialDelay: { nanos: 10_000_000 } } };
        await onAny((r) => r.clients.tasks(d % 2 ? "grpc" : "connect").dispatchTask({ requestId: `${label}-${i}`, toolName: "t", agentId: pick(AGENTS), ...retry }), d);
        dispatched++;
        if (i % 10 === 0) await sleep(5);
      }
    };
    const finish = async (r: Replica, taskId: string, leaseId: string) => {
      try {
        await r.clients.workers().completeTask({ taskId, leaseId, result: { kind: { case: "boolValue", value: true } } });
      } catch (err) {
        // A completion retried after it succeeded finds the task already completed.
        if (ConnectError.from(err).code !== Code.FailedPrecondition) throw err;
      }
    };
    const worker = async (w: number) => {
      for (;;) {
        const { tasks: claimed } = await onAny((r) => r.clients.workers().claimTasks({ workerId: `w${w}`, maxTasks: 3, wait: { nanos: 200_000_000 }, leaseDuration: { seconds: 3n } }), w);
        for (const { task, lease } of claimed) {
          const ids = { taskId: task!.taskId, leaseId: lease!.leaseId };
          await onAny((r) => r.clients.workers().reportOutput({ ...ids, output: { kind: { case: "numberValue", value: w } } }), w).catch(() => {});
          await onAny((r) => finish(r, ids.taskId, ids.leaseId), w + 1);
        }
        if (claimed.length === 0 && dispatched >= tasks) {
          const open = await onAny((r) => r.clients.tasks().listTasks({ statuses: [TaskStatus.PENDING, TaskStatus.RUNNING], pageSize: 1 }));
          if (open.totalSize === 0n) return;
        }
      }
    };
    await Promise.all([...[0, 1, 2].map(dispatcher), ...[0, 1, 2, 3].map(worker), during?.()]);
  }

  async function checkAll(subscribers: Subscriber[], stop: AbortController, done: Promise<unknown>[]) {
    const log = await readEvents(db.kysely, { after: 0, limit: 1_000_000 });
    const last = log[log.length - 1].sequence;
    for (const s of subscribers) await eventually(() => (s.received.cursor ?? -1n) >= last, 30_000, `${s.name} to reach ${last}`);
    stop.abort();
    await Promise.all(done);
    for (const s of subscribers) checkAgainstLog(s, log);
    expectNoTaskRanTwiceAtOnce(log);
    return log;
  }

  it("keeps one ordered log across replicas, and a killed replica's clients resume on another", async () => {
    const stop = new AbortController();
    const subs = replicas.flatMap((_, home) => [
      resilientSubscriber(`all@${home}`, eventFilter({}), home, stop.signal),
      resilientSubscriber(`agent-1@${home}`, eventFilter({ agentId: "agent-1" }), home, stop.signal),
    ]);
    await eventually(() => subs.every((s) => s.subscriber.received.live), 10_000, "every snapshot");
    await workload("kill", 600, async () => {
      await sleep(1500);
      await replicas[2].kill();
    });
    const log = await checkAll(
      subs.map((s) => s.subscriber),
      stop,
      subs.map((s) => s.done),
    );
    expect(log.length).toBeGreaterThan(1500);
    // The subscribers of the killed replica went on elsewhere.
    expect(subs.filter((s) => s.subscriber.name.endsWith("@2")).every((s) => s.reconnects() > 0)).toBe(true);
    // Every task dispatched exactly once, and completed.
    const completed = new Set(log.filter((e) => e.kind.case === "completed").map((e) => e.taskId));
    const queued = log.filter((e) => e.kind.case === "queued");
    expect(queued.length).toBe(600);
    expect(completed.size).toBe(600);
  }, 180_000);

  it("recovers streams and work from a database restart, NOT_SERVING while it is down", async () => {
    replicas[2] = await startReplica("c2", postgres.url, FLAGS);
    const health = createClient(Health, replicas[0].clients.transport("grpc"));
    const stop = new AbortController();
    const subs = replicas.map((_, home) => resilientSubscriber(`all@${home}`, eventFilter({}), home, stop.signal));
    await eventually(() => subs.every((s) => s.subscriber.received.live), 10_000, "every snapshot");
    await workload("restart", 300, async () => {
      await sleep(1000);
      await postgres.postgres.stop();
      await eventually(async () => (await health.check({ service: "" })).status === ServingStatus.NOT_SERVING, 10_000, "NOT_SERVING");
      await sleep(1000);
      await postgres.postgres.start();
      await eventually(async () => (await health.check({ service: "" })).status === ServingStatus.SERVING, 15_000, "SERVING again");
    });
    const log = await checkAll(
      subs.map((s) => s.subscriber),
      stop,
      subs.map((s) => s.done),
    );
    expect(log.filter((e) => e.kind.case === "queued" && e.taskId !== "").length).toBeGreaterThanOrEqual(900);
  }, 180_000);
});

/** Replaying each task's events: a `running` never follows another without an end between. */
function expectNoTaskRanTwiceAtOnce(log: TaskEvent[]) {
  const status = new Map<string, TaskStatus>();
  for (const e of log) {
    if (e.kind.case === "running") expect(status.get(e.taskId), `task ${e.taskId} at ${e.sequence}`).not.toBe(TaskStatus.RUNNING);
    status.set(e.taskId, e.status);
  }
}
