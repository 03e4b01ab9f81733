import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { gunzipSync, brotliDecompressSync, gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/health/v1/health_pb.js";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import {
  GetTaskRequestSchema,
  GetTaskResponseSchema,
  ListTasksRequestSchema,
  ListTasksResponseSchema,
  TaskService,
} from "../gen/taskstream/v1/task_service_pb.js";
import { WorkerService } from "../gen/taskstream/v1/worker_service_pb.js";
import { SETTINGS } from "../src/config.js";
import type { TaskstreamServer } from "../src/server/server.js";
import { expectError } from "./support/expect-error.js";
import { scrapeMetrics } from "./support/metrics.js";
import { freshDatabase, startTestServer, startWith, type TestServer } from "./support/test-server.js";

// The server as a whole: one port for every protocol, TLS, compression, the
// CLI and its signals, and graceful shutdown. SQLite throughout; storage is
// covered per dialect elsewhere.

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);
const s = (seconds: number) => ({ seconds: BigInt(seconds) });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const uniq = (prefix: string) => `${prefix}-${Math.random().toString(36).slice(2)}`;

/** A raw HTTP/1.1 request, body and headers as they were on the wire (no decompression). */
function h1Request(url: string, path: string, body: Buffer | string, headers: Record<string, string>, options: https.RequestOptions = {}) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
    const lib = url.startsWith("https") ? https : http;
    const req = lib.request(`${url}${path}`, { method: "POST", headers, agent: false, ...options }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** One raw gRPC call over HTTP/2 cleartext; returns response headers, the raw body and the grpc-status. */
function rawGrpc(url: string, path: string, message: Uint8Array, headers: Record<string, string> = {}) {
  return new Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer; grpcStatus: number }>((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    Buffer.from(message).copy(frame, 5);
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on("response", (h) => (head = h));
    req.on("trailers", (t) => (trailers = t));
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      session.close();
      resolve({ headers: head, body: Buffer.concat(chunks), grpcStatus: Number(trailers["grpc-status"] ?? head["grpc-status"]) });
    });
    req.on("error", reject);
    req.end(frame);
  });
}

