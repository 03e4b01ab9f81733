import http2 from "node:http2";
import { Code, createClient } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { StreamTasksRequestSchema, TaskService } from "../gen/taskstream/v1/task_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { errorReason } from "../src/errors.js";
import { logBounds, readEvents } from "../src/storage/event-log.js";
import { ConnectError } from "@connectrpc/connect";
import { expectError } from "./support/expect-error.js";
import { grpcJsClient, grpcJsErrorReason } from "./support/grpc-js-client.js";
import { collect, eventually } from "./support/streams.js";
import { scrapeMetrics } from "./support/metrics.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

for (const dialect of DIALECTS) {
  describe(`StreamTasks on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer(dialect, { streamWindow: 200 });
    });
    afterAll(() => t?.close());

    const unique = () => Math.random().toString(36).slice(2);

    /** A gauge as the server exposes it on GET /metrics. */
    async function gauge(name: string): Promise<number> {
      return (await scrapeMetrics(t.server.url))(name);
    }

    async function running(agentId: string, toolName = "tool") {
      const { task } = await t.tasks().dispatchTask({ toolName, agentId, args: { n: 1 }, claim: { workerId: "w" } });
      return task!;
    }

    it("sends the running tasks, snapshot_complete, then live events in order, once", async () => {
      const agentId = unique();
      const a = await running(agentId);
      const b = await running(agentId);
      const pending = await t.tasks().dispatchTask({ toolName: "tool", agentId });
      const abort = new AbortController();
      const { received, done } = collect(t.tasks(), { filter: { agentId } }, { signal: abort.signal });
      await eventually(() => received.live, 5000, "snapshot_complete");
      expect(received.snapshot.map((e) => e.taskId).sort()).toEqual([a.taskId, b.taskId].sort());
      for (const e of received.snapshot) {
        expect(e.kind.case).toBe("running");
        expect(e.status).toBe(TaskStatus.RUNNING);
        expect(e).toMatchObject({ agentId, toolName: "tool" });
        expect(e.kind.case === "running" && e.kind.value.args).toEqual({ n: 1 });
        expect(e.sequence).toBeLessThanOrEqual(received.snapshotSequence!);
      }
      await t.tasks().cancelTask({ taskId: pending.task!.taskId });
      const other = await running(unique());
      await t.workers().completeTask({ taskId: other.taskId, leaseId: "" }).catch(() => {});
      const { tasks } = await t.tasks().listTasks({ filter: { agentId } });
      expect(tasks.length).toBe(3);
      await eventually(() => received.events.length >= 1, 5000, "the cancel event");
      abort.abort();
      await done;
      expect(received.events.map((e) => [e.taskId, e.kind.case])).toEqual([[pending.task!.taskId, "cancelled"]]);
      expect(received.events[0].sequence).toBeGreaterThan(received.snapshotSequence!);
    });

    it("applies every filter field to snapshot and live events alike", async () => {
      const agentId = unique();
      const runId = unique();
      await t.tasks().dispatchTask({ toolName: "x", agentId, runId, threadId: "th", resourceId: "r", claim: { workerId: "w" } });
      await t.tasks().dispatchTask({ toolName: "y", agentId, runId, threadId: "th", resourceId: "r", claim: { workerId: "w" } });
      await t.tasks().dispatchTask({ toolName: "x", agentId, runId: "other", threadId: "th", resourceId: "r", claim: { workerId: "w" } });
      const abort = new AbortController();
      const filter = { agentId, runId, threadId: "th", resourceId: "r", toolName: "x" };
      const { received, done } = collect(t.tasks("connect"), { filter }, { signal: abort.signal });
      await eventually(() => received.live);
      expect(received.snapshot).toHaveLength(1);
      const live = await t.tasks().dispatchTask({ toolName: "x", agentId, runId, threadId: "th", resourceId: "r" });
      await t.tasks().dispatchTask({ toolName: "x", agentId, runId, threadId: "nope", resourceId: "r" });
      await t.tasks().dispatchTask({ toolName: "y", agentId, runId, threadId: "th", resourceId: "r" });
      const byTask = collect(t.tasks(), { filter: { taskId: live.task!.taskId }, skipSnapshot: true }, { signal: abort.signal });
      await eventually(() => byTask.received.live);
      await t.tasks().cancelTask({ taskId: live.task!.taskId });
      await eventually(() => received.events.length === 2 && byTask.received.events.length === 1);
      await new Promise((r) => setTimeout(r, 100));
      abort.abort();
      await Promise.all([done, byTask.done]);
      expect(received.events.map((e) => e.kind.case)).toEqual(["queued", "cancelled"]);
      expect(received.events.every((e) => e.taskId === live.task!.taskId)).toBe(true);
      expect(byTask.received.snapshot).toHaveLength(0);
      expect(byTask.received.events.map((e) => e.kind.case)).toEqual(["cancelled"]);
    });

    it("resumes after a cursor with every matching event, then goes live", async () => {
      const agentId = unique();
      const first = await t.tasks().dispatchTask({ toolName: "t", agentId });
      const cursor = first.task!.sequence;
      const second = await running(agentId);
      await t.tasks().cancelTask({ taskId: first.task!.taskId });
      const abort = new AbortController();
      const { received, done } = collect(t.tasks(), { filter: { agentId }, afterSequence: cursor }, { signal: abort.signal });
      await eventually(() => received.events.length === 3);
      const live = await t.tasks().dispatchTask({ toolName: "t", agentId });
      await eventually(() => received.events.length === 4);
      abort.abort();
      await done;
      expect(received.snapshot).toHaveLength(0);
      expect(received.snapshotSequence).toBeUndefined();
      expect(received.events.map((e) => e.kind.case)).toEqual(["queued", "running", "cancelled", "queued"]);
      expect(received.events.map((e) => e.taskId)).toEqual([second.taskId, second.taskId, first.task!.taskId, live.task!.taskId]);
      const sequences = received.events.map((e) => e.sequence);
      expect(sequences.every((s, i) => i === 0 || s > sequences[i - 1])).toBe(true);
      expect(sequences[0]).toBeGreaterThan(cursor);
    });

    it("delivers identical events over gRPC, Connect binary and JSON, and gRPC-Web", async () => {
      const agentId = unique();
      const before = await t.tasks().dispatchTask({ toolName: "p", agentId, args: { nested: { list: [1, "two", null, true] } } });
      const { task, lease } = await t.tasks().dispatchTask({ toolName: "p", agentId, claim: { workerId: "w" } });
      await t.workers().reportOutput({ taskId: task!.taskId, leaseId: lease!.leaseId, output: { kind: { case: "stringValue", value: "out" } } });
      await t.workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId, result: { kind: { case: "numberValue", value: 4.5 } } });
      const abort = new AbortController();
      const protocols = ["grpc", "connect", "connect-json", "grpc-web"] as const;
      const streams = protocols.map((p) => collect(t.tasks(p), { filter: { agentId }, afterSequence: before.task!.sequence - 1n }, { signal: abort.signal }));
      await eventually(() => streams.every((s) => s.received.events.length === 5), 5000, "five events on every protocol");
      abort.abort();
      await Promise.all(streams.map((s) => s.done));
      const [reference, ...others] = streams.map((s) => s.received.events);
      expect(reference.map((e) => e.kind.case)).toEqual(["queued", "queued", "running", "output", "completed"]);
      expect(reference[0].kind.case === "queued" && reference[0].kind.value.args).toEqual({ nested: { list: [1, "two", null, true] } });
      for (const events of others) expect(events).toEqual(reference);
    });

    it("refuses a cursor older than the log holds with CURSOR_EXPIRED and the oldest cursor", async () => {
      // Retention moves this watermark; set it as retention would.
      await t.server.deps.db.kysely.updateTable("log_head").set({ trimmed_through: 3 }).where("id", "=", 1).execute();
      try {
        const err = await expectError(
          drain(t.tasks().streamTasks({ afterSequence: 2n })),
          Code.FailedPrecondition,
          "CURSOR_EXPIRED",
        );
        expect(err.findDetails((await import("../gen/google/rpc/error_details_pb.js")).ErrorInfoSchema)[0].metadata).toEqual({
          oldest_sequence: "3",
        });
        // The oldest cursor still held is accepted.
        const abort = new AbortController();
        const { received, done } = collect(t.tasks(), { afterSequence: 3n }, { signal: abort.signal });
        await eventually(() => received.events.length > 0);
        abort.abort();
        await done;
        expect(received.events[0].sequence).toBe(4n);
      } finally {
        await t.server.deps.db.kysely.updateTable("log_head").set({ trimmed_through: 0 }).where("id", "=", 1).execute();
      }
    });

    it("refuses a cursor past the log's end, and a negative one", async () => {
      await expectError(drain(t.tasks().streamTasks({ afterSequence: 1n << 40n })), Code.OutOfRange, "CURSOR_AHEAD");
      await expectError(drain(t.tasks().streamTasks({ afterSequence: -1n })), Code.InvalidArgument, "INVALID_ARGUMENT");
    });

    it("sends heartbeats with the current sequence while no event matches", async () => {
      const abort = new AbortController();
      const { received, done } = collect(
        t.tasks(),
        { filter: { agentId: unique() }, heartbeatInterval: { nanos: 150_000_000 } },
        { signal: abort.signal },
      );
      await eventually(() => received.heartbeats.length >= 1);
      const noise = await t.tasks().dispatchTask({ toolName: "noise", agentId: unique() });
      await eventually(() => received.heartbeats.some((h) => h >= noise.task!.sequence), 5000, "a heartbeat past the noise");
      abort.abort();
      await done;
      expect(received.events).toHaveLength(0);
      const hb = received.heartbeats;
      expect(hb.every((s, i) => i === 0 || s >= hb[i - 1])).toBe(true);
    });

    it("takes a gzip-compressed gRPC request, and refuses a malformed one with INVALID_ARGUMENT", async () => {
      const agentId = unique();
      const task = await running(agentId);
      const gzipped = createClient(
        TaskService,
        createGrpcTransport({ baseUrl: t.server.url, sendCompression: compressionGzip, compressMinBytes: 0 }),
      );
      const first = await collect(gzipped, { filter: { agentId } }, { timeoutMs: 2000 }).done;
      expect(first.snapshot.map((e) => e.taskId)).toEqual([task.taskId]);

      // A frame whose length prefix promises more bytes than follow.
      const session = http2.connect(t.server.url);
      const stream = session.request({
        ":method": "POST",
        ":path": "/taskstream.v1.TaskService/StreamTasks",
        "content-type": "application/grpc",
        te: "trailers",
      });
      stream.end(Buffer.from([0, 0, 0, 0, 9, 1, 2]));
      const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("trailers", resolve));
      session.close();
      expect(trailers["grpc-status"]).toBe(String(Code.InvalidArgument));
    });

    it("ends on the client's deadline and on cancel, and releases the stream", async () => {
      await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, "no open streams");
      const started = Date.now();
      const received = await collect(t.tasks(), { skipSnapshot: true }, { timeoutMs: 300 }).done;
      expect(ConnectError.from(received.error).code).toBe(Code.DeadlineExceeded);
      expect(Date.now() - started).toBeLessThan(3000);
      const viaGrpcWeb = await collect(t.tasks("grpc-web"), { skipSnapshot: true }, { timeoutMs: 300 }).done;
      expect(ConnectError.from(viaGrpcWeb.error).code).toBe(Code.DeadlineExceeded);

      const abort = new AbortController();
      const open = collect(t.tasks(), {}, { signal: abort.signal });
      await eventually(() => open.received.live);
      expect(t.server.deps.gauges.activeStreams).toBe(1);
      expect(await gauge("taskstream_streams_active")).toBe(1);
      abort.abort();
      await open.done;
      await eventually(async () => (await gauge("taskstream_streams_active")) === 0, 5000, "the stream to be released");
      expect(await gauge("taskstream_stream_waiters")).toBe(0);
    });

    it("catches a slow reader up from the log, losing nothing", async () => {
      const agentId = unique();
      let paused = true;
      let resume!: () => void;
      const gate = new Promise<void>((r) => (resume = r));
      const abort = new AbortController();
      const { received, done } = collect(
        t.tasks(),
        { filter: { agentId }, skipSnapshot: true },
        {
          signal: abort.signal,
          onMessage: async () => {
            if (paused) await gate;
          },
        },
      );
      await eventually(() => received.live);
      // Far more than the 200-event window while the reader is stuck.
      const ids: string[] = [];
      for (let i = 0; i < 150; i++) {
        const { task } = await t.tasks().dispatchTask({ toolName: "slow", agentId: i % 3 === 0 ? agentId : unique() });
        await t.tasks().cancelTask({ taskId: task!.taskId });
        if (i % 3 === 0) ids.push(task!.taskId);
      }
      paused = false;
      resume();
      await eventually(() => received.events.length === ids.length * 2, 10_000, "every event");
      abort.abort();
      await done;
      expect(received.events.map((e) => e.taskId)).toEqual(ids.flatMap((id) => [id, id]));
      expect(received.events.map((e) => e.kind.case)).toEqual(ids.flatMap(() => ["queued", "cancelled"]));
    });

    it("sends a snapshot and a replay many writes long to a slow reader, in order, over gRPC and Connect", async () => {
      const agentId = unique();
      const cursor = (await logBounds(t.server.deps.db.kysely)).last;
      // 1,200 running tasks: 2,400 events, more than a page read from the log,
      // and frames far past one write.
      const ids: string[] = [];
      for (let batch = 0; batch < 3; batch++) {
        const requests = Array.from({ length: 400 }, (_, i) => ({
          toolName: "many",
          agentId,
          toolCallId: `${batch}-${i}`,
          args: { pad: "x".repeat(200) },
          claim: { workerId: "w" },
        }));
        const { results } = await t.tasks().dispatchTasks({ requests });
        for (const r of results) ids.push(r.outcome.case === "dispatched" ? r.outcome.value.task!.taskId : "");
      }
      const log = (await readEvents(t.server.deps.db.kysely, { after: cursor, limit: 100_000 })).filter((e) => e.agentId === agentId);
      expect(log).toHaveLength(2400);
      // The reader stalls at its first message, long enough for the server's writes to fill the stream.
      const slowly = () => {
        let stalled = false;
        return async () => {
          if (!stalled) await new Promise((r) => setTimeout(r, 300));
          stalled = true;
        };
      };
      for (const protocol of ["grpc", "connect"] as const) {
        const abort = new AbortController();
        const snapshot = collect(t.tasks(protocol), { filter: { agentId } }, { signal: abort.signal, onMessage: slowly() });
        const replay = collect(t.tasks(protocol), { filter: { agentId }, afterSequence: BigInt(cursor) }, { signal: abort.signal, onMessage: slowly() });
        await eventually(() => snapshot.received.live && replay.received.events.length === log.length, 20_000, `${protocol}: snapshot and replay`);
        abort.abort();
        await Promise.all([snapshot.done, replay.done]);
        expect(snapshot.received.snapshot.map((e) => e.taskId).sort(), protocol).toEqual([...ids].sort());
        expect(snapshot.received.snapshot.every((e) => e.kind.case === "running")).toBe(true);
        expect(replay.received.events.map((e) => e.sequence), protocol).toEqual(log.map((e) => e.sequence));
      }
    });
  });
}

describe("StreamTasks with --max-streams", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer("sqlite", { maxStreams: 2 });
  });
  afterAll(() => t?.close());

  const metric = async (name: string) => (await scrapeMetrics(t.server.url))(name);

  /** Opens a stream and waits until it is served (snapshot_complete). */
  async function open(protocol: "grpc" | "connect" | "connect-json" | "grpc-web", options: { timeoutMs?: number } = {}) {
    const abort = new AbortController();
    const stream = collect(t.tasks(protocol), { skipSnapshot: true }, { signal: abort.signal, ...options });
    await eventually(() => stream.received.live || stream.received.error !== undefined, 5000, `a ${protocol} stream to open`);
    return { ...stream, abort: () => abort.abort() };
  }

  async function expectRefused(protocol: "grpc" | "connect" | "connect-json" | "grpc-web") {
    const started = Date.now();
    const received = await collect(t.tasks(protocol), { skipSnapshot: true }, { timeoutMs: 10_000 }).done;
    const err = await expectError(Promise.reject(received.error), Code.ResourceExhausted, "STREAM_LIMIT");
    expect(Date.now() - started, "refused at once").toBeLessThan(1000);
    expect(received.snapshotSequence).toBeUndefined();
    expect(err.rawMessage).toContain("2 streams");
    expect(err.rawMessage).toContain("retry later");
    expect(err.findDetails((await import("../gen/google/rpc/error_details_pb.js")).ErrorInfoSchema)[0].metadata).toEqual({ limit: "2" });
  }

  it("refuses a stream past the limit at once with RESOURCE_EXHAUSTED and STREAM_LIMIT, on every protocol, and counts it", async () => {
    const a = await open("grpc");
    const b = await open("connect-json");
    expect(a.received.error ?? b.received.error).toBeUndefined();
    for (const protocol of ["grpc", "connect", "connect-json", "grpc-web"] as const) await expectRefused(protocol);
    // grpc-js, the canonical gRPC client, sees the same status.
    const js = grpcJsClient(TaskService, `127.0.0.1:${t.server.port}`);
    const jsError = await new Promise<grpc.ServiceError>((resolve) => {
      const call = (js.raw as unknown as { streamTasks(r: unknown, m: grpc.Metadata): grpc.ClientReadableStream<unknown> }).streamTasks(
        create(StreamTasksRequestSchema, { skipSnapshot: true }),
        new grpc.Metadata(),
      );
      call.on("error", resolve);
      call.on("data", () => {});
    });
    js.close();
    expect(jsError.code).toBe(Code.ResourceExhausted);
    expect(grpcJsErrorReason(jsError)).toBe("STREAM_LIMIT");
    expect(await metric("taskstream_streams_active")).toBe(2);
    expect(await metric("taskstream_streams_refused_total")).toBe(5);
    // The two open streams were not disturbed.
    const { task } = await t.tasks().dispatchTask({ toolName: "seen", agentId: "cap" });
    await eventually(() => [a, b].every((s) => s.received.events.some((e) => e.taskId === task!.taskId)), 5000, "both streams to see the task");
    a.abort();
    b.abort();
    await Promise.all([a.done, b.done]);
    await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, "the slots to free");
  });

  it("frees a stream's slot however it ends: cancel, deadline, error, a client that vanished while not reading", async () => {
    for (let round = 0; round < 3; round++) {
      // A client cancels.
      let a = await open("grpc");
      let b = await open("connect");
      await expectRefused("grpc");
      a.abort();
      await a.done;
      await eventually(() => t.server.deps.gauges.activeStreams === 1, 5000, "the cancelled stream's slot");
      a = await open("grpc-web", { timeoutMs: 300 });
      expect(a.received.error).toBeUndefined();
      await expectRefused("connect");
      // A deadline.
      expect(ConnectError.from((await a.done).error).code).toBe(Code.DeadlineExceeded);
      await eventually(() => t.server.deps.gauges.activeStreams === 1, 5000, "the expired stream's slot");
      // An error after the stream began: a cursor past the log's end.
      await expectError(drain(t.tasks().streamTasks({ afterSequence: 1n << 40n })), Code.OutOfRange, "CURSOR_AHEAD");
      await expectError(drain(t.tasks("connect-json").streamTasks({ afterSequence: 1n << 40n })), Code.OutOfRange, "CURSOR_AHEAD");
      expect(t.server.deps.gauges.activeStreams).toBe(1);
      // A client that sent its request over HTTP/2 and vanished without reading.
      const session = http2.connect(t.server.url);
      const raw = session.request({ ":method": "POST", ":path": "/taskstream.v1.TaskService/StreamTasks", "content-type": "application/grpc", te: "trailers" });
      raw.end(Buffer.from([0, 0, 0, 0, 2, 0x18, 0x01])); // skip_snapshot: true
      raw.pause();
      await eventually(() => t.server.deps.gauges.activeStreams === 2, 5000, "the raw stream to open");
      await expectRefused("grpc-web");
      session.destroy();
      await eventually(() => t.server.deps.gauges.activeStreams === 1, 5000, "the vanished client's slot");
      b.abort();
      await b.done;
      await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, "every slot");
      // Both slots are free again: two open, the third is refused.
      a = await open("connect-json");
      b = await open("grpc");
      expect(a.received.error ?? b.received.error).toBeUndefined();
      await expectRefused("connect-json");
      a.abort();
      b.abort();
      await Promise.all([a.done, b.done]);
      await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, "every slot");
    }
    expect(await metric("taskstream_streams_active")).toBe(0);
  });

  it("frees every slot at shutdown, and a request refused as invalid takes none", async () => {
    await expectError(drain(t.tasks().streamTasks({ filter: { agentId: "x".repeat(300) } })), Code.InvalidArgument, "INVALID_ARGUMENT");
    const refusedBefore = await metric("taskstream_streams_refused_total");
    const a = await open("grpc");
    const b = await open("connect");
    await t.server.close();
    for (const s of [a, b]) {
      const err = ConnectError.from((await s.done).error);
      expect([err.code, errorReason(err)]).toEqual([Code.Unavailable, "SHUTTING_DOWN"]);
    }
    expect(t.server.deps.gauges.activeStreams).toBe(0);
    expect(refusedBefore).toBeGreaterThan(0);
  });
});

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) {
    // read until it ends or fails
  }
}

export { errorReason };
