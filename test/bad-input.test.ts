import { randomBytes } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { fromBinary, fromJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import { Backpressure, TaskService, TaskTimeField } from "../gen/taskstream/v1/task_service_pb.js";
import { MAX_JSON_DEPTH } from "../src/service/validate.js";
import { statusDetailsReason } from "./support/grpc-js-client.js";
import { expectError, expectGrpcJsError } from "./support/expect-error.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

// Bad input of every request gets the right status code and ErrorInfo reason,
// never a crash, a hang, an UNKNOWN, or a change to stored tasks.

type Tasks = ReturnType<TestServer["tasks"]>;

const s = (seconds: number | bigint, nanos = 0) => ({ seconds: BigInt(seconds), nanos });
const long = (n: number) => "x".repeat(n);
const MiB = 1024 * 1024;

/** A call that must fail INVALID_ARGUMENT with ErrorInfo {reason INVALID_ARGUMENT, domain taskstream, metadata.field}. */
async function expectInvalid(call: Promise<unknown>, field: string): Promise<ConnectError> {
  const err = await expectError(call, Code.InvalidArgument, "INVALID_ARGUMENT");
  const info = err.findDetails(ErrorInfoSchema)[0];
  expect(info.domain).toBe("taskstream");
  expect(info.metadata.field, err.message).toBe(field);
  return err;
}

/** Reads a server stream to its end; StreamTasks with bad input must end with an error before any message. */
async function drain(stream: AsyncIterable<unknown>): Promise<unknown[]> {
  const got: unknown[] = [];
  for await (const message of stream) got.push(message);
  return got;
}

/** POSTs a Connect unary request body as-is, the way curl would. */
async function post(url: string, path: string, body: BodyInit, contentType = "application/json") {
  const res = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": contentType }, body });
  const text = await res.text();
  let json: { code?: string; message?: string; details?: unknown[] } | undefined;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

/** A gRPC length-prefixed message frame. */
function grpcFrame(payload: Buffer, compressed = false): Buffer {
  const frame = Buffer.alloc(5 + payload.length);
  frame.writeUInt8(compressed ? 1 : 0, 0);
  frame.writeUInt32BE(payload.length, 1);
  payload.copy(frame, 5);
  return frame;
}

/** An enveloped message (Connect streaming, gRPC-Web): flags, length, data. */
function envelope(flags: number, data: Buffer): Buffer {
  const frame = grpcFrame(data);
  frame[0] = flags;
  return frame;
}

/** The envelopes of a Connect streaming or gRPC-Web response body. */
function frames(body: Buffer): { flags: number; data: Buffer }[] {
  const found: { flags: number; data: Buffer }[] = [];
  for (let at = 0; at + 5 <= body.length; ) {
    const length = body.readUInt32BE(at + 1);
    found.push({ flags: body[at], data: body.subarray(at + 5, at + 5 + length) });
    at += 5 + length;
  }
  return found;
}

/** The ErrorInfo reason of a Connect JSON error, decoded from its detail's bytes. */
function connectReason(error: { details?: unknown[] } | undefined): string | undefined {
  const info = error?.details?.find((d) => (d as { type?: string }).type === "google.rpc.ErrorInfo") as { value: string } | undefined;
  return info && fromBinary(ErrorInfoSchema, Buffer.from(info.value, "base64")).reason;
}

/** One raw gRPC call over HTTP/2 with whatever body, returning the grpc-status wherever the server put it. */
function rawGrpc(url: string, path: string, body: Buffer, headers: Record<string, string> = {}) {
  return new Promise<{ httpStatus: number; grpcStatus: number; grpcMessage: string; reason?: string }>((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    req.on("response", (h) => (head = h));
    req.on("trailers", (t) => (trailers = t));
    req.on("data", () => {});
    req.on("end", () => {
      session.close();
      const status = trailers["grpc-status"] ?? head["grpc-status"];
      const message = trailers["grpc-message"] ?? head["grpc-message"] ?? "";
      const details = trailers["grpc-status-details-bin"] ?? head["grpc-status-details-bin"];
      const reason = details ? statusDetailsReason(Buffer.from(String(details), "base64")) : undefined;
      resolve({ httpStatus: Number(head[":status"]), grpcStatus: Number(status), grpcMessage: decodeURIComponent(String(message)), reason });
    });
    req.on("error", reject);
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.end(body);
  });
}

for (const dialect of DIALECTS) {
  describe(`bad input on ${dialect}`, () => {
    let t: TestServer;
    /** Tasks the good calls of this file created; bad calls must add none. */
    let created = 0;
    const tool = `bad-input-${dialect}-${Math.random().toString(36).slice(2)}`;
    let pending: Task;
    let running: { taskId: string; leaseId: string };
    let suspended: { taskId: string; leaseId: string };
    const snapshots = new Map<string, { task: Task; events: bigint }>();

    async function snapshot(taskId: string) {
      const { task } = await t.tasks().getTask({ taskId });
      const { totalSize } = await t.tasks().listTaskEvents({ taskId, pageSize: 1 });
      return { task: task!, events: totalSize };
    }

    beforeAll(async () => {
      // Leases outlast the file, so the sweeper changes none of the snapshotted tasks.
      t = await startTestServer(dialect, { leaseMs: 600_000 });
      pending = (await t.tasks().dispatchTask({ toolName: tool, args: { kind: "pending" } })).task!;
      const r = await t.tasks().dispatchTask({ toolName: `${tool}-run`, claim: { workerId: "w1" } });
      running = { taskId: r.task!.taskId, leaseId: r.lease!.leaseId };
      const u = await t.tasks().dispatchTask({ toolName: `${tool}-susp`, claim: { workerId: "w1" } });
      suspended = { taskId: u.task!.taskId, leaseId: u.lease!.leaseId };
      await t.workers().suspendTask({ ...suspended, payload: { kind: { case: "stringValue", value: "approve?" } } });
      created = 3;
      for (const id of [pending.taskId, running.taskId, suspended.taskId]) snapshots.set(id, await snapshot(id));
    });
    afterAll(() => t?.close());

    describe("TaskService", () => {
      it("DispatchTask refuses missing, long and out-of-range fields", async () => {
        const d = (req: Parameters<Tasks["dispatchTask"]>[0]) => t.tasks().dispatchTask(req);
        await expectInvalid(d({}), "tool_name");
        await expectInvalid(d({ toolName: "", args: { a: 1 } }), "tool_name");
        await expectInvalid(d({ toolName: long(257) }), "tool_name");
        await expectInvalid(d({ toolName: "a\0b" }), "tool_name");
        await expectInvalid(d({ toolName: tool, requestId: long(129) }), "request_id");
        for (const field of ["toolCallId", "agentId", "runId", "threadId", "resourceId"] as const) {
          const snake = field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
          await expectInvalid(d({ toolName: tool, [field]: long(257) }), snake);
        }
        await expectInvalid(d({ toolName: tool, maxRetries: -1 }), "max_retries");
        await expectInvalid(d({ toolName: tool, maxRetries: 101 }), "max_retries");
        await expectInvalid(d({ toolName: tool, maxRetries: -2147483648 }), "max_retries");
        await expectInvalid(d({ toolName: tool, timeout: s(0) }), "timeout");
        await expectInvalid(d({ toolName: tool, timeout: s(-5) }), "timeout");
        await expectInvalid(d({ toolName: tool, timeout: s(-(2n ** 62n)) }), "timeout");
        await expectInvalid(d({ toolName: tool, timeout: s(0, -1) }), "timeout");
        await expectInvalid(d({ toolName: tool, timeout: s(1, 1_000_000_000) }), "timeout");
        // The default max task timeout is 24 h.
        await expectInvalid(d({ toolName: tool, timeout: s(86_400, 1_000_000) }), "timeout");
        await expectInvalid(d({ toolName: tool, timeout: s(2n ** 62n) }), "timeout");
        await expectInvalid(d({ toolName: tool, backpressure: 99 as Backpressure }), "backpressure");
        await expectInvalid(d({ toolName: tool, retryPolicy: { backoffMultiplier: 0.5 } }), "retry_policy.backoff_multiplier");
        await expectInvalid(d({ toolName: tool, retryPolicy: { backoffMultiplier: -2 } }), "retry_policy.backoff_multiplier");
        await expectInvalid(d({ toolName: tool, retryPolicy: { backoffMultiplier: Number.POSITIVE_INFINITY } }), "retry_policy.backoff_multiplier");
        await expectInvalid(d({ toolName: tool, retryPolicy: { backoffMultiplier: Number.NaN } }), "retry_policy.backoff_multiplier");
        await expectInvalid(d({ toolName: tool, retryPolicy: { initialDelay: s(0) } }), "retry_policy.initial_delay");
        await expectInvalid(d({ toolName: tool, retryPolicy: { initialDelay: s(-1) } }), "retry_policy.initial_delay");
        await expectInvalid(d({ toolName: tool, retryPolicy: { maxDelay: s(0, -1) } }), "retry_policy.max_delay");
        await expectInvalid(d({ toolName: tool, retryPolicy: { maxDelay: s(2n ** 40n) } }), "retry_policy.max_delay");
        await expectInvalid(d({ toolName: tool, claim: {} }), "claim.worker_id");
        await expectInvalid(d({ toolName: tool, claim: { workerId: long(257) } }), "claim.worker_id");
        // The default max lease is 10 min.
        await expectInvalid(d({ toolName: tool, claim: { workerId: "w", leaseDuration: s(601) } }), "claim.lease_duration");
        await expectInvalid(d({ toolName: tool, claim: { workerId: "w", leaseDuration: s(0) } }), "claim.lease_duration");
        await expectInvalid(d({ toolName: tool, claim: { workerId: "w", leaseDuration: s(-1) } }), "claim.lease_duration");
      });

      it("DispatchTask accepts every limit exactly", async () => {
        const { task, lease, created: isNew } = await t.tasks().dispatchTask({
          toolName: long(256),
          requestId: `${tool}-${long(128)}`.slice(0, 128),
          toolCallId: long(256),
          agentId: long(256),
          runId: long(256),
          threadId: long(256),
          resourceId: long(256),
          maxRetries: 100,
          timeout: s(86_400),
          claim: { workerId: long(256), leaseDuration: s(600) },
        });
        created++;
        expect(isNew).toBe(true);
        expect(task!.maxRetries).toBe(100);
        expect(task!.timeout!.seconds).toBe(86_400n);
        expect(lease!.leaseId).not.toBe("");
        await t.workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
      });

      it("CancelTask refuses missing, long and unknown ids", async () => {
        await expectInvalid(t.tasks().cancelTask({}), "task_id");
        await expectInvalid(t.tasks().cancelTask({ taskId: long(257) }), "task_id");
        await expectInvalid(t.tasks().cancelTask({ taskId: pending.taskId, reason: long(1025) }), "reason");
        await expectError(t.tasks().cancelTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
        await expectError(t.tasks().cancelTask({ taskId: long(256) }), Code.NotFound, "TASK_NOT_FOUND");
      });

      it("ResumeTask refuses missing ids, bad claims and unknown tasks", async () => {
        await expectInvalid(t.tasks().resumeTask({}), "task_id");
        await expectInvalid(t.tasks().resumeTask({ taskId: long(257) }), "task_id");
        await expectInvalid(t.tasks().resumeTask({ taskId: suspended.taskId, claim: {} }), "claim.worker_id");
        await expectInvalid(t.tasks().resumeTask({ taskId: suspended.taskId, claim: { workerId: long(257) } }), "claim.worker_id");
        await expectInvalid(
          t.tasks().resumeTask({ taskId: suspended.taskId, claim: { workerId: "w", leaseDuration: s(601) } }),
          "claim.lease_duration",
        );
        await expectInvalid(
          t.tasks().resumeTask({ taskId: suspended.taskId, claim: { workerId: "w", leaseDuration: s(0, -5) } }),
          "claim.lease_duration",
        );
        await expectError(t.tasks().resumeTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
        await expectError(t.tasks().resumeTask({ taskId: "no-such-task", claim: { workerId: "w" } }), Code.NotFound, "TASK_NOT_FOUND");
      });

      it("GetTask refuses missing, long and unknown ids", async () => {
        await expectInvalid(t.tasks().getTask({}), "task_id");
        await expectInvalid(t.tasks().getTask({ taskId: long(257) }), "task_id");
        await expectInvalid(t.tasks().getTask({ taskId: "a\0b" }), "task_id");
        const err = await expectError(t.tasks().getTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
        expect(err.findDetails(ErrorInfoSchema)[0].metadata.task_id).toBe("no-such-task");
      });

      it("ListTasks refuses unknown enums, bad timestamps, long filters and foreign page tokens", async () => {
        const l = t.tasks().listTasks;
        await expectInvalid(l({ statuses: [99 as TaskStatus] }), "statuses[0]");
        await expectInvalid(l({ statuses: [TaskStatus.PENDING, TaskStatus.UNSPECIFIED] }), "statuses[1]");
        await expectInvalid(l({ statuses: [-1 as TaskStatus] }), "statuses[0]");
        await expectInvalid(l({ orderBy: 99 as TaskTimeField }), "order_by");
        await expectInvalid(l({ timeRange: { field: 99 as TaskTimeField } }), "time_range.field");
        await expectInvalid(l({ timeRange: { startTime: s(1, -1) } }), "time_range.start_time");
        await expectInvalid(l({ timeRange: { endTime: s(1, 1_000_000_000) } }), "time_range.end_time");
        await expectInvalid(l({ timeRange: { startTime: s(-1) } }), "time_range.start_time");
        await expectInvalid(l({ timeRange: { startTime: s(2n ** 62n) } }), "time_range.start_time");
        await expectInvalid(l({ pageSize: -1 }), "page_size");
        await expectInvalid(l({ toolCallId: long(257) }), "tool_call_id");
        for (const field of ["agentId", "runId", "threadId", "resourceId", "taskId", "toolName"] as const) {
          const snake = field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
          await expectInvalid(l({ filter: { [field]: long(257) } }), `filter.${snake}`);
        }
        await expectInvalid(l({ filter: { agentId: "\0" } }), "filter.agent_id");
        await expectError(l({ pageToken: "garbage!" }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        await expectError(l({ pageToken: Buffer.from("[1,2]").toString("base64url") }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        await expectError(l({ pageToken: Buffer.from('{"f":"x","p":{"v":"a","id":1},"t":1}').toString("base64url") }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        const first = await l({ pageSize: 1 });
        expect(first.nextPageToken).not.toBe("");
        await expectError(l({ pageSize: 1, pageToken: first.nextPageToken, descending: true }), Code.InvalidArgument, "PAGE_TOKEN_MISMATCH");
        // Page size over the maximum is capped, not refused (AIP-158).
        expect((await l({ pageSize: 2 ** 31 - 1 })).tasks.length).toBeGreaterThan(0);
      });

      it("ListTaskEvents refuses missing and unknown tasks and garbage page tokens", async () => {
        const l = t.tasks().listTaskEvents;
        await expectInvalid(l({}), "task_id");
        await expectInvalid(l({ taskId: long(257) }), "task_id");
        await expectError(l({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
        await expectInvalid(l({ taskId: running.taskId, pageSize: -1 }), "page_size");
        await expectError(l({ taskId: running.taskId, pageToken: "%%%" }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        await expectError(l({ taskId: running.taskId, pageToken: Buffer.from('{"f":"x","p":-1,"t":1}').toString("base64url") }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        const first = await l({ taskId: suspended.taskId, pageSize: 1 });
        expect(first.nextPageToken).not.toBe("");
        await expectError(l({ taskId: running.taskId, pageToken: first.nextPageToken }), Code.InvalidArgument, "PAGE_TOKEN_MISMATCH");
      });

      it("StreamTasks refuses a bad filter, cursor or heartbeat before sending anything", async () => {
        const stream = (req: Parameters<Tasks["streamTasks"]>[0]) =>
          drain(t.tasks().streamTasks(req, { timeoutMs: 5000 }));
        await expectInvalid(stream({ filter: { agentId: long(257) } }), "filter.agent_id");
        await expectInvalid(stream({ filter: { taskId: "\0" } }), "filter.task_id");
        await expectInvalid(stream({ afterSequence: -1n }), "after_sequence");
        await expectInvalid(stream({ heartbeatInterval: s(-1) }), "heartbeat_interval");
        await expectError(stream({ afterSequence: 2n ** 53n }), Code.OutOfRange, "CURSOR_AHEAD");
      });
    });

    describe("WorkerService", () => {
      it("ClaimTasks refuses bad ids, batch sizes, waits and leases without claiming anything", async () => {
        // Every call names the pending task's tool, so a claim that slipped through would lease it.
        const c = (req: object) => t.workers().claimTasks({ workerId: "w-bad", toolNames: [tool], ...req });
        await expectInvalid(c({ workerId: "" }), "worker_id");
        await expectInvalid(c({ workerId: long(257) }), "worker_id");
        await expectInvalid(c({ workerId: "w\0" }), "worker_id");
        await expectInvalid(c({ toolNames: [tool, ""] }), "tool_names[1]");
        await expectInvalid(c({ toolNames: [long(257), tool] }), "tool_names[0]");
        await expectInvalid(c({ maxTasks: 101 }), "max_tasks");
        await expectInvalid(c({ maxTasks: -1 }), "max_tasks");
        await expectInvalid(c({ wait: s(-1) }), "wait");
        await expectInvalid(c({ wait: s(0, -1) }), "wait");
        await expectInvalid(c({ wait: s(0, 2_000_000_000) }), "wait");
        await expectInvalid(c({ leaseDuration: s(601) }), "lease_duration");
        await expectInvalid(c({ leaseDuration: s(0) }), "lease_duration");
        await expectInvalid(c({ leaseDuration: s(-30) }), "lease_duration");
      });

      it("Heartbeat, ReportOutput, CompleteTask, FailTask and SuspendTask refuse missing, long and unknown ids", async () => {
        const w = t.workers();
        const output = { kind: { case: "stringValue" as const, value: "x" } };
        const calls: [string, (req: { taskId?: string; leaseId?: string }) => Promise<unknown>][] = [
          ["Heartbeat", (r) => w.heartbeat(r)],
          ["ReportOutput", (r) => w.reportOutput({ ...r, output })],
          ["CompleteTask", (r) => w.completeTask(r)],
          ["FailTask", (r) => w.failTask({ ...r, error: { message: "m" } })],
          ["SuspendTask", (r) => w.suspendTask(r)],
        ];
        for (const [name, call] of calls) {
          try {
            await expectInvalid(call({}), "task_id");
            await expectInvalid(call({ leaseId: running.leaseId }), "task_id");
            await expectInvalid(call({ taskId: running.taskId }), "lease_id");
            await expectInvalid(call({ taskId: long(257), leaseId: running.leaseId }), "task_id");
            await expectInvalid(call({ taskId: running.taskId, leaseId: long(257) }), "lease_id");
            await expectInvalid(call({ taskId: running.taskId, leaseId: "l\0" }), "lease_id");
            await expectError(call({ taskId: "no-such-task", leaseId: running.leaseId }), Code.NotFound, "TASK_NOT_FOUND");
          } catch (err) {
            throw new Error(`${name}: ${(err as Error).message}`, { cause: err });
          }
        }
      });

      it("Heartbeat refuses a lease over the maximum, zero or negative", async () => {
        const hb = (leaseDuration: ReturnType<typeof s>) => t.workers().heartbeat({ ...running, leaseDuration });
        await expectInvalid(hb(s(601)), "lease_duration");
        await expectInvalid(hb(s(0)), "lease_duration");
        await expectInvalid(hb(s(-1)), "lease_duration");
        await expectInvalid(hb(s(1, -1)), "lease_duration");
      });

      it("ReportOutput without output is refused", async () => {
        await expectInvalid(t.workers().reportOutput({ ...running }), "output");
        await expectInvalid(t.workers().reportOutput({}), "output");
      });

      // A google.protobuf.Value with no kind, or a NaN number, is legal on the binary wire
      // but has no JSON form, and tasks are stored and served as JSON: refused up front.
      it("CompleteTask, SuspendTask, FailTask and ResumeTask with a Value that has no JSON form change nothing", async () => {
        const w = t.workers();
        const emptyValue = {};
        const nan = { kind: { case: "numberValue" as const, value: Number.NaN } };
        const calls = [
          () => w.completeTask({ ...running, result: emptyValue }),
          () => w.completeTask({ ...running, result: nan }),
          () => w.suspendTask({ ...running, payload: emptyValue }),
          () => w.failTask({ ...running, error: { message: "m", details: { x: Number.POSITIVE_INFINITY } } }),
          () => t.tasks().resumeTask({ taskId: suspended.taskId, resumeData: emptyValue }),
          () => t.tasks().resumeTask({ taskId: suspended.taskId, resumeData: nan }),
        ];
        for (const call of calls) {
          const err = await call().then(
            () => undefined,
            (e: unknown) => ConnectError.from(e),
          );
          expect(err, "the call should have failed").toBeDefined();
          expect(Code[err!.code], err!.message).toBe(Code[Code.InvalidArgument]);
        }
      });
    });

    describe("nested values", () => {
      /** A JSON object nesting `depth` lists and objects, alternately, around a number. */
      const nested = (depth: number): JsonObject => {
        let v: JsonValue = 1;
        for (let i = 1; i < depth; i++) v = i % 2 ? [v] : { a: v };
        return { a: v };
      };
      const value = (depth: number) => fromJson(ValueSchema, nested(depth));

      it(`refuses values nested more than ${MAX_JSON_DEPTH} levels, and clients decode every message of a task at the limit`, async () => {
        const toolName = `${tool}-deep`;
        const w = t.workers();
        const { task, lease } = await t.tasks().dispatchTask({ toolName, args: nested(MAX_JSON_DEPTH), claim: { workerId: "w-deep" } });
        created++;
        const held = { taskId: task!.taskId, leaseId: lease!.leaseId };
        await w.reportOutput({ ...held, output: value(MAX_JSON_DEPTH) });

        const over = MAX_JSON_DEPTH + 1;
        await expectInvalid(t.tasks().dispatchTask({ toolName, args: nested(over) }), "args");
        await expectInvalid(t.tasks().dispatchTasks({ requests: [{ toolName, args: nested(over) }] }), "requests[0].args");
        await expectInvalid(w.reportOutput({ ...held, output: value(over) }), "output");
        await expectInvalid(w.completeTask({ ...held, result: value(over) }), "result");
        await expectInvalid(w.suspendTask({ ...held, payload: value(over) }), "payload");
        await expectInvalid(w.failTask({ ...held, error: { message: "m", details: nested(over) } }), "error.details");
        await expectInvalid(t.tasks().resumeTask({ taskId: suspended.taskId, resumeData: value(over) }), "resume_data");

        // The deepest wrapping: StreamTasksResponse > TaskEvent > failed > TaskError > details.
        await w.failTask({ ...held, error: { message: "m", details: nested(MAX_JSON_DEPTH) } });
        const kinds: string[] = [];
        for await (const m of t.tasks().streamTasks({ filter: { taskId: held.taskId }, afterSequence: 0n }, { timeoutMs: 10_000 })) {
          if (m.message.case !== "event") continue;
          kinds.push(m.message.value.kind.case!);
          if (m.message.value.kind.case === "failed") break;
        }
        expect(kinds).toEqual(["queued", "running", "output", "failed"]);
        const { task: read } = await t.grpcJs.tasks.getTask({ taskId: held.taskId });
        expect(read!.args).toEqual(nested(MAX_JSON_DEPTH));
        expect(read!.error!.details).toEqual(nested(MAX_JSON_DEPTH));
        expect((await t.tasks().listTaskEvents({ taskId: held.taskId })).events).toHaveLength(4);
        expect((await t.tasks("connect-json").listTasks({ filter: { toolName } })).tasks[0].args).toEqual(nested(MAX_JSON_DEPTH));
      });
    });

    describe("other clients", () => {
      it("grpc-js gets the same codes and reasons", async () => {
        await expectGrpcJsError(t.grpcJs.tasks.getTask({}), Code.InvalidArgument, "INVALID_ARGUMENT");
        await expectGrpcJsError(t.grpcJs.tasks.getTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
        await expectGrpcJsError(t.grpcJs.tasks.dispatchTask({ toolName: tool, maxRetries: 101 }), Code.InvalidArgument, "INVALID_ARGUMENT");
        await expectGrpcJsError(t.grpcJs.tasks.listTasks({ statuses: [99 as TaskStatus] }), Code.InvalidArgument, "INVALID_ARGUMENT");
        await expectGrpcJsError(t.grpcJs.tasks.listTaskEvents({ taskId: running.taskId, pageToken: "zz" }), Code.InvalidArgument, "INVALID_PAGE_TOKEN");
        await expectGrpcJsError(t.grpcJs.workers.claimTasks({ workerId: "w", toolNames: [tool], maxTasks: 101 }), Code.InvalidArgument, "INVALID_ARGUMENT");
        await expectGrpcJsError(t.grpcJs.workers.reportOutput({ ...running }), Code.InvalidArgument, "INVALID_ARGUMENT");
        await expectGrpcJsError(t.grpcJs.workers.heartbeat({ taskId: "no-such-task", leaseId: "l" }), Code.NotFound, "TASK_NOT_FOUND");
      });

      it("Connect JSON and gRPC-Web clients get the same codes and reasons", async () => {
        for (const protocol of ["connect-json", "connect", "grpc-web"] as const) {
          await expectInvalid(t.tasks(protocol).getTask({}), "task_id");
          await expectError(t.tasks(protocol).getTask({ taskId: "no-such-task" }), Code.NotFound, "TASK_NOT_FOUND");
          await expectInvalid(t.tasks(protocol).dispatchTask({ toolName: tool, timeout: s(-1) }), "timeout");
          await expectInvalid(t.tasks(protocol).listTasks({ statuses: [TaskStatus.UNSPECIFIED] }), "statuses[0]");
          await expectInvalid(t.workers(protocol).claimTasks({ workerId: "w", toolNames: [""] }), "tool_names[0]");
          await expectInvalid(t.workers(protocol).claimTasks({ workerId: "w", toolNames: [tool], wait: s(-3) }), "wait");
        }
      });

      it("raw Connect JSON with the wrong JSON type, or not JSON, is 400 invalid_argument", async () => {
        const path = "/taskstream.v1.TaskService/ListTasks";
        for (const body of ['{"pageSize":"abc"}', '{"pageSize":1.5}', '{"statuses":"TASK_STATUS_PENDING"}', '{"filter":[]}', "not json", "[]", '{"statuses":[99]}']) {
          const res = await post(t.server.url, path, body);
          expect(res.status, `${body} -> ${res.text}`).toBe(400);
          expect(res.json?.code, body).toBe("invalid_argument");
        }
        const dispatch = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", '{"toolName":5}');
        expect([dispatch.status, dispatch.json?.code]).toEqual([400, "invalid_argument"]);
        const lone = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", '{"toolName":"bad\\ud800"}');
        expect([lone.status, lone.json?.code]).toEqual([400, "invalid_argument"]);
        const nul = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", '{"toolName":"bad\\u0000"}');
        expect([nul.status, nul.json?.code]).toEqual([400, "invalid_argument"]);
        // The validation error carries its ErrorInfo in the Connect JSON error, too.
        const enumValue = await post(t.server.url, path, '{"statuses":[99]}');
        expect(JSON.stringify(enumValue.json?.details)).toContain("INVALID_ARGUMENT");
      });

      // Connect JSON is read strictly (connect-es would ignore unknown fields and enum names):
      // a misspelt filter or enum must not widen a query to every task.
      it("raw Connect JSON with a bogus enum string or an unknown field is 400 invalid_argument, MALFORMED_MESSAGE", async () => {
        const path = "/taskstream.v1.TaskService/ListTasks";
        for (const body of ['{"statuses":["NOPE"]}', '{"agentID":"a"}', '{"filter":{"nope":1}}']) {
          const res = await post(t.server.url, path, body);
          expect([res.status, res.json?.code, connectReason(res.json)], `${body} -> ${res.text.slice(0, 200)}`).toEqual([400, "invalid_argument", "MALFORMED_MESSAGE"]);
        }
        const dispatch = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", JSON.stringify({ toolName: tool, maxRetrys: 3 }));
        expect([dispatch.status, connectReason(dispatch.json)]).toEqual([400, "MALFORMED_MESSAGE"]);
        // Both spellings the JSON mapping defines still parse: the JSON name and the proto field name.
        const names = await post(t.server.url, path, '{"statuses":["TASK_STATUS_PENDING"],"page_size":1}');
        expect(names.status, names.text.slice(0, 200)).toBe(200);
      });

      it("raw requests to unknown methods or with unsupported content types are refused cleanly", async () => {
        const unknown = await post(t.server.url, "/taskstream.v1.TaskService/Nope", "{}");
        expect(unknown.status).toBe(404);
        const wrongType = await post(t.server.url, "/taskstream.v1.TaskService/ListTasks", "{}", "text/plain");
        expect(wrongType.status).toBe(415);
        // gRPC clients read the HTTP 404 of an unknown method as UNIMPLEMENTED.
        const grpcUnknown = await rawGrpc(t.server.url, "/taskstream.v1.TaskService/Nope", grpcFrame(Buffer.alloc(0)));
        expect(grpcUnknown.httpStatus).toBe(404);
        const raw = new grpc.Client(`127.0.0.1:${t.server.port}`, grpc.credentials.createInsecure());
        try {
          const err = await new Promise<grpc.ServiceError | null>((resolve) =>
            raw.makeUnaryRequest("/taskstream.v1.TaskService/Nope", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (e) => resolve(e)),
          );
          expect(Code[err!.code]).toBe(Code[Code.Unimplemented]);
        } finally {
          raw.close();
        }
      });
    });

    describe("undecodable messages", () => {
      // Binary that does not decode is INVALID_ARGUMENT on every protocol; only a
      // compressed gRPC frame without an encoding is INTERNAL, as the gRPC spec says.
      const decodeCodes = [Code.InvalidArgument, Code.Internal].map((c) => Code[c]);

      it("garbage gRPC frames get INVALID_ARGUMENT or INTERNAL, and the server stays up", async () => {
        const url = t.server.url;
        const dispatch = "/taskstream.v1.TaskService/DispatchTask";
        // A tag whose varint overflows, and an end-group tag with no group.
        for (const garbage of [Buffer.from("ffffffffff0f0799", "hex"), Buffer.from("0c0a01", "hex")]) {
          const res = await rawGrpc(url, dispatch, grpcFrame(garbage));
          expect(res.httpStatus).toBe(200);
          expect(decodeCodes, res.grpcMessage).toContain(Code[res.grpcStatus]);
          expect(res.reason, res.grpcMessage).toBe("MALFORMED_MESSAGE");
        }
        // A frame that announces more bytes than it has.
        const truncated = Buffer.alloc(8);
        truncated.writeUInt32BE(100, 1);
        const short = await rawGrpc(url, dispatch, truncated);
        expect([Code[short.grpcStatus], short.reason]).toEqual([Code[Code.InvalidArgument], "MALFORMED_MESSAGE"]);
        // The compressed flag without a grpc-encoding: INTERNAL, as the gRPC spec says.
        const unflagged = await rawGrpc(url, dispatch, grpcFrame(Buffer.from("0a0178", "hex"), true));
        expect([Code[unflagged.grpcStatus], unflagged.reason]).toEqual([Code[Code.Internal], "MALFORMED_MESSAGE"]);
        // An encoding the server does not speak: UNIMPLEMENTED, as the gRPC spec says.
        const zstd = await rawGrpc(url, dispatch, grpcFrame(Buffer.from("0a0178", "hex"), true), { "grpc-encoding": "zstd" });
        expect([Code[zstd.grpcStatus], zstd.reason]).toEqual([Code[Code.Unimplemented], "UNSUPPORTED_ENCODING"]);
        // A message over 4 MiB: RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE, once the body is read.
        const tooBig = await rawGrpc(url, dispatch, grpcFrame(Buffer.alloc(5 * MiB)));
        expect([Code[tooBig.grpcStatus], tooBig.reason]).toEqual([Code[Code.ResourceExhausted], "MESSAGE_TOO_LARGE"]);
        // Past 16 MiB the server stops reading the body, refuses it the same way, and goes on serving.
        const huge = await rawGrpc(url, dispatch, grpcFrame(Buffer.alloc(20 * MiB)));
        expect([Code[huge.grpcStatus], huge.reason]).toEqual([Code[Code.ResourceExhausted], "MESSAGE_TOO_LARGE"]);
        // Random bytes to a read-only method: whatever they decode to, an answer with a reason, never UNKNOWN.
        for (let i = 0; i < 20; i++) {
          const res = await rawGrpc(url, "/taskstream.v1.TaskService/GetTask", grpcFrame(randomBytes(16 + i * 8)));
          expect([Code.InvalidArgument, Code.NotFound, Code.Internal].map((c) => Code[c]), res.grpcMessage).toContain(Code[res.grpcStatus]);
          expect(["MALFORMED_MESSAGE", "INVALID_ARGUMENT", "TASK_NOT_FOUND"], res.grpcMessage).toContain(res.reason);
        }
        const { task } = await t.tasks().getTask({ taskId: pending.taskId });
        expect(task!.status).toBe(TaskStatus.PENDING);
      });

      it("garbage Connect binary gets invalid_argument with a reason, not a crash", async () => {
        const res = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", Buffer.from("ffffffffff0f0799", "hex"), "application/proto");
        expect([res.status, res.json?.code, connectReason(res.json)]).toEqual([400, "invalid_argument", "MALFORMED_MESSAGE"]);
        expect((await t.tasks("connect").getTask({ taskId: pending.taskId })).task!.taskId).toBe(pending.taskId);
      });

      // These faults are found by connect-node before any handler runs; the server gives them
      // the reason the gRPC fast path gives the same fault.
      it("Connect faults found before the handler carry a reason: bad JSON, bad encoding, bad timeout, in unary and streaming calls", async () => {
        const url = t.server.url;
        const get = "/taskstream.v1.TaskService/GetTask";
        const notJson = await post(url, get, "{bad");
        expect([notJson.status, notJson.json?.code, connectReason(notJson.json)]).toEqual([400, "invalid_argument", "MALFORMED_MESSAGE"]);
        const headers = (extra: Record<string, string>) => ({ "content-type": "application/json", ...extra });
        const zstd = await fetch(`${url}${get}`, { method: "POST", headers: headers({ "content-encoding": "zstd" }), body: "{}" });
        const zstdJson = await zstd.json();
        expect([zstd.status, zstdJson.code, connectReason(zstdJson)]).toEqual([501, "unimplemented", "UNSUPPORTED_ENCODING"]);
        const notGzip = await fetch(`${url}${get}`, { method: "POST", headers: headers({ "content-encoding": "gzip" }), body: "{}" });
        const notGzipJson = await notGzip.json();
        expect([notGzip.status, notGzipJson.code, connectReason(notGzipJson)]).toEqual([400, "invalid_argument", "MALFORMED_MESSAGE"]);
        const timeout = await fetch(`${url}${get}`, { method: "POST", headers: headers({ "connect-timeout-ms": "soon" }), body: "{}" });
        const timeoutJson = await timeout.json();
        expect([timeout.status, connectReason(timeoutJson)]).toEqual([400, "INVALID_HEADER"]);
        expect(JSON.stringify(timeoutJson.details)).toContain("connect-timeout-ms");
        // A message field named timeout that does not decode is the message's fault, not a header's.
        const badField = await post(url, "/taskstream.v1.TaskService/DispatchTask", '{"toolName":"t","timeout":"soon"}');
        expect([badField.status, connectReason(badField.json)]).toEqual([400, "MALFORMED_MESSAGE"]);
        // A Connect server stream ends with the error in its end message.
        const stream = await fetch(`${url}/taskstream.v1.TaskService/StreamTasks`, {
          method: "POST",
          headers: { "content-type": "application/connect+json" },
          body: new Uint8Array(envelope(0, Buffer.from("{bad"))),
        });
        const end = frames(Buffer.from(await stream.arrayBuffer())).find((f) => f.flags & 2);
        const endError = JSON.parse(end!.data.toString()).error;
        expect([endError.code, connectReason(endError)]).toEqual(["invalid_argument", "MALFORMED_MESSAGE"]);
      });

      it("gRPC-Web and connect-node's own gRPC services answer undecodable binary INVALID_ARGUMENT with a reason", async () => {
        const res = await fetch(`${t.server.url}/taskstream.v1.TaskService/GetTask`, {
          method: "POST",
          headers: { "content-type": "application/grpc-web+proto" },
          body: new Uint8Array(envelope(0, Buffer.from("ffffffffff0f0799", "hex"))),
        });
        const trailer = frames(Buffer.from(await res.arrayBuffer())).find((f) => f.flags & 0x80)!.data.toString();
        const field = (name: string) => trailer.match(new RegExp(`^${name}:\\s*(.*?)\\s*$`, "m"))?.[1];
        expect(Code[Number(field("grpc-status"))]).toBe(Code[Code.InvalidArgument]);
        expect(statusDetailsReason(Buffer.from(field("grpc-status-details-bin")!, "base64"))).toBe("MALFORMED_MESSAGE");
        // Health is served by connect-node's gRPC, not the fast path.
        const health = await rawGrpc(t.server.url, "/grpc.health.v1.Health/Check", grpcFrame(Buffer.from("ffffffffff0f0799", "hex")));
        expect([Code[health.grpcStatus], health.reason]).toEqual([Code[Code.InvalidArgument], "MALFORMED_MESSAGE"]);
        // And the fast path names a grpc-timeout it cannot read.
        const timeout = await rawGrpc(t.server.url, "/taskstream.v1.TaskService/GetTask", grpcFrame(Buffer.alloc(0)), { "grpc-timeout": "soon" });
        expect([Code[timeout.grpcStatus], timeout.reason]).toEqual([Code[Code.InvalidArgument], "INVALID_HEADER"]);
      });
    });

    describe("oversize messages", () => {
      const big = (bytes: number) => ({ blob: "a".repeat(bytes) });

      it("refuses args over 4 MiB with RESOURCE_EXHAUSTED from every client, and keeps serving", async () => {
        await expectError(t.tasks().dispatchTask({ toolName: tool, args: big(4 * MiB + 1) }), Code.ResourceExhausted, "MESSAGE_TOO_LARGE");
        await expectGrpcJsError(t.grpcJs.tasks.dispatchTask({ toolName: tool, args: big(5 * MiB) }), Code.ResourceExhausted, "MESSAGE_TOO_LARGE");
        // Connect (binary and JSON) and gRPC-Web over HTTP/2, refused by connect-node before any handler.
        const baseUrl = t.server.url;
        for (const transport of [
          createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
          createConnectTransport({ baseUrl, httpVersion: "2" }),
          createGrpcWebTransport({ baseUrl, httpVersion: "2" }),
        ]) {
          await expectError(createClient(TaskService, transport).dispatchTask({ toolName: tool, args: big(5 * MiB) }), Code.ResourceExhausted, "MESSAGE_TOO_LARGE");
        }
        // Over HTTP/1.1 without keep-alive: connect-node's HTTP/1.1 client abandons the rest of
        // the request body once the early 429 arrives but pools the socket anyway, so the next
        // request on it fails ECONNRESET (a client quirk: raw http.request and fetch, chunked
        // or not, reuse the connection fine). Other connections are unaffected.
        const agent = new http.Agent({ keepAlive: false });
        const h1 = (useBinaryFormat: boolean) =>
          createClient(TaskService, createConnectTransport({ baseUrl: t.server.url, httpVersion: "1.1", useBinaryFormat, nodeOptions: { agent } }));
        await expectError(h1(false).dispatchTask({ toolName: tool, args: big(5 * MiB) }), Code.ResourceExhausted, "MESSAGE_TOO_LARGE");
        await expectError(h1(true).dispatchTask({ toolName: tool, args: big(5 * MiB) }), Code.ResourceExhausted, "MESSAGE_TOO_LARGE");
        const raw = await post(t.server.url, "/taskstream.v1.TaskService/DispatchTask", JSON.stringify({ toolName: tool, args: big(5 * MiB) }));
        expect([raw.status, raw.json?.code, connectReason(raw.json)]).toEqual([429, "resource_exhausted", "MESSAGE_TOO_LARGE"]);
        expect((await t.tasks("connect-json").getTask({ taskId: pending.taskId })).task!.taskId).toBe(pending.taskId);
        expect((await t.tasks().getTask({ taskId: pending.taskId })).task!.taskId).toBe(pending.taskId);
        expect((await t.grpcJs.tasks.getTask({ taskId: pending.taskId })).task!.taskId).toBe(pending.taskId);
      });

      // gRPC clients share one HTTP/2 connection: large calls in flight must not refuse its other calls.
      // (connect-node's own session refuses them past 10 MB unless raised, as README says.)
      it("serves a connection's other calls while several 3 MiB requests are in flight on it", async () => {
        const bigTool = `${tool}-concurrent-big`;
        const roomy = createClient(TaskService, createGrpcTransport({ baseUrl: t.server.url, nodeOptions: { maxSessionMemory: 64 } }));
        const dispatches = Array.from({ length: 6 }, () => roomy.dispatchTask({ toolName: bigTool, args: big(3 * MiB) }));
        const dispatchesJs = Array.from({ length: 3 }, () => t.grpcJs.tasks.dispatchTask({ toolName: bigTool, args: big(3 * MiB) }));
        const reads = Array.from({ length: 30 }, () => roomy.getTask({ taskId: pending.taskId }));
        const readsJs = Array.from({ length: 10 }, () => t.grpcJs.tasks.getTask({ taskId: pending.taskId }));
        const results = await Promise.allSettled([...dispatches, ...dispatchesJs, ...reads, ...readsJs]);
        created += 9;
        expect(results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
        expect((await t.tasks().listTasks({ filter: { toolName: bigTool } })).totalSize).toBe(9n);
      });

      it("dispatches 3 MiB of args and reads them back whole", async () => {
        const args = big(3 * MiB);
        const { task } = await t.tasks().dispatchTask({ toolName: `${tool}-big`, args });
        created++;
        const got = (await t.tasks().getTask({ taskId: task!.taskId })).task!;
        expect((got.args!.blob as string).length).toBe(3 * MiB);
        expect(got.args).toEqual(args);
        const viaJs = (await t.grpcJs.tasks.getTask({ taskId: task!.taskId })).task!;
        expect((viaJs.args!.blob as string).length).toBe(3 * MiB);
      });

      // A lease the worker never receives would strand its task: a claim batch is bounded by bytes.
      it("a claim batch too big for one response leases nothing it cannot deliver", async () => {
        const bigTool = `${tool}-batch`;
        const ids: string[] = [];
        for (let i = 0; i < 2; i++) {
          ids.push((await t.tasks().dispatchTask({ toolName: bigTool, args: big(2.5 * MiB) })).task!.taskId);
          created++;
        }
        const claimed = await t.workers().claimTasks({ workerId: "w-batch", toolNames: [bigTool], maxTasks: 2 }).then(
          (r) => r.tasks.length,
          () => 0,
        );
        const leased = [];
        for (const id of ids) if ((await t.tasks().getTask({ taskId: id })).task!.status === TaskStatus.RUNNING) leased.push(id);
        expect(leased).toHaveLength(claimed);
      });

      // Every task must stay readable: one that outgrew a response could never be got, listed past or claimed.
      describe("a task too large for one response", () => {
        const stringValue = (bytes: number) => ({ kind: { case: "stringValue" as const, value: "r".repeat(bytes) } });

        it("refuses a result that would outgrow its task, TASK_TOO_LARGE, and the task stays running and readable", async () => {
          const hugeTool = `${tool}-huge`;
          const { task, lease } = await t.tasks().dispatchTask({ toolName: hugeTool, args: big(2.5 * MiB), claim: { workerId: "w-huge" } });
          created++;
          const taskId = task!.taskId;
          const err = await expectError(t.workers().completeTask({ taskId, leaseId: lease!.leaseId, result: stringValue(2 * MiB) }), Code.InvalidArgument, "TASK_TOO_LARGE");
          expect(err.findDetails(ErrorInfoSchema)[0].metadata).toMatchObject({ field: "result", task_id: taskId });
          const batch = await t.workers().completeTasks({ requests: [{ taskId, leaseId: lease!.leaseId, result: stringValue(2 * MiB) }] });
          expect(batch.results[0].error?.reason).toBe("TASK_TOO_LARGE");
          await expectGrpcJsError(t.grpcJs.workers.completeTask({ taskId, leaseId: lease!.leaseId, result: stringValue(2 * MiB) }), Code.InvalidArgument, "TASK_TOO_LARGE");
          expect((await t.tasks().getTask({ taskId })).task!.status).toBe(TaskStatus.RUNNING);
          // The worker can still end it, with a result that fits.
          const done = await t.workers().completeTask({ taskId, leaseId: lease!.leaseId, result: stringValue(1 * MiB) });
          expect(done.task!.status).toBe(TaskStatus.COMPLETED);
          expect((await t.grpcJs.tasks.getTask({ taskId })).task!.taskId).toBe(taskId);
        });

        it("refuses args that leave a task no room, in DispatchTask and DispatchTasks, and outputs too large to deliver", async () => {
          const args = big(4 * MiB - 40 * 1024);
          const err = await expectError(t.tasks().dispatchTask({ toolName: `${tool}-huge-args`, args }), Code.InvalidArgument, "TASK_TOO_LARGE");
          expect(err.findDetails(ErrorInfoSchema)[0].metadata.field).toBe("args");
          const inBatch = await expectError(t.tasks().dispatchTasks({ requests: [{ toolName: `${tool}-huge-args`, args }] }), Code.InvalidArgument, "TASK_TOO_LARGE");
          expect(inBatch.findDetails(ErrorInfoSchema)[0].metadata.field).toBe("requests[0].args");
          expect((await t.tasks().listTasks({ filter: { toolName: `${tool}-huge-args` } })).totalSize).toBe(0n);

          const { task, lease } = await t.tasks().dispatchTask({ toolName: `${tool}-huge-output`, claim: { workerId: "w-out" } });
          created++;
          const output = stringValue(4 * MiB - 40 * 1024);
          const refused = await expectError(t.workers().reportOutput({ taskId: task!.taskId, leaseId: lease!.leaseId, output }), Code.InvalidArgument, "TASK_TOO_LARGE");
          expect(refused.findDetails(ErrorInfoSchema)[0].metadata.field).toBe("output");
          const events = await t.tasks().listTaskEvents({ taskId: task!.taskId });
          expect(events.events.map((e) => e.kind.case)).toEqual(["queued", "running"]);
        });

        // A request just under 4 MiB whose answer (each task with its id, times and lease) is over it.
        it("refuses a DispatchTasks whose answer would not fit one response, before creating any task", async () => {
          const batchTool = `${tool}-wide`;
          const requests = Array.from({ length: 1000 }, () => ({ toolName: batchTool, args: big(4120) }));
          const err = await expectError(t.tasks().dispatchTasks({ requests }), Code.InvalidArgument, "RESPONSE_TOO_LARGE");
          expect(err.findDetails(ErrorInfoSchema)[0].metadata.field).toBe("requests");
          expect((await t.tasks().listTasks({ filter: { toolName: batchTool } })).totalSize).toBe(0n);
          const half = await t.tasks().dispatchTasks({ requests: requests.slice(0, 500) });
          created += 500;
          expect(half.results.filter((r) => r.outcome.case === "dispatched")).toHaveLength(500);
        });

        // Struct encoding of numbers takes up to 5.5 times their JSON text: pages are cut by encoded size.
        it("pages and claims tasks whose encoding far exceeds their JSON, without a response over 4 MiB", async () => {
          const denseTool = `${tool}-dense`;
          // ~200 KiB of JSON, ~1.1 MiB encoded: four fit a budget counted in JSON, not one response.
          const numbers = { n: Array.from({ length: 100_000 }, () => 0) };
          for (let i = 0; i < 4; i++) await t.tasks().dispatchTask({ toolName: denseTool, args: numbers });
          created += 4;
          const seen: string[] = [];
          let pageToken = "";
          do {
            const page = await t.grpcJs.tasks.listTasks({ filter: { toolName: denseTool }, pageSize: 10, pageToken });
            expect(page.tasks.length).toBeGreaterThan(0);
            seen.push(...page.tasks.map((x) => x.taskId));
            pageToken = page.nextPageToken;
          } while (pageToken !== "");
          expect(new Set(seen).size).toBe(4);
          const claimed = await t.workers().claimTasks({ workerId: "w-dense", toolNames: [denseTool], maxTasks: 4 });
          expect(claimed.tasks.length).toBeGreaterThan(0);
          expect(claimed.tasks.length).toBeLessThan(4);
          expect(claimed.tasks[0].task!.args!.n).toHaveLength(100_000);
        });
      });
    });

    it("left every task as the good calls made it", async () => {
      const { totalSize } = await t.tasks().listTasks({ pageSize: 1 });
      expect(totalSize).toBe(BigInt(created));
      for (const [taskId, before] of snapshots) {
        const after = await snapshot(taskId);
        expect(after.task).toEqual(before.task);
        expect(after.events).toBe(before.events);
      }
      expect((await t.tasks().listTasks({ pageSize: 1, filter: { toolName: tool } })).totalSize).toBe(1n);
    });
  });
}
