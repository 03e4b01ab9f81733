import { isDeepStrictEqual } from "node:util";
import { fromBinary, toBinary, type JsonValue } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { TaskEventSchema, TaskSchema, TaskStatus, type Task } from "../gen/taskstream/v1/task_pb.js";
import { durationFromMs, timestampFromMs } from "../src/domain/time.js";
import { eventFor, runningKind, type EventKind } from "../src/storage/event-log.js";
import { eventBytes } from "../src/storage/event-wire.js";
import type { TaskRow } from "../src/storage/schema.js";
import { ALL_TASK_FIELDS, taskBytes, taskFromRow, writeTask } from "../src/storage/task-rows.js";
import { maskTask } from "../src/service/read-mask.js";
import { WireWriter } from "../src/storage/wire-writer.js";
import { prng } from "../bench/list-tasks/data.js";
import { taskRow } from "./support/task-row.js";
import { DIALECTS, PROTOCOLS, startTestServer, type TestServer } from "./support/test-server.js";

/**
 * GetTask and ListTasks send tasks written straight from their rows
 * (taskBytes), not encoded by protobuf-es. Decoding those bytes must give
 * exactly what taskFromRow gives, and every protocol must see the same tasks.
 */


const EDGE_STRINGS = [
  "",
  "a",
  "x".repeat(42),
  "x".repeat(43),
  "é".repeat(42), // 84 bytes from 42 code units: the short path with a non-ASCII fall-back
  "€".repeat(42), // 126 bytes
  "€".repeat(43), // 129 bytes: a two-byte length
  "😀 emoji, 中文, ñ, combining é, \u0000 nul, \n\t\"\\ escapes",
  "\u007f\u0080\u07ff\u0800\uffff",
  "y".repeat(20_000), // a three-byte length
];
const EDGE_NUMBERS = [0, 1, -1, 0.5, -0.1, 1e300, -1e300, 5e-324, 1.7976931348623157e308, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), 123456789.125, 1e-7];
const EDGE_KEYS = ["", "0", "1", "10", "01", "-1", "4294967295", "4294967296", "a", "constructor", "toString", "ключ", "😀", "k".repeat(200)];

function randomJson(random: () => number, depth: number): JsonValue {
  const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
  const kind = Math.floor(random() * (depth > 0 ? 8 : 5));
  switch (kind) {
    case 0:
      return null;
    case 1:
      return random() < 0.5;
    case 2:
      return random() < 0.5 ? pick(EDGE_NUMBERS) : Math.round((random() - 0.5) * 1e6) / 100;
    case 3:
    case 4:
      return random() < 0.3 ? pick(EDGE_STRINGS.slice(0, 9)) : Math.random().toString(36).slice(2);
    case 5:
      return Array.from({ length: Math.floor(random() * 5) }, () => randomJson(random, depth - 1));
    default:
      return randomObject(random, depth - 1);
  }
}

function randomObject(random: () => number, depth: number): { [k: string]: JsonValue } {
  const object: { [k: string]: JsonValue } = {};
  const n = Math.floor(random() * 6);
  for (let i = 0; i < n; i++) {
    const key = random() < 0.4 ? EDGE_KEYS[Math.floor(random() * EDGE_KEYS.length)] : `k${Math.floor(random() * 1000)}`;
    object[key] = randomJson(random, depth);
  }
  return object;
}

function row(overrides: Partial<TaskRow> = {}): TaskRow {
  return taskRow({
    task_id: "6f1c2d3e-0000-4000-8000-000000000001",
    status: TaskStatus.COMPLETED,
    tool_name: "web-search",
    tool_call_id: "call-1",
    agent_id: "agent-7",
    run_id: "run-1",
    thread_id: "thread-1",
    resource_id: "res-1",
    args: JSON.stringify({ query: "tide tables" }),
    result: JSON.stringify({ high: "06:12" }),
    create_time: 1_794_214_783_190,
    start_time: 1_794_214_783_999,
    complete_time: 1_794_214_790_001,
    attempt: 1,
    max_retries: 3,
    sequence: 42,
    worker_id: "worker-1",
    lease_id: "lease-1",
    ...overrides,
  });
}

