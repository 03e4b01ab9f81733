import { execFile, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  create,
  createFileRegistry,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as reflectionV1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionV1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_health_v1_health, Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/health/v1/health_pb.js";
import { file_taskstream_v1_task_service, TaskService } from "../gen/taskstream/v1/task_service_pb.js";
import { file_taskstream_v1_worker_service, WorkerService } from "../gen/taskstream/v1/worker_service_pb.js";
import { HealthStatus, registerHealth } from "../src/server/health.js";
import { registerReflection } from "../src/server/reflection.js";

const run = promisify(execFile);
const BUF = new URL("../node_modules/.bin/buf", import.meta.url).pathname;

interface Served {
  port: number;
  url: string;
  close(): Promise<void>;
}

/** A bare HTTP/2 server with only health and reflection on a free port; cleartext unless given a certificate. */
async function serve(health: HealthStatus, tls?: { cert: Buffer; key: Buffer }): Promise<Served> {
  const handler = connectNodeAdapter({
    routes(router) {
      registerHealth(router, health);
      registerReflection(router, [file_taskstream_v1_task_service, file_taskstream_v1_worker_service, file_health_v1_health]);
    },
  });
  const server = tls ? http2.createSecureServer(tls, handler) : http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `${tls ? "https" : "http"}://127.0.0.1:${port}`,
    close: async () => {
      // Clients keep idle connections open, which would hold server.close() forever.
      for (const session of sessions) session.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type ReflectionService = typeof reflectionV1.ServerReflection | typeof reflectionV1alpha.ServerReflection;
type Method<S extends ReflectionService> = S["method"]["serverReflectionInfo"];

/**
 * Sends the requests on one @grpc/grpc-js ServerReflectionInfo stream, half-closes
 * it, and collects every response until the server ends the call.
 */
async function reflect<S extends ReflectionService>(
  service: S,
  address: string,
  requests: MessageInitShape<Method<S>["input"]>[],
): Promise<MessageShape<Method<S>["output"]>[]> {
  const method: DescMethod = service.method.serverReflectionInfo;
  const Client = grpc.makeGenericClientConstructor(
    {
      serverReflectionInfo: {
        path: `/${service.typeName}/${method.name}`,
        requestStream: true,
        responseStream: true,
        requestSerialize: (m: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, m)),
        requestDeserialize: (b: Buffer) => fromBinary(method.input, b),
        responseSerialize: (m: MessageShape<DescMessage>) => Buffer.from(toBinary(method.output, m)),
        responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
      },
    },
    service.typeName,
  );
  const client = new Client(address, grpc.credentials.createInsecure());
  try {
    const call = (client as unknown as { serverReflectionInfo(): grpc.ClientDuplexStream<unknown, MessageShape<Method<S>["output"]>> })
      .serverReflectionInfo();
    const responses: MessageShape<Method<S>["output"]>[] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on("data", (response) => responses.push(response));
      call.on("error", reject);
      call.on("end", resolve);
    });
    for (const request of requests) call.write(create(method.input, request));
    call.end();
    await done;
    return responses;
  } finally {
    client.close();
  }
}