describe("one port serves every protocol", () => {
  let t: TestServer;
  beforeAll(async () => {
    // A short grace: idle HTTP/1.1 keep-alive connections hold close() for all of it (see server shutdown below).
    t = await startTestServer("sqlite", { shutdownGraceMs: 300 });
  });
  afterAll(() => t?.close());

  it("gRPC, Connect binary and JSON, gRPC-Web, grpc-js and curl-style JSON all see the same task", async () => {
    const toolName = uniq("one-port");
    // Dispatched by a plain POST, as curl would.
    const res = await fetch(`${t.server.url}/taskstream.v1.TaskService/DispatchTask`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ toolName, toolCallId: "call-1", agentId: "agent-1", args: { query: "tide tables" } }),
    });
    expect(res.status).toBe(200);
    const dispatched = (await res.json()) as { task: { taskId: string; status: string }; created: boolean };
    expect(dispatched).toMatchObject({ created: true, task: { status: "TASK_STATUS_PENDING" } });
    const taskId = dispatched.task.taskId;

    for (const protocol of ["grpc", "connect", "connect-json", "grpc-web"] as const) {
      const { task } = await t.tasks(protocol).getTask({ taskId });
      expect(task, protocol).toMatchObject({ taskId, toolName, toolCallId: "call-1", agentId: "agent-1", args: { query: "tide tables" } });
    }
    expect((await t.grpcJs.tasks.getTask({ taskId })).task).toMatchObject({ taskId, toolName, args: { query: "tide tables" } });

    // Each step of its life over a different protocol.
    const { tasks } = await t.workers("grpc-web").claimTasks({ workerId: "w-web", toolNames: [toolName] });
    const leaseId = tasks[0].lease!.leaseId;
    await t.workers("connect").reportOutput({ taskId, leaseId, output: { kind: { case: "stringValue", value: "3 results" } } });
    await t.grpcJs.workers.heartbeat({ taskId, leaseId });
    await t.workers("grpc").completeTask({ taskId, leaseId, result: { kind: { case: "stringValue", value: "06:12" } } });
    const events = await fetch(`${t.server.url}/taskstream.v1.TaskService/ListTaskEvents`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ taskId }),
    }).then((r) => r.json() as Promise<{ events: { status: string; output?: unknown; completed?: unknown }[]; totalSize: string }>);
    expect(events.totalSize).toBe("4");
    expect(events.events.map((e) => e.status)).toEqual([
      "TASK_STATUS_PENDING",
      "TASK_STATUS_RUNNING",
      "TASK_STATUS_RUNNING",
      "TASK_STATUS_COMPLETED",
    ]);
    expect(events.events[2].output).toEqual({ output: "3 results" });
    expect((await t.tasks("connect-json").getTask({ taskId })).task!.status).toBe(TaskStatus.COMPLETED);
  });

  it("speaks HTTP/2 and HTTP/1.1 on the same port, told apart by the first bytes", async () => {
    const request = toBinary(GetTaskRequestSchema, create(GetTaskRequestSchema, { taskId: "no-such-task" }));
    const grpcRes = await rawGrpc(t.server.url, "/taskstream.v1.TaskService/GetTask", request);
    expect(Code[grpcRes.grpcStatus]).toBe(Code[Code.NotFound]);
    const h1 = await h1Request(t.server.url, "/taskstream.v1.TaskService/GetTask", '{"taskId":"no-such-task"}', { "content-type": "application/json" });
    expect(h1.status).toBe(404);
    expect(JSON.parse(h1.body.toString())).toMatchObject({ code: "not_found" });
  });

  it.each([false, true])("GetTask, ListTasks and ListTaskEvents answer in full over GET (binary: %s)", async (useBinaryFormat) => {
    const agentId = `get-reads-${useBinaryFormat}`;
    const { task } = await t.tasks().dispatchTask({ toolName: "get-reads", agentId, args: { n: 7 } });
    const viaGet = createClient(TaskService, createConnectTransport({ baseUrl: t.server.url, httpVersion: "1.1", useBinaryFormat, useHttpGet: true }));
    expect((await viaGet.getTask({ taskId: task!.taskId })).task).toMatchObject({ taskId: task!.taskId, args: { n: 7 } });
    const listed = await viaGet.listTasks({ filter: { agentId } });
    expect(listed.tasks.map((x) => x.taskId)).toEqual([task!.taskId]);
    expect(listed.totalSize).toBe(1n);
    expect((await viaGet.listTaskEvents({ taskId: task!.taskId })).events.map((e) => e.kind.case)).toEqual(["queued"]);
  });

  it("refuses GET for a call that changes something", async () => {
    const message = encodeURIComponent(JSON.stringify({ toolName: "by-get" }));
    const res = await h1Request(t.server.url, `/taskstream.v1.TaskService/DispatchTask?connect=v1&encoding=json&message=${message}`, "", {}, { method: "GET" });
    expect(res.status).toBe(405);
    expect((await t.tasks().listTasks({ filter: { toolName: "by-get" } })).tasks).toEqual([]);
  });

  it("reports event-loop stalls and garbage collections on GET /metrics", async () => {
    const scrape = async () => {
      const value = await scrapeMetrics(t.server.url);
      const over100ms = value("nodejs_eventloop_lag_seconds_count") - value("nodejs_eventloop_lag_seconds_bucket", 'le="0.1"');
      return { over100ms, gcRuns: value("nodejs_gc_duration_seconds_count") };
    };
    const before = await scrape();
    // The server shares this process: stall its event loop for 150 ms, from
    // an I/O callback as a slow handler would, and make garbage.
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        const until = Date.now() + 150;
        while (Date.now() < until);
        resolve();
      }),
    );
    const garbage: object[] = [];
    for (let i = 0; i < 2_000_000; i++) garbage.push({ i });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const after = await scrape();
    expect(after.over100ms).toBeGreaterThan(before.over100ms);
    expect(after.gcRuns).toBeGreaterThan(before.gcRuns);
  });

  it("reports on GET /metrics how long after its commit the log tail handed each event to the streams", async () => {
    const scrape = async () => {
      const value = await scrapeMetrics(t.server.url);
      return {
        count: value("taskstream_tail_handoff_lag_seconds_count"),
        sum: value("taskstream_tail_handoff_lag_seconds_sum"),
        under1s: value("taskstream_tail_handoff_lag_seconds_bucket", 'le="1"'),
        head: value("taskstream_log_last_sequence"),
      };
    };
    const before = await scrape();
    for (let i = 0; i < 5; i++) await t.tasks().dispatchTask({ toolName: "handoff", agentId: uniq("handoff") });
    let after = await scrape();
    for (let i = 0; i < 100 && after.head < before.head + 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      after = await scrape();
    }
    // A queued event per task, each handed over once, within a second of its commit here.
    expect(after.head).toBeGreaterThanOrEqual(before.head + 5);
    expect(after.count - before.count).toBe(after.head - before.head);
    expect(after.under1s - before.under1s).toBe(after.head - before.head);
    expect(after.sum).toBeGreaterThanOrEqual(before.sum);
  });

  it("answers grpc.health.v1.Health/Check SERVING for each service", async () => {
    const health = createClient(Health, t.transport("grpc"));
    for (const service of ["", "taskstream.v1.TaskService", "taskstream.v1.WorkerService"]) {
      expect((await health.check({ service })).status, service).toBe(ServingStatus.SERVING);
    }
    expect((await createClient(Health, t.transport("connect")).check({ service: "taskstream.v1.TaskService" })).status).toBe(ServingStatus.SERVING);
  });

  describe("compression", () => {
    const agentId = uniq("compress");
    const bigArgs = (i: number) => ({ text: `task ${i}: ${"the quick brown fox jumps over the lazy dog ".repeat(100)}` });
    let smallTaskId: string;

    beforeAll(async () => {
      for (let i = 0; i < 30; i++) await t.tasks().dispatchTask({ toolName: "compress", agentId, args: bigArgs(i) });
      smallTaskId = (await t.tasks().dispatchTask({ toolName: "c" })).task!.taskId;
    });

    it("takes gzip requests from connect-node clients over gRPC and Connect", async () => {
      const transports: Transport[] = [
        createGrpcTransport({ baseUrl: t.server.url, sendCompression: compressionGzip, acceptCompression: [compressionGzip], compressMinBytes: 0 }),
        createConnectTransport({ baseUrl: t.server.url, httpVersion: "1.1", sendCompression: compressionGzip, acceptCompression: [compressionGzip], compressMinBytes: 0 }),
        createGrpcWebTransport({ baseUrl: t.server.url, httpVersion: "1.1", sendCompression: compressionGzip, acceptCompression: [compressionGzip], compressMinBytes: 0 }),
      ];
      for (const transport of transports) {
        const tasks = createClient(TaskService, transport);
        const args = bigArgs(99);
        const { task } = await tasks.dispatchTask({ toolName: "gzip-in", agentId: uniq("gz"), args });
        expect((await tasks.getTask({ taskId: task!.taskId })).task!.args).toEqual(args);
        const list = await tasks.listTasks({ filter: { agentId }, pageSize: 100 });
        expect(list.tasks).toHaveLength(30);
      }
    });

    it("takes a gzip-encoded Connect JSON body, as curl --data-binary with content-encoding would send", async () => {
      const body = gzipSync(JSON.stringify({ toolName: "gzip-raw", args: bigArgs(7) }));
      const res = await h1Request(t.server.url, "/taskstream.v1.TaskService/DispatchTask", body, {
        "content-type": "application/json",
        "content-encoding": "gzip",
      });
      expect(res.status, res.body.toString()).toBe(200);
      // Without an accept-encoding, connect-es answers in the request's own encoding.
      const json = res.headers["content-encoding"] === "gzip" ? gunzipSync(res.body) : res.body;
      expect(JSON.parse(json.toString()).task.args).toEqual(bigArgs(7));
    });

    it("compresses a large Connect response for a client that accepts gzip or br, and leaves a tiny one alone", async () => {
      const body = JSON.stringify({ filter: { agentId }, pageSize: 100 });
      const plain = await h1Request(t.server.url, "/taskstream.v1.TaskService/ListTasks", body, { "content-type": "application/json" });
      expect(plain.headers["content-encoding"]).toBeUndefined();
      expect(JSON.parse(plain.body.toString()).tasks).toHaveLength(30);

      const gz = await h1Request(t.server.url, "/taskstream.v1.TaskService/ListTasks", body, { "content-type": "application/json", "accept-encoding": "gzip" });
      expect(gz.status).toBe(200);
      expect(gz.headers["content-encoding"]).toBe("gzip");
      expect(gz.body.length).toBeLessThan(plain.body.length / 5);
      expect(JSON.parse(gunzipSync(gz.body).toString())).toEqual(JSON.parse(plain.body.toString()));

      const br = await h1Request(t.server.url, "/taskstream.v1.TaskService/ListTasks", body, { "content-type": "application/json", "accept-encoding": "br" });
      expect(br.headers["content-encoding"]).toBe("br");
      expect(JSON.parse(brotliDecompressSync(br.body).toString()).tasks).toHaveLength(30);

      const tiny = await h1Request(t.server.url, "/taskstream.v1.TaskService/GetTask", JSON.stringify({ taskId: smallTaskId }), {
        "content-type": "application/json",
        "accept-encoding": "gzip",
      });
      expect(tiny.status).toBe(200);
      expect(tiny.headers["content-encoding"]).toBeUndefined();
      expect(JSON.parse(tiny.body.toString()).task.taskId).toBe(smallTaskId);
    });

    it("compresses a large gRPC response message for a client that sends grpc-accept-encoding: gzip, and not a tiny one", async () => {
      const list = toBinary(ListTasksRequestSchema, create(ListTasksRequestSchema, { filter: { agentId }, pageSize: 100 }));
      const big = await rawGrpc(t.server.url, "/taskstream.v1.TaskService/ListTasks", list, { "grpc-accept-encoding": "gzip" });
      expect(big.grpcStatus).toBe(0);
      expect(big.headers["grpc-encoding"]).toBe("gzip");
      expect(big.body[0], "compressed flag of the message frame").toBe(1);
      const decoded = fromBinary(ListTasksResponseSchema, gunzipSync(big.body.subarray(5, 5 + big.body.readUInt32BE(1))));
      expect(decoded.tasks).toHaveLength(30);

      const get = toBinary(GetTaskRequestSchema, create(GetTaskRequestSchema, { taskId: smallTaskId }));
      const tiny = await rawGrpc(t.server.url, "/taskstream.v1.TaskService/GetTask", get, { "grpc-accept-encoding": "gzip" });
      expect(tiny.grpcStatus).toBe(0);
      expect(tiny.body[0], "compressed flag of the message frame").toBe(0);
      expect(fromBinary(GetTaskResponseSchema, tiny.body.subarray(5)).task!.taskId).toBe(smallTaskId);
    });

    it("with --compress-min-bytes 0 compresses no response, over gRPC or Connect, and still takes gzip requests", async () => {
      const quiet = await startTestServer("sqlite", { compressMinBytes: 0 });
      try {
        const gzipped = createGrpcTransport({ baseUrl: quiet.server.url, sendCompression: compressionGzip, compressMinBytes: 0 });
        const tasks = createClient(TaskService, gzipped);
        const agent = uniq("uncompressed");
        for (let i = 0; i < 10; i++) await tasks.dispatchTask({ toolName: "plain", agentId: agent, args: bigArgs(i) });

        const list = toBinary(ListTasksRequestSchema, create(ListTasksRequestSchema, { filter: { agentId: agent }, pageSize: 100 }));
        const grpcRes = await rawGrpc(quiet.server.url, "/taskstream.v1.TaskService/ListTasks", list, { "grpc-accept-encoding": "gzip" });
        expect(grpcRes.grpcStatus).toBe(0);
        expect(grpcRes.headers["grpc-encoding"]).toBeUndefined();
        expect(grpcRes.body[0], "compressed flag of the message frame").toBe(0);
        expect(fromBinary(ListTasksResponseSchema, grpcRes.body.subarray(5)).tasks).toHaveLength(10);

        const body = JSON.stringify({ filter: { agentId: agent }, pageSize: 100 });
        const json = await h1Request(quiet.server.url, "/taskstream.v1.TaskService/ListTasks", body, { "content-type": "application/json", "accept-encoding": "gzip, br" });
        expect(json.status).toBe(200);
        expect(json.headers["content-encoding"]).toBeUndefined();
        expect(JSON.parse(json.body.toString()).tasks).toHaveLength(10);
      } finally {
        await quiet.close();
      }
    });
  });
});

