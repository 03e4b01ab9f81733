/**
 * What a browser dashboard does with taskstream, bundled for Chromium by
 * test/browser.test.ts: Connect-Web and gRPC-Web clients calling from a page
 * on another origin. Every answer is plain JSON (no bigint, no messages) so
 * the test can read it out of the page.
 */
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { TaskStatus, type TaskFilter } from "../../gen/taskstream/v1/task_pb.js";
import { TaskService, type StreamTasksResponse } from "../../gen/taskstream/v1/task_service_pb.js";
import { TaskFollower } from "../../clients/ts/follow.js";

export type WebProtocol = "connect-json" | "connect-binary" | "grpc-web";

function transport(baseUrl: string, protocol: WebProtocol): Transport {
  if (protocol === "grpc-web") return createGrpcWebTransport({ baseUrl });
  // Reads go as cacheable GETs, as a dashboard would send them.
  return createConnectTransport({ baseUrl, useBinaryFormat: protocol === "connect-binary", useHttpGet: true });
}

const tasks = (baseUrl: string, protocol: WebProtocol) => createClient(TaskService, transport(baseUrl, protocol));

/** An error as the page's code sees it. */
function failure(error: unknown) {
  const e = ConnectError.from(error);
  return { code: Code[e.code], message: e.rawMessage };
}

/** Dispatches a task, then reads it back with GetTask, ListTasks and ListTaskEvents. */
export async function dispatchAndRead(baseUrl: string, protocol: WebProtocol, agentId: string) {
  try {
    const client = tasks(baseUrl, protocol);
    const { task } = await client.dispatchTask({ toolName: "browser-tool", agentId, toolCallId: `call-${protocol}`, args: { from: protocol, n: 1 } });
    const taskId = task!.taskId;
    const got = (await client.getTask({ taskId })).task!;
    const listed = await client.listTasks({ filter: { agentId } });
    const { events } = await client.listTaskEvents({ taskId });
    return {
      taskId,
      status: TaskStatus[got.status],
      args: got.args,
      listed: listed.tasks.map((t) => t.taskId),
      totalSize: Number(listed.totalSize),
      events: events.map((e) => ({ sequence: Number(e.sequence), kind: e.kind.case })),
    };
  } catch (error) {
    return { error: failure(error) };
  }
}

interface Watch {
  messages: ReturnType<typeof summary>[];
  ended?: { code: string; message?: string };
  abort: AbortController;
  /** With `follow`: the errors the follower resumed after. */
  retries: string[];
}

const watches = new Map<string, Watch>();

function summary(response: StreamTasksResponse) {
  const m = response.message;
  if (m.case !== "event") return { kind: m.case ?? "none", sequence: Number(m.value?.sequence ?? 0) };
  const e = m.value;
  return {
    kind: e.kind.case ?? "none",
    sequence: Number(e.sequence),
    taskId: e.taskId,
    agentId: e.agentId,
    status: TaskStatus[e.status],
    output: e.kind.case === "output" && e.kind.value.output ? toJson(ValueSchema, e.kind.value.output) : undefined,
    result: e.kind.case === "completed" && e.kind.value.result ? toJson(ValueSchema, e.kind.value.result) : undefined,
  };
}

type Filter = Omit<Partial<TaskFilter>, "$typeName">;

/** Reads `read`'s messages into a watch named `name` until it ends; `watched` tells what it has so far. */
function track(name: string, read: (w: Watch) => AsyncIterable<ReturnType<typeof summary>>): void {
  const w: Watch = { messages: [], abort: new AbortController(), retries: [] };
  watches.set(name, w);
  void (async () => {
    try {
      for await (const message of read(w)) w.messages.push(message);
      w.ended = { code: "OK" };
    } catch (error) {
      w.ended = failure(error);
    }
  })();
}

/** Opens StreamTasks under `name`, once: it ends with the call. */
export function watch(name: string, baseUrl: string, protocol: WebProtocol, filter: Filter, timeoutMs?: number): void {
  track(name, async function* (w) {
    for await (const response of tasks(baseUrl, protocol).streamTasks({ filter }, { signal: w.abort.signal, timeoutMs })) yield summary(response);
  });
}

/** Like `watch`, through clients/ts/follow.ts: resumes from its cursor after any disconnect. */
export function follow(name: string, baseUrl: string, protocol: WebProtocol, filter: Filter): void {
  track(name, async function* (w) {
    const follower = new TaskFollower(tasks(baseUrl, protocol), { filter, heartbeatInterval: { nanos: 200_000_000 } }, {
      signal: w.abort.signal,
      minBackoffMs: 50,
      maxBackoffMs: 500,
      onRetry: (error) => w.retries.push(error.message),
    });
    for await (const { response, restart } of follower.messages()) {
      if (restart) w.retries.push(`restart: ${restart.message}`);
      yield response ? summary(response) : { kind: "restart", sequence: 0 };
    }
  });
}

export function watched(name: string): Pick<Watch, "messages" | "ended" | "retries"> {
  const w = watches.get(name)!;
  return { messages: w.messages, ended: w.ended, retries: w.retries };
}

/** The dashboard closes its view: the stream's fetch is aborted. */
export function unwatch(name: string): void {
  watches.get(name)!.abort.abort();
}
