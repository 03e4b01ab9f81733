import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskFollower, oldestSequence, type FollowMessage } from "../clients/ts/follow.js";
import type { TaskEvent } from "../gen/taskstream/v1/task_pb.js";
import { TaskService } from "../gen/taskstream/v1/task_service_pb.js";
import { errorReason } from "../src/errors.js";
import type { TaskstreamServer } from "../src/server/server.js";
import { eventually } from "./support/streams.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { freshDatabase, startWith, withClients, type TestServer } from "./support/test-server.js";

/** Reads a follower in the background and keeps what it handed out. */
function record(follower: TaskFollower) {
  const seen: FollowMessage[] = [];
  const done = (async () => {
    for await (const message of follower.messages()) seen.push(message);
  })();
  const responses = () => seen.filter((m) => m.response !== undefined);
  return {
    seen,
    done,
    snapshotSequence: () => responses().filter((m) => m.response!.message.case === "snapshotComplete").at(-1)?.response!.message.value?.sequence,
    snapshotEvents: () => responses().filter((m) => m.snapshot).map((m) => m.response!.message.value as TaskEvent),
    liveEvents: () => responses().filter((m) => !m.snapshot && m.response!.message.case === "event").map((m) => m.response!.message.value as TaskEvent),
  };
}

const identity = (events: TaskEvent[]) => events.map((e) => `${e.sequence} ${e.toolCallId} ${e.kind.case}`);

describe("the TypeScript follower (clients/ts/follow.ts)", () => {
  const agentId = "ts-follower";
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let server: TaskstreamServer;
  let t: TestServer;
  let proxy: TcpProxy;
  let viaProxy: Client<typeof TaskService>;

  beforeAll(async () => {
    database = await freshDatabase("sqlite");
    server = await startWith(database.location, { shutdownDrainMs: 0 });
    t = withClients(server, database.location, async () => {});
    proxy = await startTcpProxy({ host: "127.0.0.1", port: server.port });
    viaProxy = createClient(TaskService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${proxy.port}` }));
  });
  afterAll(async () => {
    await proxy?.close();
    await t?.close();
    await server?.close();
    await database?.drop();
  });

  const dispatchAndComplete = async (name: string) => {
    const { task, lease } = await t.tasks().dispatchTask({ toolName: "ts-tool", toolCallId: name, agentId, claim: { workerId: "w" } });
    await t.workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
  };
  const logEvents = async (after: bigint) => {
    const { tasks } = await t.tasks().listTasks({ filter: { agentId }, pageSize: 1000 });
    const events = (await Promise.all(tasks.map(async (task) => (await t.tasks().listTaskEvents({ taskId: task.taskId })).events))).flat();
    return events.filter((e) => e.sequence > after).sort((a, b) => Number(a.sequence - b.sequence));
  };

  it("resumes from its cursor across cut connections, a silent connection and a server restart, losing and repeating nothing", { timeout: 60_000 }, async () => {
    await t.tasks().dispatchTask({ toolName: "ts-tool", toolCallId: "running-before", agentId, claim: { workerId: "w" } });
    const abort = new AbortController();
    const retries: string[] = [];
    const follower = new TaskFollower(viaProxy, { filter: { agentId }, heartbeatInterval: { nanos: 200_000_000 } }, {
      signal: abort.signal,
      minBackoffMs: 50,
      maxBackoffMs: 200,
      onRetry: (error) => retries.push(error.message),
    });
    const r = record(follower);
    await eventually(() => r.snapshotSequence() !== undefined, 10_000, "snapshotComplete");
    const snapshotAt = r.snapshotSequence()!;
    expect(r.snapshotEvents().map((e) => e.toolCallId)).toEqual(["running-before"]);

    for (let i = 0; i < 5; i++) await dispatchAndComplete(`a-${i}`);
    await proxy.setMode({ kind: "forward" }); // cuts every connection
    for (let i = 0; i < 5; i++) await dispatchAndComplete(`b-${i}`);
    await eventually(() => retries.length >= 1, 10_000, "a retry after the cut");

    // Connections that open and then never answer: only the missing heartbeats tell.
    await proxy.setMode({ kind: "blackhole" });
    await dispatchAndComplete("c-0");
    await eventually(() => retries.some((m) => m.includes("sent nothing")), 15_000, "the silent call given up");
    await proxy.setMode({ kind: "forward" });

    // A restart on the same port and file: the new process serves the same log.
    const port = server.port;
    await server.close();
    server = await startWith(database.location, { port, shutdownDrainMs: 0 });
    await t.close();
    t = withClients(server, database.location, async () => {});
    for (let i = 0; i < 5; i++) await dispatchAndComplete(`d-${i}`);

    const expected = identity(await logEvents(snapshotAt));
    await eventually(() => identity(r.liveEvents()).length >= expected.length, 20_000, () => `${expected.length} events, have ${r.liveEvents().length}`);
    abort.abort();
    await r.done;
    expect(identity(r.liveEvents())).toEqual(expected);
    expect(expected).toHaveLength(16 * 3);
    expect(r.seen.filter((m) => m.restart)).toEqual([]);
    expect(follower.cursor).toBeGreaterThanOrEqual(BigInt(expected.at(-1)!.split(" ")[0]));
  });

  it("takes a fresh snapshot, saying so, when its cursor expired", async () => {
    await t.tasks().dispatchTask({ toolName: "ts-tool", toolCallId: "still-running", agentId: "ts-expired", claim: { workerId: "w" } });
    // Retention moves this watermark; set it as retention would.
    const { last_sequence } = await server.deps.db.kysely.selectFrom("log_head").select("last_sequence").executeTakeFirstOrThrow();
    await server.deps.db.kysely.updateTable("log_head").set({ trimmed_through: Number(last_sequence) - 1 }).where("id", "=", 1).execute();
    const abort = new AbortController();
    const r = record(new TaskFollower(t.tasks(), { filter: { agentId: "ts-expired" }, afterSequence: 1n }, { signal: abort.signal }));
    await eventually(() => r.snapshotSequence() !== undefined, 10_000, "a fresh snapshot");
    abort.abort();
    await r.done;
    const restart = r.seen[0].restart!;
    expect(errorReason(restart)).toBe("CURSOR_EXPIRED");
    expect(oldestSequence(restart)).toBe(BigInt(Number(last_sequence) - 1));
    expect(r.snapshotEvents().map((e) => e.toolCallId)).toEqual(["still-running"]);
  });
});