describe("a client that goes away mid-stream", () => {
  let t: TestServer;
  const errors: string[] = [];
  beforeAll(async () => {
    t = await startTestServer("sqlite", { shutdownGraceMs: 300 }, (line) => errors.push(line));
  });
  afterAll(() => t?.close());

  // A browser tab closing on a dashboard: the stream ends, and nothing is logged as an error.
  it("leaves no error in the server's log, over every protocol and HTTP version", async () => {
    const baseUrl = t.server.url;
    const transports: [string, Transport][] = [
      ["connect-json HTTP/1.1", t.transport("connect-json")],
      ["grpc-web HTTP/1.1", t.transport("grpc-web")],
      ["connect HTTP/2", createConnectTransport({ baseUrl, httpVersion: "2" })],
      ["grpc-web HTTP/2", createGrpcWebTransport({ baseUrl, httpVersion: "2" })],
      ["grpc", t.transport("grpc")],
    ];
    for (const [name, transport] of transports) {
      const abort = new AbortController();
      const stream = createClient(TaskService, transport).streamTasks({ heartbeatInterval: { seconds: 60n } }, { signal: abort.signal });
      for await (const res of stream) {
        if (res.message.case === "snapshotComplete") break;
      }
      abort.abort();
      // The server sees the close, ends the handler, and would log now.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(errors, name).toEqual([]);
    }
    expect(t.server.deps.gauges.activeStreams).toBe(0);
  });
});

