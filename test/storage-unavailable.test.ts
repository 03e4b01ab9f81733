import { Code } from "@connectrpc/connect";
import BetterSqlite3 from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { createLogger } from "../src/log.js";
import { storageErrorConverter, unavailableCause } from "../src/server/storage-errors.js";
import { expectError } from "./support/expect-error.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { freshDatabase, startTestServer, startWith, withClients, type Protocol, type TestServer } from "./support/test-server.js";

// A database out of reach answers UNAVAILABLE (retry later), with ErrorInfo
// reason STORAGE_UNAVAILABLE and the driver's code, at once rather than
// hanging; anything else unexpected stays INTERNAL.

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const withCode = (code: string, message = `failed: ${code}`) => Object.assign(new Error(message), { code });

describe("which storage errors are UNAVAILABLE", () => {
  it.each([
    ["too many connections", withCode("53300", "sorry, too many clients already")],
    ["admin shutdown", withCode("57P01", "terminating connection due to administrator command")],
    ["crash shutdown", withCode("57P02")],
    ["cannot connect now", withCode("57P03", "the database system is starting up")],
    ["connection failure", withCode("08006")],
    ...["ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "ECONNRESET", "EPIPE", "ECONNREFUSED"].map((c) => [c, withCode(c)]),
    ["pool timeout", new Error("timeout exceeded when trying to connect")],
    ["connection lost", new Error("Connection terminated unexpectedly")],
    ["connect timeout, wrapping its cause", new Error("Connection terminated due to connection timeout", { cause: new Error("timeout expired") })],
    ["wrapped socket error", new Error("query failed", { cause: withCode("ECONNRESET") })],
    ["every address of a host refused", new AggregateError([withCode("ECONNREFUSED"), withCode("ENETUNREACH")], "")],
    ["SQLite write lock held", withCode("SQLITE_BUSY", "database is locked")],
  ] as [string, Error][])("%s", (_, err) => {
    expect(unavailableCause(err)).toBeDefined();
  });

  it.each([
    ["unique violation", withCode("23505")],
    ["syntax error", withCode("42601")],
    ["a bug", new TypeError("cannot read properties of undefined")],
    ["not an error", "boom"],
    ["nothing", undefined],
  ] as [string, unknown][])("not %s", (_, err) => {
    expect(unavailableCause(err)).toBeUndefined();
  });

  it.each([
    ["a deadlock", "40P01"],
    ["a serialization failure", "40001"],
  ])("answers %s the writer could not retry away with ABORTED and STORAGE_CONFLICT", async (_, code) => {
    const converted = storageErrorConverter(createLogger("error"))(withCode(code, "deadlock detected"), "DispatchTasks");
    const err = await expectError(Promise.reject(converted), Code.Aborted, "STORAGE_CONFLICT");
    expect(err.findDetails(ErrorInfoSchema)[0].metadata).toEqual({ code });
  });
});

describe("PostgreSQL out of reach, through a real server", () => {
  let proxy: TcpProxy;
  let t: TestServer;
  beforeAll(async () => {
    const database = await freshDatabase("postgres");
    const url = new URL(database.location);
    proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port) });
    url.port = String(proxy.port);
    const server = await startWith(url.toString());
    t = withClients(server, url.toString(), async () => {
      await server.close();
      await proxy.close();
      await database.drop();
    });
  });
  afterAll(() => t?.close());

  /** A write and a read over `protocol` both fail fast with UNAVAILABLE, STORAGE_UNAVAILABLE and this code. */
  async function expectUnavailable(protocol: Protocol, code?: string) {
    const started = Date.now();
    for (const call of [() => t.tasks(protocol).dispatchTask({ toolName: "down" }), () => t.tasks(protocol).listTasks({})]) {
      const err = await expectError(call(), Code.Unavailable, "STORAGE_UNAVAILABLE");
      const info = err.findDetails(ErrorInfoSchema)[0];
      expect(info.domain).toBe("taskstream");
      if (code) expect(info.metadata.code).toBe(code);
    }
    expect(Date.now() - started).toBeLessThan(3000);
  }

  it("serves while the database is reachable", async () => {
    const { task } = await t.tasks().dispatchTask({ toolName: "up" });
    expect(task!.taskId).toBeTruthy();
  });

  /** Switches the proxy, and gives the pool a moment to notice its connections were cut. */
  async function database(mode: Parameters<TcpProxy["setMode"]>[0]) {
    await proxy.setMode(mode);
    await sleep(200);
  }

  it("answers UNAVAILABLE at once when the database's port is closed", async () => {
    await database({ kind: "refuse" });
    await expectUnavailable("grpc", "ECONNREFUSED");
    await expectUnavailable("connect-json", "ECONNREFUSED");
  });

  it("answers UNAVAILABLE when PostgreSQL refuses connections: too many clients, or starting up", async () => {
    await database({ kind: "reject", sqlstate: "53300", message: "sorry, too many clients already" });
    await expectUnavailable("grpc", "53300");
    await database({ kind: "reject", sqlstate: "57P03", message: "the database system is starting up" });
    await expectUnavailable("connect", "57P03");
  });

  it("serves again once the database is back", async () => {
    await database({ kind: "forward" });
    const { task } = await t.tasks().dispatchTask({ toolName: "back" });
    expect((await t.tasks().getTask({ taskId: task!.taskId })).task!.toolName).toBe("back");
  });
});

describe("SQLite locked by another process, through a real server", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer("sqlite");
  });
  afterAll(() => t?.close());

  it("answers UNAVAILABLE with STORAGE_UNAVAILABLE once busy_timeout runs out", async () => {
    const other = new BetterSqlite3(t.database);
    other.exec("BEGIN IMMEDIATE");
    try {
      const err = await expectError(t.tasks().dispatchTask({ toolName: "locked-out" }), Code.Unavailable, "STORAGE_UNAVAILABLE");
      expect(err.findDetails(ErrorInfoSchema)[0].metadata.code).toBe("SQLITE_BUSY");
    } finally {
      other.exec("ROLLBACK");
      other.close();
    }
    const { task } = await t.tasks().dispatchTask({ toolName: "unlocked" });
    expect(task!.taskId).toBeTruthy();
  }, 30_000);
});
