import { Code } from "@connectrpc/connect";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import type { Settings } from "../config.js";
import { taskstreamError } from "../errors.js";
import { LogSignal } from "../fanout/log-signal.js";
import { createLogger, type Logger } from "../log.js";
import type { ServiceDeps } from "../service/deps.js";
import { describeLocation, openDatabase, type Db } from "../storage/connect.js";
import { startMaintenance } from "../execution/maintenance.js";
import { EventTail } from "../fanout/event-tail.js";
import { migrateToLatest } from "../storage/migrate.js";
import { TaskStore } from "../storage/task-store.js";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { PgLogListener } from "../fanout/pg-log-listener.js";
import { HealthStatus, OVERALL } from "./health.js";
import { listen } from "./listener.js";
import { fallbackHandler, RuntimeMetrics } from "./metrics.js";
import { storageErrorConverter, storageErrors } from "./storage-errors.js";
import { withGrpcFastPath } from "./grpc-fast-path.js";
import { connectAdapter } from "./connect-adapter.js";
import { withCors } from "./cors.js";
import { taskService } from "../service/task-service.js";
import { workerService } from "../service/worker-service.js";
import { routes } from "./routes.js";

/** gRPC clients refuse messages over 4 MiB by default; the server holds to the same. */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface TaskstreamServer {
  /** Base URL, such as http://127.0.0.1:7420. */
  url: string;
  port: number;
  deps: ServiceDeps;
  health: HealthStatus;
  /** Graceful stop: long-polls and streams end, in-flight calls get the grace period. */
  close(): Promise<void>;
}

/** The database, migrated; a failure names the database (password redacted) and leaves nothing open. */
async function openStorage(settings: Settings): Promise<Db> {
  let db: Db | undefined;
  try {
    db = openDatabase(settings.database, { poolSize: settings.databasePoolSize, connectTimeoutMs: settings.databaseConnectTimeoutMs });
    await migrateToLatest(db);
    return db;
  } catch (error) {
    await db?.close().catch(() => {});
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`cannot open the database ${describeLocation(settings.database)}: ${message}`, { cause: error });
  }
}

/** Opens storage, migrates it, and serves every protocol on one port. */
export async function startServer(settings: Settings, logger: Logger = createLogger(settings.logLevel)): Promise<TaskstreamServer> {
  const db = await openStorage(settings);
  const logSignal = new LogSignal();
  const pendingSignal = new LogSignal();
  const tail = new EventTail(db, logSignal, {
    windowSize: settings.streamWindow,
    readBatch: 1000,
    // Only PostgreSQL has writers in other processes to notice.
    pollMs: db.dialect === "postgres" ? settings.logPollMs : 0,
  });
  await tail.start();
  const limits = { global: settings.globalConcurrency, perAgent: settings.agentConcurrency, overrides: settings.agentConcurrencyOverrides };
  const store = new TaskStore(db, { log: logSignal, pending: pendingSignal }, limits);
  const maintenance = startMaintenance(store, settings, logger);
  const health = new HealthStatus([TaskService.typeName, WorkerService.typeName]);
  const listener = db.dialect === "postgres" ? listenForOtherReplicas(settings, { log: logSignal, pending: pendingSignal }, health, logger) : undefined;
  const deps: ServiceDeps = { db, store, pendingSignal, tail, gauges: { activeStreams: 0, refusedStreams: 0 }, settings };

  const runtime = new RuntimeMetrics();
  const shutdown = new AbortController();
  // 0 turns compression off: no response is that large.
  const compressMinBytes = settings.compressMinBytes || Number.POSITIVE_INFINITY;
  const connectHandler = connectAdapter({
    routes: routes(deps, health),
    readMaxBytes: MAX_MESSAGE_BYTES,
    writeMaxBytes: MAX_MESSAGE_BYTES,
    compressMinBytes,
    // Strict, as the proto3 JSON mapping prescribes: connect-es would drop unknown
    // fields and enum names, so a misspelt filter would list every task.
    jsonOptions: { ignoreUnknownFields: false },
    acceptCompression: [compressionGzip, compressionBrotli],
    shutdownSignal: shutdown.signal,
    fallback: fallbackHandler(deps, runtime),
    interceptors: [storageErrors(logger)],
  }, logger);
  const rpcHandler = withGrpcFastPath(
    connectHandler,
    [
      [TaskService, taskService(deps)],
      [WorkerService, workerService(deps)],
    ],
    { maxMessageBytes: MAX_MESSAGE_BYTES, compressMinBytes, shutdownSignal: shutdown.signal, toConnectError: storageErrorConverter(logger) },
  );
  const handler = withCors(rpcHandler, settings.corsOrigins);
  const tls = settings.tlsCert && settings.tlsKey ? { certFile: settings.tlsCert, keyFile: settings.tlsKey } : undefined;
  const server = await listen(handler, { host: settings.host, port: settings.port, tls });
  runtime.start();
  const url = `${tls ? "https" : "http"}://${settings.host.includes(":") ? `[${settings.host}]` : settings.host}:${server.port}`;
  logger.info("taskstream listening", { url, database: describeLocation(settings.database), dialect: db.dialect, tls: !!tls });

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      logger.info("taskstream shutting down", { graceMs: settings.shutdownGraceMs });
      health.shutdown();
      shutdown.abort(taskstreamError(Code.Unavailable, "SHUTTING_DOWN", "server is shutting down; reconnect, and resume streams from their cursor"));
      await server.close(settings.shutdownGraceMs);
      await listener?.close();
      await maintenance.stop();
      await tail.close();
      await db.close();
      runtime.stop();
      logger.info("taskstream stopped");
    })());
  return { url, port: server.port, deps, health, close };
}

/**
 * On PostgreSQL, other replicas write too: LISTEN for their commits, and
 * report NOT_SERVING on health while the database cannot be reached.
 */
function listenForOtherReplicas(settings: Settings, signals: { log: LogSignal; pending: LogSignal }, health: HealthStatus, logger: Logger) {
  const serving = (up: boolean) => {
    const status = up ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    for (const service of [OVERALL, TaskService.typeName, WorkerService.typeName]) health.set(service, status);
  };
  const listener = new PgLogListener(settings.database, signals, { onConnection: serving }, logger, {
    connectTimeoutMs: settings.databaseConnectTimeoutMs,
  });
  listener.start();
  return listener;
}