describe("TLS", () => {
  let dir: string;
  let server: TaskstreamServer;
  let ca: Buffer;
  let drop: () => Promise<void>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "taskstream-tls-"));
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    await run("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
      "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
    ]);
    ca = readFileSync(cert);
    const db = await freshDatabase("sqlite");
    drop = db.drop;
    server = await startWith(db.location, { tlsCert: cert, tlsKey: key, shutdownGraceMs: 300 });
  });
  afterAll(async () => {
    await server?.close();
    await drop?.();
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves gRPC over HTTPS HTTP/2 and Connect and gRPC-Web over HTTPS HTTP/1.1, picked by ALPN", async () => {
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const grpcTasks = createClient(TaskService, createGrpcTransport({ baseUrl: server.url, nodeOptions: { ca } }));
    const { task } = await grpcTasks.dispatchTask({ toolName: "tls", args: { secure: true } });
    const taskId = task!.taskId;
    for (const transport of [
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { ca } }),
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true, nodeOptions: { ca } }),
      createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { ca } }),
      // By host name, which the certificate also names.
      createGrpcTransport({ baseUrl: server.url.replace("127.0.0.1", "localhost"), nodeOptions: { ca } }),
    ]) {
      expect((await createClient(TaskService, transport).getTask({ taskId })).task!.args).toEqual({ secure: true });
    }
    const res = await h1Request(server.url, "/taskstream.v1.TaskService/GetTask", JSON.stringify({ taskId }), { "content-type": "application/json" }, { ca });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString()).task.taskId).toBe(taskId);
  });

  it("serves grpc-js with SSL credentials", async () => {
    const Ctor = grpc.makeGenericClientConstructor(
      {
        getTask: {
          path: "/taskstream.v1.TaskService/GetTask",
          requestStream: false,
          responseStream: false,
          requestSerialize: (m: { taskId: string }) => Buffer.from(toBinary(GetTaskRequestSchema, create(GetTaskRequestSchema, m))),
          requestDeserialize: (b: Buffer) => fromBinary(GetTaskRequestSchema, b),
          responseSerialize: () => Buffer.alloc(0),
          responseDeserialize: (b: Buffer) => fromBinary(GetTaskResponseSchema, b),
        },
      },
      "TaskService",
    );
    const client = new Ctor(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(ca));
    try {
      const { task } = await createClient(TaskService, createGrpcTransport({ baseUrl: server.url, nodeOptions: { ca } })).dispatchTask({ toolName: "tls-js" });
      const got = await new Promise<{ task?: { taskId: string } }>((resolve, reject) =>
        (client as unknown as { getTask: Function }).getTask({ taskId: task!.taskId }, (err: Error | null, res: { task?: { taskId: string } }) =>
          err ? reject(err) : resolve(res),
        ),
      );
      expect(got.task!.taskId).toBe(task!.taskId);
    } finally {
      client.close();
    }
  });

  it("is real TLS: a client that does not trust the certificate is refused", async () => {
    const untrusting = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    const err = await untrusting.check({}).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.message).toMatch(/certificate/i);
  });
});

