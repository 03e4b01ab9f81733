import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { TaskService, type StreamTasksResponse } from "../gen/taskstream/v1/task_service_pb.js";
import { create } from "@bufbuild/protobuf";
import { TaskFilterSchema, type TaskFilter } from "../gen/taskstream/v1/task_pb.js";
import { readEvents, type EventFilter } from "../src/storage/event-log.js";
import { grpcJsClient } from "./support/grpc-js-client.js";
import { checkAgainstLog, eventFilter, type Subscriber } from "./support/log-check.js";
import { collect, eventually, type Received } from "./support/streams.js";
import { DIALECTS, freshDatabase, startWith, withClients, type TestServer } from "./support/test-server.js";

const AGENTS = ["agent-0", "agent-1", "agent-2"];
const TOOLS = ["tool-a", "tool-b"];
const pick = <T,>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const dialect of DIALECTS) {
  describe(`stream guarantees on ${dialect}`, () => {
    let database: Awaited<ReturnType<typeof freshDatabase>>;
    let t: TestServer;

    beforeAll(async () => {
      database = await freshDatabase(dialect);
      t = withClients(await startWith(database.location, { streamWindow: 50 }), database.location, async () => {});
    });
    afterAll(async () => {
      await t?.server.close();
      await t?.close();
      await database?.drop();
    });

    it("gives every subscriber each matching event once, in order, with the snapshot at S", async () => {
      const abort = new AbortController();
      const subscribers: Subscriber[] = [];
      const done: Promise<unknown>[] = [];
      const subscribe = (name: string, filter: Partial<EventFilter>, protocol: "grpc" | "connect" = "grpc") => {
        const full = eventFilter(filter);
        const { received, done: finished } = collect(t.tasks(protocol), { filter: full, heartbeatInterval: { nanos: 100_000_000 } }, { signal: abort.signal });
        subscribers.push({ name, filter: full, received });
        done.push(finished);
      };
      subscribe("all", {});
      subscribe("agent-1", { agentId: "agent-1" }, "connect");
      subscribe("tool-b", { toolName: "tool-b" });
      subscribe("agent-2 tool-a", { agentId: "agent-2", toolName: "tool-a" }, "connect");
      const jsAll = grpcJsSubscriber(t, abort.signal);
      subscribers.push(jsAll.subscriber);

      const workload = runWorkload(t, { dispatchers: 4, tasksEach: 40, workers: 4 });
      // Late subscribers get a snapshot with tasks running in it: these three are held running.
      await sleep(300);
      const held = await Promise.all(
        AGENTS.map((agentId) => t.tasks().dispatchTask({ toolName: "held", agentId, claim: { workerId: "holder", leaseDuration: { seconds: 120n } } })),
      );
      subscribe("late all", {});
      subscribe("late agent-0", { agentId: "agent-0" });
      const resumer = resumingSubscriber(t, eventFilter({ toolName: "tool-a" }), abort.signal);
      subscribers.push(resumer.subscriber);
      await workload;
      await eventually(() => subscribers.every((s) => s.received.live), 10_000, "every snapshot");
      for (const { task, lease } of held) await t.workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });

      const log = await readEvents(t.server.deps.db.kysely, { after: 0, limit: 1_000_000 });
      const last = log[log.length - 1].sequence;
      for (const s of subscribers) {
        await eventually(() => (s.received.cursor ?? -1n) >= last, 15_000, `${s.name} to reach ${last}`);
      }
      abort.abort();
      await Promise.all([...done, jsAll.done, resumer.done]);

      expect(log.length).toBeGreaterThan(500);
      for (const s of subscribers) checkAgainstLog(s, log);
      expect(resumer.reconnects()).toBeGreaterThan(3);
      expect(subscribers.find((s) => s.name === "late all")!.received.snapshot.length).toBeGreaterThan(0);
      await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, () => `streams released, ${t.server.deps.gauges.activeStreams} open`);
    });

    it("resumes on a new server process after a restart, losing nothing", async () => {
      const abort = new AbortController();
      const filter = eventFilter({});
      const first = collect(t.tasks(), { filter, skipSnapshot: true, heartbeatInterval: { nanos: 100_000_000 } }, { signal: abort.signal });
      await eventually(() => first.received.live);
      const before = runWorkload(t, { dispatchers: 2, tasksEach: 15, workers: 2 });
      await before;
      await t.server.close();
      const ended = await first.done;
      // Shutdown ends streams with UNAVAILABLE, so clients know to reconnect.
      expect(ConnectError.from(ended.error).code).toBe(Code.Unavailable);
      const cursor = ended.cursor!;

      // Write more while no server runs: a second process on the same database.
      t = withClients(await startWith(database.location, { streamWindow: 50 }), database.location, async () => {});
      const resumed: Received = { snapshot: [], events: [...ended.events], heartbeats: [], live: true, cursor };
      const second = collect(t.tasks(), { filter, afterSequence: cursor, heartbeatInterval: { nanos: 100_000_000 } }, { signal: abort.signal, received: resumed });
      await runWorkload(t, { dispatchers: 2, tasksEach: 15, workers: 2 });
      const log = await readEvents(t.server.deps.db.kysely, { after: 0, limit: 1_000_000 });
      await eventually(() => (resumed.cursor ?? -1n) >= log[log.length - 1].sequence, 15_000, "the resumed stream to catch up");
      abort.abort();
      await second.done;
      resumed.snapshotSequence = ended.snapshotSequence;
      checkAgainstLog({ name: "restarted", filter, received: resumed }, log);
    });
  });
}

