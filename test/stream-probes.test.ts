import http from "node:http";
import http2 from "node:http2";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { StreamTasksRequestSchema } from "../gen/taskstream/v1/task_service_pb.js";
import { logBounds, readEvents } from "../src/storage/event-log.js";
import { expectError } from "./support/expect-error.js";
import { collect, eventually } from "./support/streams.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

// StreamTasks as a demanding client uses it: clients that stop reading, and
// retention racing a stream that catches up from the log.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const unique = () => Math.random().toString(36).slice(2);

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** This thread's heap and buffers, after collecting what is garbage. */
async function heldBytes(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(50);
  }
  const { heapUsed, arrayBuffers } = process.memoryUsage();
  return heapUsed + arrayBuffers;
}

/** A StreamTasks call whose client reads nothing after the response headers: raw HTTP/2 (gRPC) or HTTP/1.1 (Connect JSON). */
async function stalledStream(url: string, protocol: "grpc" | "connect-json", request: { afterSequence?: bigint; filter: { agentId: string } }) {
  const path = "/taskstream.v1.TaskService/StreamTasks";
  if (protocol === "grpc") {
    const message = toBinary(StreamTasksRequestSchema, create(StreamTasksRequestSchema, request));
    const framed = Buffer.alloc(5 + message.length);
    framed.writeUInt32BE(message.length, 1);
    framed.set(message, 5);
    const session = http2.connect(url);
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
    stream.end(framed);
    stream.pause();
    await new Promise((resolve) => stream.once("response", resolve));
    return () => session.destroy();
  }
  const json = JSON.stringify({ ...request, afterSequence: request.afterSequence?.toString() });
  const envelope = Buffer.alloc(5 + Buffer.byteLength(json));
  envelope.writeUInt32BE(Buffer.byteLength(json), 1);
  envelope.write(json, 5);
  const req = http.request(`${url}${path}`, { method: "POST", headers: { "content-type": "application/connect+json" }, agent: false });
  const res = await new Promise<http.IncomingMessage>((resolve) => {
    req.on("response", resolve);
    req.end(envelope);
  });
  res.pause();
  return () => req.destroy();
}

for (const dialect of DIALECTS) {
  describe(`StreamTasks probes on ${dialect}`, () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer(dialect, { streamWindow: 20 });
    });
    afterAll(() => t?.close());

    it("holds at most a page of events for a client that stops reading, in a snapshot or a replay from the log, over gRPC and Connect", async () => {
      const agentId = unique();
      const cursor = (await logBounds(t.server.deps.db.kysely)).last;
      // 60 running tasks of 300 kB: 18 MB of snapshot, 36 MB of log to replay, far behind the 20-event window.
      for (let i = 0; i < 60; i++) await t.tasks().dispatchTask({ toolName: "big", agentId, args: { pad: "x".repeat(300_000), i }, claim: { workerId: "w" } });
      for (const protocol of ["grpc", "connect-json"] as const) {
        for (const [what, request] of [
          ["snapshot", { filter: { agentId } }],
          ["replay", { filter: { agentId }, afterSequence: BigInt(cursor) }],
        ] as const) {
          const before = await heldBytes();
          const ends = [];
          for (let i = 0; i < 4; i++) ends.push(await stalledStream(t.server.url, protocol, request));
          // Long enough for the server to fill each stream's buffers and wait.
          await sleep(1000);
          const held = (await heldBytes()) - before;
          for (const end of ends) end();
          await eventually(() => t.server.deps.gauges.activeStreams === 0, 5000, "the stalled streams to be released");
          // Four streams holding their whole snapshot (or a 1,000-event page of
          // the log, or 100 queued responses) held 72 MB and more.
          expect(held, `${protocol} ${what}: bytes held by 4 stalled streams`).toBeLessThan(20e6);
        }
      }
      // Read normally, both give every event, in order.
      const log = (await readEvents(t.server.deps.db.kysely, { after: cursor, limit: 1000 })).filter((e) => e.agentId === agentId);
      for (const protocol of ["grpc", "connect-json"] as const) {
        const abort = new AbortController();
        const snapshot = collect(t.tasks(protocol), { filter: { agentId } }, { signal: abort.signal });
        const replay = collect(t.tasks(protocol), { filter: { agentId }, afterSequence: BigInt(cursor) }, { signal: abort.signal });
        await eventually(() => snapshot.received.live && replay.received.events.length >= log.length, 20_000, `${protocol}: snapshot and replay`);
        abort.abort();
        await Promise.all([snapshot.done, replay.done]);
        expect(snapshot.received.snapshot.map((e) => e.sequence)).toEqual(log.filter((e) => e.kind.case === "running").map((e) => e.sequence));
        expect(replay.received.events.map((e) => e.sequence)).toEqual(log.map((e) => e.sequence));
      }
    });

    it.runIf(dialect === "postgres")("fails CURSOR_EXPIRED, never skips events, when retention deletes what a stream catching up from the log was about to read", async () => {
      const agentId = unique();
      const cursor = (await logBounds(t.server.deps.db.kysely)).last;
      const { task, lease } = await t.tasks().dispatchTask({ toolName: "gone", agentId, claim: { workerId: "w" } });
      await t.workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
      // Enough later events that the cursor is behind the tail's 20-event window.
      for (let i = 0; i < 30; i++) await t.tasks().dispatchTask({ toolName: "later", agentId });
      const lastGone = Number((await t.tasks().getTask({ taskId: task!.taskId })).task!.sequence);
      const { last } = await logBounds(t.server.deps.db.kysely);
      await eventually(() => t.server.deps.tail.lastSequence >= last, 5000, "the tail to read every event");

      // Hold the events table while the stream starts, so its read waits; then
      // delete the finished task's events and move the watermark, as retention does.
      const blocker = new pg.Client({ connectionString: t.database });
      await blocker.connect();
      try {
        await blocker.query("BEGIN");
        await blocker.query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE");
        const stream = collect(t.tasks(), { filter: { agentId }, afterSequence: BigInt(cursor) }, { timeoutMs: 10_000 });
        await eventually(
          async () => {
            // pg_stat_activity is read once per transaction unless its snapshot is cleared.
            await blocker.query("SELECT pg_stat_clear_snapshot()");
            const waiting = await blocker.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%from \"events\"%'");
            return waiting.rowCount! > 0;
          },
          5000,
          "the stream's read to wait for the lock",
        );
        await blocker.query("DELETE FROM events WHERE task_id = $1", [task!.taskId]);
        await blocker.query("UPDATE log_head SET trimmed_through = $1 WHERE id = 1", [lastGone]);
        await blocker.query("COMMIT");
        const received = await stream.done;
        expect(received.events.map((e) => e.taskId), "no event after a gap").toEqual([]);
        const err = await expectError(Promise.reject(received.error), Code.FailedPrecondition, "CURSOR_EXPIRED");
        expect(err.findDetails(ErrorInfoSchema)[0].metadata).toEqual({ oldest_sequence: String(lastGone) });
      } finally {
        await blocker.query("ROLLBACK").catch(() => {});
        await blocker.end();
      }
    });
  });
}