describe("CLI", () => {
  let dir: string;
  const children: ChildProcess[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "taskstream-cli-"));
  });
  afterAll(() => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * The environment without any TASKSTREAM_ setting of the machine running the
   * tests, and with no SIGTERM drain: these tests time the shutdown itself
   * (test/shutdown-drain.test.ts covers the drain).
   */
  function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TASKSTREAM_")) env[k] = v;
    return { ...env, TASKSTREAM_SHUTDOWN_DRAIN_MS: "0", ...extra };
  }

  /** Runs bin/taskstream.js; collects its JSON log lines and stderr, and when it exits. */
  function taskstream(args: string[], env: NodeJS.ProcessEnv = cleanEnv()) {
    const child = spawn(process.execPath, [join(ROOT, "bin/taskstream.js"), ...args], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const logs: { msg: string; [k: string]: unknown }[] = [];
    let stdout = "";
    let stderr = "";
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
      child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() })),
    );
    let onLine: (() => void) | undefined;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      stdout += `${line}\n`;
      try {
        logs.push(JSON.parse(line));
      } catch {
        // --help prints plain text.
      }
      onLine?.();
    });
    /** Waits for the log line with this msg. */
    const waitFor = (msg: string, timeoutMs = 20_000) =>
      new Promise<{ msg: string; [k: string]: unknown }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no "${msg}" log line; stderr: ${stderr}`)), timeoutMs);
        const check = () => {
          const found = logs.find((l) => l.msg === msg);
          if (found) {
            clearTimeout(timer);
            onLine = undefined;
            resolve(found);
          }
        };
        onLine = check;
        check();
        void exited.then(() => {
          check();
          clearTimeout(timer);
          reject(new Error(`exited before "${msg}"; stderr: ${stderr}`));
        });
      });
    return { child, logs, exited, waitFor, stdout: () => stdout, stderr: () => stderr };
  }

  /** Serves until SIGTERM; makes a call in between; checks it stops cleanly and quickly. */
  async function serveThenStop(args: string[], env: NodeJS.ProcessEnv, database: string) {
    const proc = taskstream(args, env);
    const listening = await proc.waitFor("taskstream listening");
    const url = listening.url as string;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(url).not.toMatch(/:7420$/);
    expect(listening).toMatchObject({ level: "info", database, dialect: "sqlite", tls: false });

    const tasks = createClient(TaskService, createGrpcTransport({ baseUrl: url }));
    const { task } = await tasks.dispatchTask({ toolName: "cli", args: { via: "cli" } });
    expect((await tasks.getTask({ taskId: task!.taskId })).task!.args).toEqual({ via: "cli" });
    expect(existsSync(database)).toBe(true);

    const signalled = Date.now();
    proc.child.kill("SIGTERM");
    const exit = await proc.exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.at - signalled).toBeLessThan(5000);
    const messages = proc.logs.map((l) => l.msg);
    expect(messages).toEqual(expect.arrayContaining(["signal received", "taskstream shutting down", "taskstream stopped"]));
    expect(proc.logs.find((l) => l.msg === "signal received")).toMatchObject({ signal: "SIGTERM" });
    expect(messages.indexOf("taskstream stopped")).toBe(messages.length - 1);
  }

  it("serves with flags, and exits 0 on SIGTERM after logging taskstream stopped", async () => {
    const database = join(dir, "flags.db");
    await serveThenStop(["serve", "--port", "0", "--database", database], cleanEnv(), database);
  });

  it("keeps serving, and stops cleanly, after the reader of its logs goes away", async () => {
    const database = join(dir, "no-reader.db");
    const proc = taskstream(["serve", "--port", "0", "--database", database]);
    const url = (await proc.waitFor("taskstream listening")).url as string;
    proc.child.stdout!.destroy();
    const tasks = createClient(TaskService, createGrpcTransport({ baseUrl: url }));
    // Each call may log; none may crash the server on the closed pipe.
    for (let i = 0; i < 3; i++) await tasks.dispatchTask({ toolName: "cli", args: { i } });
    expect((await tasks.listTasks({ filter: { toolName: "cli" } })).totalSize).toBe(3n);
    proc.child.kill("SIGTERM");
    expect(await proc.exited).toMatchObject({ code: 0, signal: null });
    expect(proc.stderr()).not.toMatch(/EPIPE|Unhandled/);
  });

  it("serves with environment settings instead of flags", async () => {
    const database = join(dir, "env.db");
    await serveThenStop(["serve"], cleanEnv({ TASKSTREAM_PORT: "0", TASKSTREAM_DATABASE: database }), database);
  });

  it("exits with a message naming the database when it cannot open it, without hanging or leaking the password", async () => {
    writeFileSync(join(dir, "not-a.db"), "not a database");
    const cases = [
      // Under /proc, Node's recursive mkdir spins forever: the server once hung here at 100% CPU.
      { database: "/proc/taskstream-nope/x.db", says: "cannot open the database /proc/taskstream-nope/x.db: ENOENT" },
      { database: join(dir, "not-a.db"), says: `cannot open the database ${join(dir, "not-a.db")}: file is not a database` },
      { database: "postgres://someone:secret@127.0.0.1:1/x", says: "cannot open the database postgres://someone:***@127.0.0.1:1/x: connect ECONNREFUSED" },
    ];
    const runs = cases.map(({ database }) => taskstream(["serve", "--port", "0", "--database", database]));
    const exits = await Promise.all(runs.map((run) => Promise.race([run.exited, sleep(15_000).then(() => undefined)])));
    cases.forEach(({ says }, i) => {
      expect(exits[i]?.code, says).toBe(2);
      expect(runs[i].stderr()).toContain(says);
      expect(runs[i].stderr()).not.toContain("secret");
      expect(runs[i].logs.map((l) => l.msg)).not.toContain("taskstream listening");
    });
  });

  it("refuses a --max-streams / TASKSTREAM_MAX_STREAMS that is not a whole number, before opening storage", async () => {
    const bad = [
      taskstream(["serve", "--port", "0", "--database", join(dir, "never.db"), "--max-streams=-1"]),
      taskstream(["serve", "--port", "0", "--database", join(dir, "never.db"), "--max-streams", "2.5"]),
      taskstream(["serve", "--port", "0", "--database", join(dir, "never.db"), "--max-streams", "lots"]),
      taskstream(["serve"], cleanEnv({ TASKSTREAM_PORT: "0", TASKSTREAM_DATABASE: join(dir, "never.db"), TASKSTREAM_MAX_STREAMS: "" })),
    ];
    const exits = await Promise.all(bad.map((p) => p.exited));
    for (const [i, value] of ["-1", "2.5", "lots", ""].entries()) {
      expect(exits[i].code, value).toBe(2);
      expect(bad[i].stderr()).toContain(`--max-streams / TASKSTREAM_MAX_STREAMS: expected a whole number, got "${value}"`);
      expect(bad[i].logs.map((l) => l.msg)).not.toContain("taskstream listening");
    }
    expect(existsSync(join(dir, "never.db"))).toBe(false);
  });

  it("refuses an empty numeric environment setting rather than reading it as 0 (a random port, no drain)", async () => {
    const bad = [
      taskstream(["serve"], cleanEnv({ TASKSTREAM_PORT: "", TASKSTREAM_DATABASE: join(dir, "never.db") })),
      taskstream(["serve"], cleanEnv({ TASKSTREAM_PORT: "0", TASKSTREAM_DATABASE: join(dir, "never.db"), TASKSTREAM_SHUTDOWN_DRAIN_MS: " " })),
    ];
    const exits = await Promise.all(bad.map((p) => p.exited));
    expect(exits.map((e) => e.code)).toEqual([2, 2]);
    expect(bad[0].stderr()).toContain('--port / TASKSTREAM_PORT: expected a port, got ""');
    expect(bad[1].stderr()).toContain('--shutdown-drain-ms / TASKSTREAM_SHUTDOWN_DRAIN_MS: expected a whole number, got " "');
    expect(existsSync(join(dir, "never.db"))).toBe(false);
  });

  it("refuses bad settings with a clear message and a non-zero exit, and prints help", async () => {
    const badPort = taskstream(["serve", "--port", "nope", "--database", join(dir, "never.db")]);
    const badEnv = taskstream(["serve"], cleanEnv({ TASKSTREAM_PORT: "70000", TASKSTREAM_DATABASE: join(dir, "never.db") }));
    const unknownFlag = taskstream(["serve", "--bogus", "1"]);
    const unknownCommand = taskstream(["frobnicate"]);
    const help = taskstream(["--help"]);
    const otherUrl = taskstream(["serve", "--port", "0", "--database", "mysql://db/tasks"]);
    const [portExit, envExit, flagExit, commandExit, helpExit, urlExit] = await Promise.all(
      [badPort, badEnv, unknownFlag, unknownCommand, help, otherUrl].map((p) => p.exited),
    );

    expect(portExit.code).not.toBe(0);
    expect(portExit.code).not.toBeNull();
    expect(badPort.stderr()).toContain('--port / TASKSTREAM_PORT: expected a port, got "nope"');
    expect(badPort.logs.map((l) => l.msg)).not.toContain("taskstream listening");
    expect(existsSync(join(dir, "never.db"))).toBe(false);

    expect(envExit.code).not.toBe(0);
    expect(badEnv.stderr()).toContain('expected a port, got "70000"');

    expect(flagExit.code).not.toBe(0);
    expect(unknownFlag.stderr()).toContain("--bogus");

    expect(commandExit.code).not.toBe(0);
    expect(unknownCommand.stderr()).toContain('unknown command "frobnicate"');

    expect(urlExit.code).not.toBe(0);
    expect(otherUrl.stderr()).toContain('--database / TASKSTREAM_DATABASE: expected a SQLite file path or a postgres:// URL, got "mysql://db/tasks"');
    expect(existsSync(join(dir, "mysql:"))).toBe(false);

    expect(helpExit.code).toBe(0);
    expect(help.stdout()).toContain("Usage: taskstream serve [flags]");
    expect(help.stdout()).toMatch(/--max-streams\s+TASKSTREAM_MAX_STREAMS\s+.*RESOURCE_EXHAUSTED.*\(default 0\)/);
    for (const spec of Object.values(SETTINGS)) {
      expect(help.stdout()).toContain(`--${spec.flag}`);
      expect(help.stdout()).toContain(spec.env);
    }
  });
});

describe("graceful shutdown", () => {
  const NOT_SERVING = ServingStatus.NOT_SERVING;
  const drops: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const drop of drops) await drop();
  });

  async function start(shutdownGraceMs = 2000) {
    const db = await freshDatabase("sqlite");
    drops.push(db.drop);
    return startWith(db.location, { shutdownGraceMs });
  }

  /** Begins a 30 s ClaimTasks long-poll and resolves with how it ended and when. */
  function longPoll(transport: Transport) {
    return createClient(WorkerService, transport)
      .claimTasks({ workerId: "w-shutdown", toolNames: [uniq("nothing")], wait: s(30) })
      .then(
        (res) => ({ tasks: res.tasks, error: undefined, at: Date.now() }),
        (e: unknown) => ({ tasks: undefined, error: ConnectError.from(e), at: Date.now() }),
      );
  }

  it("ends a gRPC long-poll at once with no tasks, and closes within the grace period", async () => {
    const server = await start();
    const transport = createGrpcTransport({ baseUrl: server.url });
    const health = createClient(Health, transport);
    expect((await health.check({ service: "taskstream.v1.TaskService" })).status).toBe(ServingStatus.SERVING);

    const poll = longPoll(transport);
    await sleep(300);
    const closeStarted = Date.now();
    const closed = server.close().then(() => Date.now());
    // In process, the status flips before the port closes.
    expect(server.health.get("taskstream.v1.TaskService")).toBe(NOT_SERVING);
    expect(server.health.get("")).toBe(NOT_SERVING);
    // Over the network, a Check after shutdown began is refused (GOAWAY on the open
    // connection, nothing listening for a new one); if it is answered, never SERVING.
    const during = await health.check({ service: "taskstream.v1.TaskService" }).then(
      (r) => r.status,
      (e: unknown) => ConnectError.from(e).code,
    );
    expect(during).not.toBe(ServingStatus.SERVING);

    const ended = await poll;
    expect(ended.error, String(ended.error)).toBeUndefined();
    expect(ended.tasks).toEqual([]);
    expect(ended.at - closeStarted).toBeLessThan(1000);
    expect((await closed) - closeStarted).toBeLessThan(2000);

    const after = await createClient(Health, createGrpcTransport({ baseUrl: server.url }))
      .check({})
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(after?.code).toBe(Code.Unavailable);
  });

  it("ends a Connect HTTP/1.1 long-poll at once with no tasks", async () => {
    const server = await start();
    const poll = longPoll(createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", nodeOptions: { agent: new http.Agent({ keepAlive: false }) } }));
    await sleep(300);
    const closeStarted = Date.now();
    const closed = server.close().then(() => Date.now());
    const ended = await poll;
    expect(ended.error, String(ended.error)).toBeUndefined();
    expect(ended.tasks).toEqual([]);
    expect(ended.at - closeStarted).toBeLessThan(1000);
    expect((await closed) - closeStarted).toBeLessThan(2000);
  });

  it("refuses calls that arrive after shutdown began", async () => {
    const server = await start(500);
    const tasks = createClient(TaskService, createGrpcTransport({ baseUrl: server.url }));
    await tasks.dispatchTask({ toolName: "before-close" });
    await server.close();
    await expectError(tasks.dispatchTask({ toolName: "after-close" }), Code.Unavailable);
  });

  // An idle keep-alive connection (a browser, curl, fetch) must not hold close() for the grace period.
  it("does not wait out the grace period for an idle HTTP/1.1 keep-alive connection", async () => {
    const server = await start(2000);
    const res = await fetch(`${server.url}/taskstream.v1.TaskService/ListTasks`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(200);
    await res.text();
    const closeStarted = Date.now();
    await server.close();
    expect(Date.now() - closeStarted).toBeLessThan(1000);
  });
});
