/**
 * The raw transport ceiling: a trivial server for the same
 * TaskService.StreamTasks, with no storage and no tail, that streams
 * events to the same clients as fast as they take them. Each event goes, as
 * on the real server, to every unfiltered stream and to the stream filtered
 * to its (random) agent; every stream starts with snapshot_complete.
 *
 *   --mode h2       node:http2 directly: each event is encoded and framed once,
 *                   and the same bytes are written to every matching stream.
 *                   The ceiling of the HTTP/2 transport and the clients.
 *   --mode connect  connect-node's handler, as the real server uses: each event
 *                   is encoded once and carried, as the real server carries
 *                   its stored events, as an unknown field 1 of one shared
 *                   StreamTasksResponse that every matching stream yields;
 *                   connect-node then writes those bytes out for each stream.
 *                   The ceiling of connect-node's per-message handling.
 *
 *   --rate N        events per second, paced every 10 ms, instead of as fast as
 *                   the clients take them: what the transport and the
 *                   clients alone add to an event's latency at that rate.
 *
 * Prints one JSON line {"msg":"raw listening","url":...}; SIGTERM stops it.
 */
import http2 from "node:http2";
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { TaskEventSchema, TaskStatus, type TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import {
  StreamTasksRequestSchema,
  StreamTasksResponseSchema,
  TaskService,
  type StreamTasksResponse,
} from "../../gen/taskstream/v1/task_service_pb.js";
import { timestampFromMs } from "../../src/domain/time.js";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: { mode: { type: "string", default: "h2" }, agents: { type: "string", default: "1000" }, rate: { type: "string", default: "0" } },
  strict: true,
});
const mode = values.mode;
if (mode !== "h2" && mode !== "connect") throw new Error(`--mode: h2 or connect, not ${mode}`);
const agents = Number(values.agents);
const rate = Number(values.rate);
if (!(rate >= 0)) throw new Error(`--rate: a number of events per second, not ${values.rate}`);
/** Events per turn of the pump before it yields to I/O. */
const BATCH = 20;
/** connect mode: messages queued for one stream before the pump waits. */
const QUEUE_LIMIT = 256;

interface Subscriber {
  /** h2: write bytes; returns false when the stream's buffer is full. */
  send(event: { bytes: Uint8Array; message: StreamTasksResponse }): void;
}

const unfiltered = new Set<Subscriber>();
const byAgent = new Map<string, Set<Subscriber>>();
/** Subscribers that are full; the pump waits for them. */
const blocked = new Set<Subscriber>();
let unblock: (() => void) | undefined;

function subscribe(agentId: string, sub: Subscriber): () => void {
  if (agentId === "") unfiltered.add(sub);
  else {
    let set = byAgent.get(agentId);
    if (!set) byAgent.set(agentId, (set = new Set()));
    set.add(sub);
  }
  return () => {
    unfiltered.delete(sub);
    byAgent.get(agentId)?.delete(sub);
    release(sub);
  };
}

function release(sub: Subscriber): void {
  if (blocked.delete(sub) && blocked.size === 0) {
    unblock?.();
    unblock = undefined;
  }
}

let sequence = 0;
const taskIds = Array.from({ length: 1024 }, () => randomUUID());

function nextEvent(): { agentId: string; message: StreamTasksResponse; bytes: Uint8Array } {
  const n = ++sequence;
  const now = Date.now();
  const agentId = `agent-${Math.floor(Math.random() * agents)}`;
  const message = create(StreamTasksResponseSchema, {
    message: {
      case: "event",
      value: {
        sequence: BigInt(n),
        eventTime: timestampFromMs(now),
        taskId: taskIds[n % taskIds.length],
        toolName: "bench-tool",
        toolCallId: `raw-${n}`,
        agentId,
        runId: `run-${n % 97}`,
        status: TaskStatus.RUNNING,
        attempt: 1,
        kind: { case: "running", value: { args: { query: `bench task ${n}`, n }, startTime: timestampFromMs(now), workerId: "bench-producer" } },
      },
    },
  });
  const body = toBinary(StreamTasksResponseSchema, message);
  if (mode !== "h2") {
    // What the real server does with an event's stored encoding: field 1 (event), verbatim.
    const shared = create(StreamTasksResponseSchema);
    const event = toBinary(TaskEventSchema, message.message.value as TaskEvent);
    shared.$unknown = [{ no: 1, wireType: WireType.LengthDelimited, data: new BinaryWriter().bytes(event).finish() }];
    return { agentId, message: shared, bytes: new Uint8Array(0) };
  }
  const bytes = new Uint8Array(5 + body.length);
  new DataView(bytes.buffer).setUint32(1, body.length);
  bytes.set(body, 5);
  return { agentId, message, bytes };
}