/** Dispatchers, workers (one on grpc-js), a canceller and a resumer, racing. */
async function runWorkload(t: TestServer, opts: { dispatchers: number; tasksEach: number; workers: number }) {
  let dispatching = opts.dispatchers;
  let working = opts.workers;
  const suspended: string[] = [];
  const dispatcher = async (d: number) => {
    for (let i = 0; i < opts.tasksEach; i++) {
      const protocol = d % 2 ? "grpc" : "connect";
      const { task } = await t.tasks(protocol).dispatchTask({ toolName: pick(TOOLS), agentId: pick(AGENTS), args: { d, i } });
      if (Math.random() < 0.1) await t.tasks().cancelTask({ taskId: task!.taskId, reason: "changed my mind" });
      if (Math.random() < 0.3) await sleep(2);
    }
    dispatching--;
  };
  const worker = async (w: number) => {
    const workers = w === 0 ? t.grpcJs.workers : t.workers(w % 2 ? "grpc" : "connect");
    for (;;) {
      const { tasks } = await workers.claimTasks({ workerId: `w${w}`, maxTasks: 3, wait: { nanos: 100_000_000 } });
      if (tasks.length === 0 && dispatching === 0 && suspended.length === 0) return working--;
      for (const { task, lease } of tasks) {
        const ids = { taskId: task!.taskId, leaseId: lease!.leaseId };
        for (let k = Math.floor(Math.random() * 3); k > 0; k--) {
          await workers.reportOutput({ ...ids, output: { kind: { case: "numberValue", value: k } } });
        }
        if (Math.random() < 0.15) await t.tasks().cancelTask({ taskId: ids.taskId, reason: "cancel while running" });
        const { cancelRequested } = await workers.heartbeat(ids);
        const roll = Math.random();
        if (cancelRequested || roll < 0.2) await workers.failTask({ ...ids, error: { message: "nope" } });
        else if (roll < 0.3 && task!.resumeData === undefined) {
          await workers.suspendTask({ ...ids, payload: { kind: { case: "stringValue", value: "waiting" } } });
          suspended.push(ids.taskId);
        } else await workers.completeTask({ ...ids, result: { kind: { case: "boolValue", value: true } } });
      }
    }
  };
  const resumer = async () => {
    // Lives as long as the workers, which may suspend until their last task.
    while (working > 0) {
      const taskId = suspended.shift();
      if (taskId) await t.tasks().resumeTask({ taskId, resumeData: { kind: { case: "stringValue", value: "go" } } });
      else await sleep(20);
    }
  };
  await Promise.all([...Array.from({ length: opts.dispatchers }, (_, d) => dispatcher(d)), ...Array.from({ length: opts.workers }, (_, w) => worker(w)), resumer()]);
}

/** An unfiltered subscriber on @grpc/grpc-js, the canonical gRPC client. */
function grpcJsSubscriber(t: TestServer, signal: AbortSignal) {
  const received: Received = { snapshot: [], events: [], heartbeats: [], live: false };
  const { raw, close } = grpcJsClient(TaskService, `127.0.0.1:${t.server.port}`);
  const request = create((TaskService.method.streamTasks as { input: typeof TaskService.method.streamTasks.input }).input, {
    filter: create(TaskFilterSchema, {}) as TaskFilter,
    heartbeatInterval: { nanos: 100_000_000 },
  });
  const call = (raw as unknown as { streamTasks(r: unknown, m: grpc.Metadata): grpc.ClientReadableStream<StreamTasksResponse> }).streamTasks(
    request,
    new grpc.Metadata(),
  );
  const done = new Promise<void>((resolve) => {
    call.on("data", (response: StreamTasksResponse) => {
      const m = response.message;
      if (m.case === "event") (received.live ? received.events : received.snapshot).push(m.value);
      if (m.case === "event" && received.live) received.cursor = m.value.sequence;
      if (m.case === "snapshotComplete") {
        received.snapshotSequence = received.cursor = m.value.sequence;
        received.live = true;
      }
      if (m.case === "heartbeat") received.cursor = m.value.sequence;
    });
    call.on("error", () => resolve());
    call.on("end", () => resolve());
  });
  signal.addEventListener("abort", () => {
    call.cancel();
    close();
  });
  return { subscriber: { name: "grpc-js all", filter: eventFilter({}), received }, done };
}

/** A subscriber that drops its connection at random and resumes from its last cursor. */
function resumingSubscriber(t: TestServer, filter: EventFilter, signal: AbortSignal) {
  const received: Received = { snapshot: [], events: [], heartbeats: [], live: false };
  let reconnects = 0;
  const done = (async () => {
    while (!signal.aborted) {
      const cut = new AbortController();
      const stop = () => cut.abort();
      signal.addEventListener("abort", stop);
      let budget = 1 + Math.floor(Math.random() * 25);
      const request = received.live
        ? { filter, afterSequence: received.cursor, heartbeatInterval: { nanos: 100_000_000 } }
        : { filter, heartbeatInterval: { nanos: 100_000_000 } };
      await collect(t.tasks(reconnects % 2 ? "grpc" : "connect"), request, {
        signal: cut.signal,
        received,
        onMessage: (r) => {
          if (r.live && --budget <= 0) cut.abort();
        },
      }).done;
      signal.removeEventListener("abort", stop);
      reconnects++;
    }
  })();
  return { subscriber: { name: "resuming tool-a", filter, received }, done, reconnects: () => reconnects };
}
