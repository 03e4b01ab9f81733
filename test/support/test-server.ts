import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import pg from "pg";
import { inject } from "vitest";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";
import { loadSettings, type Settings } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { startServer, type TaskstreamServer } from "../../src/server/server.js";
import { grpcJsClient } from "./grpc-js-client.js";

export const DIALECTS = ["sqlite", "postgres"] as const;
export type Dialect = (typeof DIALECTS)[number];

/** The wire protocols a client can speak to the server, each over a real socket. */
export const PROTOCOLS = ["grpc", "connect", "connect-json", "grpc-web"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface TestServer {
  server: TaskstreamServer;
  database: string;
  transport(protocol: Protocol): Transport;
  tasks(protocol?: Protocol): Client<typeof TaskService>;
  workers(protocol?: Protocol): Client<typeof WorkerService>;
  /** @grpc/grpc-js clients, the canonical gRPC implementation. */
  grpcJs: { tasks: ReturnType<typeof grpcJsClient<typeof TaskService>>["client"]; workers: ReturnType<typeof grpcJsClient<typeof WorkerService>>["client"] };
  close(): Promise<void>;
}

/** A fresh, empty database of the dialect: a temp SQLite file or a new PostgreSQL database. */
export async function freshDatabase(dialect: Dialect): Promise<{ location: string; drop(): Promise<void> }> {
  if (dialect === "sqlite") {
    const dir = mkdtempSync(join(tmpdir(), "taskstream-sqlite-"));
    return { location: join(dir, "taskstream.db"), drop: async () => rmSync(dir, { recursive: true, force: true }) };
  }
  const adminUrl = inject("postgresUrl");
  const name = `t_${randomUUID().replaceAll("-", "")}`;
  await withClient(adminUrl, (c) => c.query(`CREATE DATABASE ${name}`));
  return {
    location: adminUrl.replace(/\/postgres$/, `/${name}`),
    drop: () => withClient(adminUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined),
  };
}

/** Starts the real server on 127.0.0.1, a free port and a fresh database. */
export async function startTestServer(dialect: Dialect, overrides: Partial<Settings> = {}, writeLog?: (line: string) => void): Promise<TestServer> {
  const database = await freshDatabase(dialect);
  const server = await startWith(database.location, overrides, writeLog);
  return withClients(server, database.location, async () => {
    await server.close();
    await database.drop();
  });
}

/** Starts a server on an existing database (for restarts); its error log lines go to `writeLog`, if given. */
export async function startWith(location: string, overrides: Partial<Settings> = {}, writeLog: (line: string) => void = () => {}): Promise<TaskstreamServer> {
  const settings = loadSettings([], {}, { host: "127.0.0.1", port: 0, database: location, logLevel: "error", shutdownGraceMs: 2000, ...overrides });
  return startServer(settings, createLogger("error", writeLog));
}

export function withClients(server: TaskstreamServer, database: string, stop: () => Promise<void>): TestServer {
  const clients = connectClients(server.url, server.port);
  return {
    ...clients,
    server,
    database,
    close: async () => {
      clients.close();
      await stop();
    },
  };
}

/** Clients of every protocol for a server at `url`, in this process or another. */
export function connectClients(url: string, port: number) {
  const transports: Record<Protocol, Transport> = {
    grpc: createGrpcTransport({ baseUrl: url }),
    connect: createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true }),
    "connect-json": createConnectTransport({ baseUrl: url, httpVersion: "1.1" }),
    "grpc-web": createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" }),
  };
  const address = `127.0.0.1:${port}`;
  const tasksJs = grpcJsClient(TaskService, address);
  const workersJs = grpcJsClient(WorkerService, address);
  const client = <S extends DescService>(service: S, protocol: Protocol) => createClient(service, transports[protocol]);
  return {
    transport: (protocol: Protocol) => transports[protocol],
    tasks: (protocol: Protocol = "grpc") => client(TaskService, protocol),
    workers: (protocol: Protocol = "grpc") => client(WorkerService, protocol),
    grpcJs: { tasks: tasksJs.client, workers: workersJs.client },
    close: () => {
      tasksJs.close();
      workersJs.close();
    },
  };
}

async function withClient<T>(url: string, work: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await work(c);
  } finally {
    await c.end();
  }
}