function publish(): void {
  const e = nextEvent();
  for (const sub of unfiltered) sub.send(e);
  const subs = byAgent.get(e.agentId);
  if (subs) for (const sub of subs) sub.send(e);
}

/** As fast as the clients take the events: BATCH a turn, waiting for full streams to drain. */
async function pump(): Promise<void> {
  for (;;) {
    if (unfiltered.size === 0 && byAgent.size === 0) {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    for (let i = 0; i < BATCH; i++) publish();
    if (blocked.size > 0) await new Promise<void>((r) => (unblock = r));
    else await new Promise((r) => setImmediate(r));
  }
}

/** `rate` events a second, those due published every 10 ms, from the first stream on; never waits for the clients. */
function pace(): void {
  let started = 0;
  let published = 0;
  setInterval(() => {
    if (unfiltered.size === 0 && byAgent.size === 0) return;
    if (started === 0) started = performance.now();
    const due = Math.floor(((performance.now() - started) / 1000) * rate);
    for (; published < due; published++) publish();
  }, 10);
}

function frame(message: StreamTasksResponse): Buffer {
  const body = toBinary(StreamTasksResponseSchema, message);
  const bytes = Buffer.alloc(5 + body.length);
  bytes.writeUInt32BE(body.length, 1);
  bytes.set(body, 5);
  return bytes;
}

const snapshotComplete = create(StreamTasksResponseSchema, { message: { case: "snapshotComplete", value: { sequence: 0n } } });

function h2Server(): http2.Http2Server {
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    if (headers[":path"] !== `/${TaskService.typeName}/StreamTasks`) {
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
      return;
    }
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.once("end", () => {
      const body = Buffer.concat(chunks);
      const request = fromBinary(StreamTasksRequestSchema, body.subarray(5, 5 + body.readUInt32BE(1)));
      stream.respond({ ":status": 200, "content-type": "application/grpc+proto" });
      stream.write(frame(snapshotComplete));
      const sub: Subscriber = {
        send(e) {
          if (!stream.write(e.bytes) && !blocked.has(sub)) {
            blocked.add(sub);
            stream.once("drain", () => release(sub));
          }
        },
      };
      const unsubscribe = subscribe(request.filter?.agentId ?? "", sub);
      stream.once("close", unsubscribe);
    });
    stream.on("error", () => {});
  });
  return server;
}

function connectServer(): http2.Http2Server {
  const routes = (router: ConnectRouter) =>
    router.service(TaskService, {
      async *streamTasks(req, ctx) {
        let queue: StreamTasksResponse[] = [];
        let wake: (() => void) | undefined;
        const sub: Subscriber = {
          send(e) {
            queue.push(e.message);
            if (queue.length >= QUEUE_LIMIT) blocked.add(sub);
            wake?.();
            wake = undefined;
          },
        };
        const unsubscribe = subscribe(req.filter?.agentId ?? "", sub);
        const aborted = new Promise<void>((r) => ctx.signal.addEventListener("abort", () => r(), { once: true }));
        try {
          yield snapshotComplete;
          while (!ctx.signal.aborted) {
            if (queue.length === 0) {
              await Promise.race([new Promise<void>((r) => (wake = r)), aborted]);
              continue;
            }
            const batch = queue;
            queue = [];
            release(sub);
            for (const m of batch) yield m;
          }
        } finally {
          unsubscribe();
        }
      },
    });
  return http2.createServer(connectNodeAdapter({ routes }));
}

const server = mode === "h2" ? h2Server() : connectServer();
server.on("session", (session) => session.on("error", () => {}));
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(JSON.stringify({ msg: "raw listening", url: `http://127.0.0.1:${port}`, mode }) + "\n");
  if (rate > 0) pace();
  else void pump();
});
process.once("SIGTERM", () => process.exit(0));