function randomRow(random: () => number, i: number): TaskRow {
  const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
  const maybe = <T>(x: () => T): T | null => (random() < 0.5 ? x() : null);
  const ms = () => (random() < 0.3 ? 0 : Math.floor(random() * 2 ** 42));
  const create = ms();
  const error = {
    message: pick(EDGE_STRINGS),
    stack: random() < 0.5 ? `Error\n    at f (x.py:${i})` : "",
    code: pick(["", "TIMEOUT", "UPSTREAM_5XX"]),
    retryable: random() < 0.5,
    details: random() < 0.5 ? randomObject(random, 3) : undefined,
  };
  return row({
    task_id: `task-${i}-${pick(EDGE_STRINGS.slice(0, 4))}`,
    status: Math.floor(random() * 8),
    tool_name: pick(EDGE_STRINGS.slice(0, 9)),
    tool_call_id: random() < 0.5 ? "" : `call-${i}`,
    agent_id: pick(["", "agent-1", "ägent"]),
    run_id: pick(["", "run-1"]),
    thread_id: pick(["", "thread-1"]),
    resource_id: pick(["", "res-1"]),
    args: JSON.stringify(randomObject(random, 4)),
    result: maybe(() => JSON.stringify(randomJson(random, 4))),
    error: maybe(() => JSON.stringify(Object.fromEntries(Object.entries(error).filter(([, v]) => v !== "" && v !== false)))),
    create_time: create,
    start_time: ms(),
    suspend_time: ms(),
    complete_time: ms(),
    attempt: Math.floor(random() * 5),
    max_retries: pick([0, 1, 100]),
    timeout_ms: pick([0, 1, 999, 1000, 60_000, 86_400_123]),
    sequence: pick([0, 1, 127, 128, 2 ** 31, 2 ** 32, 2 ** 53 - 1]),
    cancel_requested: random() < 0.2 ? 1 : 0,
    suspend_payload: maybe(() => JSON.stringify(randomJson(random, 3))),
    resume_data: maybe(() => JSON.stringify(randomJson(random, 3))),
    worker_id: pick(["", "worker-1"]),
    ready_time: random() < 0.5 ? 0 : create + Math.floor(random() * 10_000) - 1000,
    retry_delay_ms: pick([0, 1, 1000, 86_400_000]),
    retry_backoff: pick([1, 1.5, 2, 10]),
    max_retry_delay_ms: pick([0, 60_000, 86_400_000]),
  });
}

/** Rows at the edges: every JSON shape a column can hold, and the row fields at their limits. */
function edgeRows(): TaskRow[] {
  const values: string[] = [
    "null",
    "0",
    "-0",
    "true",
    "false",
    '""',
    "[]",
    "{}",
    "1e300",
    "-1e-300",
    "5e-324",
    "9007199254740993",
    '"\\ud800 lone surrogate"',
    '"😀"',
    "[null, [], {}, [[[]]], {\"a\": {\"b\": {}}}]",
    JSON.stringify(EDGE_STRINGS),
    JSON.stringify(EDGE_NUMBERS),
    JSON.stringify(Object.fromEntries(EDGE_KEYS.map((k, i) => [k, i]))),
    // Integer-like keys come out of JSON.parse first, in numeric order; a map has no order.
    '{"b": 1, "2": 2, "1": 3, "a": {"10": null, "9": false}}',
    // A later duplicate key wins, in JSON.parse and on the wire alike.
    '{"a": 1, "a": 2}',
    JSON.stringify({ big: "z".repeat(300_000), nested: Array.from({ length: 200 }, (_, i) => ({ i, s: "€".repeat(i) })) }),
    JSON.stringify(Array.from({ length: 40 }).reduce<JsonValue>((inner, _, i) => (i % 2 ? { deeper: inner } : [inner, i]), 1)),
  ];
  const rows: TaskRow[] = [];
  for (const v of values) {
    rows.push(row({ result: v, suspend_payload: v, resume_data: v }));
    const parsed = JSON.parse(v) as JsonValue;
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      rows.push(row({ args: v, error: JSON.stringify({ message: "m", details: parsed }) }));
    }
  }
  rows.push(
    row({ args: "{}", result: null, status: 0, attempt: 0, max_retries: 0, sequence: 0, timeout_ms: 0, retry_backoff: 0, retry_delay_ms: 0, max_retry_delay_ms: 0 }),
    row({ task_id: "", tool_name: "", tool_call_id: "", agent_id: "", run_id: "", thread_id: "", resource_id: "", worker_id: "" }),
    row({ create_time: 0, start_time: 0, suspend_time: 0, complete_time: 0 }),
    row({ create_time: 1, start_time: 999, suspend_time: 1000, complete_time: 1001 }),
    row({ create_time: -1500, start_time: -1, timeout_ms: -2500 }), // negative nanos: ten-byte varints
    row({ attempt: -1, max_retries: 2 ** 31 - 1, sequence: 2 ** 53 - 1, cancel_requested: 1 }),
    row({ status: TaskStatus.PENDING, create_time: 1000, ready_time: 5000 }), // a retry waits: retry_time
    row({ status: TaskStatus.PENDING, create_time: 5000, ready_time: 5000 }),
    row({ status: TaskStatus.RUNNING, create_time: 1000, ready_time: 5000 }),
    row({ error: JSON.stringify({ message: "boom", stack: "Error: boom\n  at x", code: "E", retryable: true, details: { a: [1, "b", null] } }) }),
    row({ error: JSON.stringify({ message: "", retryable: false }) }),
    row({ error: JSON.stringify({ details: null }) }),
    row({ error: "{}" }),
    row({ retry_backoff: 1.0000000000000002 }),
  );
  return rows;
}