/** The file descriptors of a response, failing the test if it holds anything else. */
function descriptorsOf(response: reflectionV1.ServerReflectionResponse) {
  if (response.messageResponse.case !== "fileDescriptorResponse") {
    throw new Error(`expected file descriptors, got ${JSON.stringify(response.messageResponse.value)}`);
  }
  return response.messageResponse.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

/**
 * Runs `buf curl`. The npm `buf` is a Node wrapper around the Go binary, so a
 * hung call is killed by process group; killing the wrapper alone would leave
 * the Go process running.
 */
function bufCurl(args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(BUF, ["curl", ...args], { detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => process.kill(-child.pid!, "SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`buf curl ${args.join(" ")} exited with ${code ?? signal}: ${stderr}`));
    });
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Whether the promise settles within the time; for proving a stream stays open. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = new Promise<false>((resolve) => setTimeout(() => resolve(false), ms));
  return Promise.race([promise.then(() => true, () => true), timeout]);
}

describe("health and reflection over real sockets", () => {
  const health = new HealthStatus([TaskService.typeName, WorkerService.typeName]);
  let served: Served;
  let healthClient: ReturnType<typeof createClient<typeof Health>>;

  beforeAll(async () => {
    served = await serve(health);
    healthClient = createClient(Health, createGrpcTransport({ baseUrl: served.url }));
  });
  afterAll(() => served.close());

  describe("grpc.health.v1 with a connect-node gRPC client", () => {
    it("reports the overall status and each registered service as SERVING", async () => {
      expect((await healthClient.check({ service: "" })).status).toBe(ServingStatus.SERVING);
      expect((await healthClient.check({ service: TaskService.typeName })).status).toBe(ServingStatus.SERVING);
    });

    it("answers NotFound for a service it does not know", async () => {
      const error = await healthClient.check({ service: "no.such.Service" }).catch((e: unknown) => e);
      expect(ConnectError.from(error).code).toBe(Code.NotFound);
    });

    it("lists every status", async () => {
      const { statuses } = await healthClient.list({});
      expect(statuses[""]?.status).toBe(ServingStatus.SERVING);
      expect(statuses[WorkerService.typeName]?.status).toBe(ServingStatus.SERVING);
    });

    it("watch sends the current status, then each change, and cancelling it releases its listener", async () => {
      const service = "test.watched.Service";
      health.set(service, ServingStatus.SERVING);
      const abort = new AbortController();
      const stream = healthClient.watch({ service }, { signal: abort.signal })[Symbol.asyncIterator]();
      expect((await stream.next()).value?.status).toBe(ServingStatus.SERVING);
      health.set(service, ServingStatus.NOT_SERVING);
      expect((await stream.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
      expect(health.listenerCount).toBe(1);

      abort.abort();
      const error = await stream.next().catch((e: unknown) => e);
      expect(ConnectError.from(error).code).toBe(Code.Canceled);
      await waitFor(() => health.listenerCount === 0);
    });

    it("watch of an unknown service sends SERVICE_UNKNOWN and stays open until the service appears", async () => {
      const service = "test.later.Service";
      const abort = new AbortController();
      const stream = healthClient.watch({ service }, { signal: abort.signal })[Symbol.asyncIterator]();
      expect((await stream.next()).value?.status).toBe(ServingStatus.SERVICE_UNKNOWN);
      const next = stream.next();
      expect(await settlesWithin(next, 200)).toBe(false);
      health.set(service, ServingStatus.SERVING);
      expect((await next).value?.status).toBe(ServingStatus.SERVING);
      abort.abort();
      await waitFor(() => health.listenerCount === 0);
    });

    it("shutdown marks everything NOT_SERVING and ends open watches", async () => {
      const ownHealth = new HealthStatus([TaskService.typeName]);
      const own = await serve(ownHealth);
      try {
        const client = createClient(Health, createGrpcTransport({ baseUrl: own.url }));
        const stream = client.watch({ service: TaskService.typeName })[Symbol.asyncIterator]();
        expect((await stream.next()).value?.status).toBe(ServingStatus.SERVING);
        ownHealth.shutdown();
        expect((await stream.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
        expect((await stream.next()).done).toBe(true);
        expect(ownHealth.listenerCount).toBe(0);
        expect((await client.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
      } finally {
        await own.close();
      }
    });
  });

  describe("server reflection with a @grpc/grpc-js client", () => {
    const address = () => `127.0.0.1:${served.port}`;

    it("v1 list_services names every served service and reflection itself", async () => {
      const [response] = await reflect(reflectionV1.ServerReflection, address(), [{ messageRequest: { case: "listServices", value: "" } }]);
      expect(response.messageResponse.case).toBe("listServicesResponse");
      const names = response.messageResponse.case === "listServicesResponse" ? response.messageResponse.value.service.map((s) => s.name) : [];
      expect(names).toEqual(
        expect.arrayContaining([TaskService.typeName, WorkerService.typeName, Health.typeName, reflectionV1.ServerReflection.typeName]),
      );
    });

    it("v1alpha list_services answers the same", async () => {
      const [response] = await reflect(reflectionV1alpha.ServerReflection, address(), [{ messageRequest: { case: "listServices", value: "" } }]);
      const names = response.messageResponse.case === "listServicesResponse" ? response.messageResponse.value.service.map((s) => s.name) : [];
      expect(names).toEqual(expect.arrayContaining([TaskService.typeName, WorkerService.typeName, reflectionV1alpha.ServerReflection.typeName]));
    });

    it("file_containing_symbol returns a self-sufficient set of files that resolves the service", async () => {
      const [response] = await reflect(reflectionV1.ServerReflection, address(), [
        { messageRequest: { case: "fileContainingSymbol", value: TaskService.typeName } },
      ]);
      const files = descriptorsOf(response);
      const names = files.map((f) => f.name);
      expect(new Set(names).size).toBe(names.length);
      expect(names).toContain("google/protobuf/struct.proto");
      // createFileRegistry throws if any import is missing.
      const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: files }));
      const service = registry.getService(TaskService.typeName);
      expect(service?.methods.map((m) => m.name)).toEqual(TaskService.methods.map((m) => m.name));
    });

    it("finds files by method symbol and by file name on one stream", async () => {
      const responses = await reflect(reflectionV1.ServerReflection, address(), [
        { messageRequest: { case: "fileContainingSymbol", value: `${WorkerService.typeName}.${WorkerService.methods[0].name}` } },
        { messageRequest: { case: "fileByFilename", value: file_health_v1_health.proto.name } },
      ]);
      expect(descriptorsOf(responses[0]).at(-1)?.name).toBe(file_taskstream_v1_worker_service.proto.name);
      expect(descriptorsOf(responses[1]).map((f) => f.name)).toEqual([file_health_v1_health.proto.name]);
    });

    it("answers an unknown symbol with a NOT_FOUND error_response and keeps the stream usable", async () => {
      const responses = await reflect(reflectionV1.ServerReflection, address(), [
        { messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" } },
        { messageRequest: { case: "listServices", value: "" } },
      ]);
      expect(responses[0].messageResponse.case).toBe("errorResponse");
      expect(responses[0].messageResponse.value).toMatchObject({ errorCode: 5 });
      expect(responses[1].messageResponse.case).toBe("listServicesResponse");
    });
  });

  // buf 1.57.2 sends HTTP/1.1 to http:// URLs even with --http2-prior-knowledge
  // (fixed upstream in bufbuild/buf#4036), which no gRPC server accepts. Over TLS,
  // ALPN picks HTTP/2, so buf gets a server of its own with a throwaway certificate.
  describe("buf curl, using server reflection over TLS", () => {
    let dir: string;
    let secure: Served;
    let cacert: string;

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "taskstream-buf-curl-"));
      cacert = join(dir, "cert.pem");
      const key = join(dir, "key.pem");
      await run("openssl", [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cacert,
        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
      ]);
      secure = await serve(health, { cert: readFileSync(cacert), key: readFileSync(key) });
    });
    afterAll(async () => {
      await secure?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("lists the methods of TaskService", async () => {
      // --list-methods takes the base URL and lists every service's methods.
      const stdout = await bufCurl(["--protocol", "grpc", "--cacert", cacert, "--list-methods", secure.url]);
      const listed = stdout.trim().split("\n").filter((line) => line.startsWith(`${TaskService.typeName}/`));
      expect(listed.sort()).toEqual(TaskService.methods.map((m) => `${TaskService.typeName}/${m.name}`).sort());
    });

    it("calls Health/Check and gets SERVING", async () => {
      const stdout = await bufCurl(["--protocol", "grpc", "--cacert", cacert, `${secure.url}/${Health.typeName}/Check`]);
      expect(JSON.parse(stdout)).toEqual({ status: "SERVING" });
    });
  });
});