function expectSameTask(row: TaskRow) {
  const bytes = taskBytes(row);
  const decoded = fromBinary(TaskSchema, bytes);
  const expected = taskFromRow(row);
  // protobuf-es's own round trip: what clients got before.
  const roundTrip = fromBinary(TaskSchema, toBinary(TaskSchema, expected));
  if (!isDeepStrictEqual(decoded, roundTrip)) expect(decoded).toStrictEqual(roundTrip);
  // And the message itself, but where UTF-8 cannot carry a lone surrogate (it becomes U+FFFD either way).
  if (!/\\ud[89ab]/i.test(JSON.stringify(row))) {
    if (!isDeepStrictEqual(decoded, expected)) expect(decoded).toStrictEqual(expected);
  }
}

describe("taskBytes", () => {
  it("decodes to taskFromRow(row) for rows at the edges", () => {
    const rows = edgeRows();
    expect(rows.length).toBeGreaterThan(40);
    for (const r of rows) expectSameTask(r);
  });

  it("decodes to taskFromRow(row) for 5000 random rows", () => {
    const random = prng(1);
    for (let i = 0; i < 5000; i++) expectSameTask(randomRow(random, i));
  });

  it("writes only a read mask's fields, as maskTask clears the rest, for random masks over edge and random rows", () => {
    const random = prng(2);
    const rows = [...edgeRows(), ...Array.from({ length: 500 }, (_, i) => randomRow(random, i))];
    for (const [i, r] of rows.entries()) {
      const fields = Math.floor(random() * ALL_TASK_FIELDS) & ALL_TASK_FIELDS;
      const w = new WireWriter(1024);
      writeTask(w, r, fields);
      const decoded = fromBinary(TaskSchema, w.finish());
      const expected = fromBinary(TaskSchema, toBinary(TaskSchema, maskTask(taskFromRow(r), fields)));
      if (!isDeepStrictEqual(decoded, expected)) expect(decoded, `row ${i}, fields ${fields.toString(2)}`).toStrictEqual(expected);
    }
  });

  it("keeps -0 apart from 0, as protobuf-es does", () => {
    const decoded = fromBinary(TaskSchema, taskBytes(row({ result: "-0", args: '{"z": -0}' })));
    expect(Object.is(decoded.result!.kind.value, -0)).toBe(true);
    expect(Object.is(decoded.args!.z, -0)).toBe(true);
  });

  it("refuses columns that are not what storage writes", () => {
    for (const bad of [{ args: "[1]" }, { args: "null" }, { args: "not json" }, { result: "{" }, { error: '{"message": 5}' }, { error: '{"other": 1}' }]) {
      expect(() => taskBytes(row(bad)), JSON.stringify(bad)).toThrow();
    }
  });
});

describe("eventBytes", () => {
  const kinds = (random: () => number): EventKind[] => [
    { case: "queued", value: { args: randomObject(random, 3), maxRetries: Math.floor(random() * 5), timeout: durationFromMs(Math.floor(random() * 1e7)) } },
    runningKind(randomRow(random, 0)),
    runningKind({ ...randomRow(random, 1), resume_data: JSON.stringify(randomJson(random, 2)) }),
    { case: "output", value: { output: fromJson(ValueSchema, randomJson(random, 3)) } },
    { case: "completed", value: { result: fromJson(ValueSchema, randomJson(random, 2)) } },
    { case: "completed", value: {} },
    { case: "failed", value: { error: { message: "boom", retryable: true }, status: TaskStatus.FAILED, retryTime: timestampFromMs(1_700_000_000_123) } },
    { case: "cancelled", value: { reason: "not needed" } },
    { case: "suspended", value: { payload: fromJson(ValueSchema, randomJson(random, 2)) } },
    { case: "resumed", value: { resumeData: fromJson(ValueSchema, randomJson(random, 2)) } },
  ];

  it("decodes to eventFor(...) for every kind, on random and edge rows", () => {
    const random = prng(7);
    const w = new WireWriter(16);
    const rows = [...edgeRows(), ...Array.from({ length: 300 }, (_, i) => randomRow(random, i))];
    for (const [i, task] of rows.entries()) {
      for (const kind of kinds(random)) {
        const sequence = i === 0 ? 0 : 1 + Math.floor(random() * 2 ** 40);
        const now = Math.floor(random() * 2e12);
        const decoded = fromBinary(TaskEventSchema, eventBytes(w, task, kind, sequence, now));
        const expected = fromBinary(TaskEventSchema, toBinary(TaskEventSchema, eventFor(task, kind, sequence, now)));
        if (!isDeepStrictEqual(decoded, expected)) expect(decoded).toEqual(expected);
      }
    }
  });
});

describe("WireWriter", () => {
  it("writes lengths of every size, moving content when a length needs more than a byte", () => {
    for (const n of [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152]) {
      const w = new WireWriter(16);
      w.uint32(7);
      const start = w.begin();
      w.raw(new Uint8Array(n).fill(0xab));
      w.end(start);
      w.uint32(9);
      const bytes = w.finish();
      let pos = 1;
      let length = 0;
      for (let shift = 0; ; shift += 7) {
        const b = bytes[pos++];
        length += (b & 0x7f) * 2 ** shift;
        if (b < 0x80) break;
      }
      expect(length).toBe(n);
      expect(bytes.length).toBe(pos + n + 1);
      expect(bytes[0]).toBe(7);
      expect(bytes[bytes.length - 1]).toBe(9);
      expect(bytes.subarray(pos, pos + n).every((b) => b === 0xab)).toBe(true);
    }
  });
});

for (const dialect of DIALECTS) {
  describe(`GetTask and ListTasks on ${dialect}: every protocol sees the same tasks`, () => {
    let t: TestServer;
    let rows: TaskRow[];
    const tool = `encoding-${Math.random().toString(36).slice(2)}`;

    beforeAll(async () => {
      // No sweeper or retention: the rows are made up, and must stay as inserted.
      t = await startTestServer(dialect, { sweepIntervalMs: 3_600_000, retentionIntervalMs: 3_600_000 });
      const random = prng(2);
      // JSON cannot tell -0 from 0, nor UTF-8 carry a lone surrogate: those
      // stay to the unit tests above. The times are those of real tasks.
      const portable = (r: TaskRow) => !/(?<![\d.e])-0(?![\d.])|\\ud[89ab]/i.test(JSON.stringify(r)) && r.create_time >= 0 && r.start_time >= 0 && r.timeout_ms >= 0;
      rows = [...edgeRows(), ...Array.from({ length: 300 }, (_, i) => randomRow(random, i))]
        .filter(portable)
        .map((r, i) => ({
          ...r,
          task_id: `enc-${String(i).padStart(4, "0")}`,
          tool_name: tool,
          tool_call_id: r.tool_call_id && `call-${i}`,
          create_time: 1_000_000 + i,
          request_id: null,
        }));
      const db = t.server.deps.db.kysely;
      await db.insertInto("tasks").values(rows).execute();
      // As stored (PostgreSQL keeps retry_backoff as a float4).
      rows = await db.selectFrom("tasks").selectAll().where("tool_name", "=", tool).orderBy("create_time").execute();
    }, 120_000);
    afterAll(() => t?.close());

    it("GetTask", async () => {
      expect(rows.length).toBeGreaterThan(250);
      for (const r of rows.filter((_, i) => i % 7 === 0)) {
        const expected = taskFromRow(r);
        for (const protocol of PROTOCOLS) {
          const { task } = await t.tasks(protocol).getTask({ taskId: r.task_id });
          expect(task, `${protocol} ${r.task_id}`).toEqual(expected);
        }
        const viaGrpcJs = await t.grpcJs.tasks.getTask({ taskId: r.task_id });
        expect(viaGrpcJs.task, `grpc-js ${r.task_id}`).toEqual(expected);
      }
    });

    it("ListTasks, page by page", async () => {
      const expected = rows.map(taskFromRow);
      const listAll = async (list: (token: string) => Promise<{ tasks: Task[]; nextPageToken: string; totalSize: bigint }>) => {
        const tasks: Task[] = [];
        let token = "";
        do {
          const page = await list(token);
          expect(Number(page.totalSize)).toBe(rows.length);
          tasks.push(...page.tasks);
          token = page.nextPageToken;
        } while (token !== "");
        return tasks;
      };
      const request = { filter: { toolName: tool }, pageSize: 37 };
      for (const protocol of PROTOCOLS) {
        const tasks = await listAll((pageToken) => t.tasks(protocol).listTasks({ ...request, pageToken }));
        expect(tasks, protocol).toEqual(expected);
      }
      const tasks = await listAll((pageToken) => t.grpcJs.tasks.listTasks({ ...request, pageToken }));
      expect(tasks, "grpc-js").toEqual(expected);
    });

    it("ListTaskEvents sends the stored events to binary and JSON clients alike", async () => {
      const { task } = await t.tasks().dispatchTask({ toolName: `${tool}-ev`, args: { nested: { list: [1, "two", null, { three: true }] }, "😀": "é" } });
      const { tasks: claimed } = await t.workers().claimTasks({ workerId: "w", toolNames: [`${tool}-ev`] });
      const leaseId = claimed[0].lease!.leaseId;
      for (let i = 0; i < 5; i++) await t.workers().reportOutput({ taskId: task!.taskId, leaseId, output: { kind: { case: "stringValue", value: `out ${i} €` } } });
      await t.workers().completeTask({ taskId: task!.taskId, leaseId, result: { kind: { case: "numberValue", value: 1e300 } } });
      const all = await t.tasks().listTaskEvents({ taskId: task!.taskId });
      expect(all.events.map((e) => e.kind.case)).toEqual(["queued", "running", "output", "output", "output", "output", "output", "completed"]);
      for (const protocol of PROTOCOLS) {
        const first = await t.tasks(protocol).listTaskEvents({ taskId: task!.taskId, pageSize: 3 });
        const second = await t.tasks(protocol).listTaskEvents({ taskId: task!.taskId, pageSize: 10, pageToken: first.nextPageToken });
        expect([...first.events, ...second.events], protocol).toEqual(all.events);
        expect(first.totalSize).toBe(8n);
      }
      expect((await t.grpcJs.tasks.listTaskEvents({ taskId: task!.taskId })).events).toEqual(all.events);
    });
  });

  describe(`DispatchTasks and ClaimTasks on ${dialect}: every protocol sees the same tasks and leases`, () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer(dialect);
    });
    afterAll(() => t?.close());

    it.each(PROTOCOLS)("%s", async (protocol) => {
      const toolName = `claimed-${protocol}-${Math.random().toString(36).slice(2)}`;
      const requests = [0, 1, 2, 1].map((i) => ({ toolName, requestId: `${toolName}-${i}`, args: { i, nested: { list: [i, "x", null, true] } }, agentId: `a${i}` }));
      const { results } = await t.tasks(protocol).dispatchTasks({ requests });
      const dispatched = results.map((r) => (r.outcome.case === "dispatched" ? r.outcome.value : undefined));
      expect(dispatched.map((d) => d?.created)).toEqual([true, true, true, false]);
      expect(dispatched[3]!.task).toEqual(dispatched[1]!.task);
      for (const d of dispatched) expect(d!.task).toEqual((await t.tasks("grpc").getTask({ taskId: d!.task!.taskId })).task);

      const before = Date.now();
      const { tasks } = await t.workers(protocol).claimTasks({ workerId: "encoder", toolNames: [toolName], maxTasks: 10 });
      // Tasks created in the same millisecond are claimed in no particular order.
      const byI = (a: { i?: unknown }, b: { i?: unknown }) => Number(a.i) - Number(b.i);
      expect(tasks.map((c) => c.task!.args!).sort(byI)).toEqual(requests.slice(0, 3).map((r) => r.args));
      for (const { task, lease } of tasks) {
        expect(task).toEqual((await t.tasks("grpc").getTask({ taskId: task!.taskId })).task);
        expect(lease!.leaseId).toMatch(/^[0-9a-f-]{36}$/);
        expect(Number(lease!.expireTime!.seconds) * 1000).toBeGreaterThan(before);
      }
    });
  });
}
