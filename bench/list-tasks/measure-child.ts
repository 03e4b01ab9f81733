import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import BetterSqlite3 from "better-sqlite3";
import { Kysely, SqliteDialect, sql } from "kysely";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import type { Task } from "../../gen/taskstream/v1/task_pb.js";
import {
  GetTaskRequestSchema,
  GetTaskResponseSchema,
  ListTasksRequestSchema,
  ListTasksResponseSchema,
  TaskService,
} from "../../gen/taskstream/v1/task_service_pb.js";
import type { Database, TaskRow } from "../../src/storage/schema.js";
import { writeTask } from "../../src/storage/task-rows.js";
import { withEncodedField } from "../../src/service/encoded-response.js";
import { isPostgresUrl, openDatabase, withStatementCache, type Db } from "../../src/storage/connect.js";
import { getTask, listTasks } from "../../src/storage/task-queries.js";
import { gzipAnswer } from "../../src/server/grpc-fast-path.js";
import { cpuSeconds, rssBytes } from "../support/proc-stats.js";
import { spawnTaskstream } from "../support/server-process.js";
import { BareGrpcClient } from "./bare-client.js";
import { listCases, positionAfter, storageQuery, type ListCase, type ListRequest } from "./cases.js";
import { explainCalls } from "./explain.js";
import { GoListReader, type GoStats } from "./go-client.js";
import { buildGoCommand } from "../support/go-command.js";
import { measure, type MeasureOptions, type Stats } from "./stats.js";
import { startReplayServer } from "./replay-server.js";

export interface MeasureRequest {
  location: string;
  tasks: number;
  nowMs: number;
  sampleIds: string[];
  deep: number;
  pageSize: number;
  samples: number;
  warmup: number;
  maxCaseSeconds: number;
  /** Node flags for the server process (--cpu-prof and its directory, say). */
  serverNodeFlags?: string[];
}

export interface CaseResult {
  name: string;
  /** How many tasks match (total_size); a range when the case rotates its filter. */
  matches: string;
  /** Over the network: a connect-node gRPC client in this process calling the server process (none: storage only). */
  rpc?: Stats;
  /** The same calls from a bare HTTP/2 client that decodes nothing: the server's and the network's share. */
  bare?: Stats;
  /** The server process's CPU per call (ms) during the bare client's calls. */
  serverCpuMs?: number;
  /** The same calls from the Go client (connect-go, clients/go/cmd/list-reader), decoding into Go types. */
  go?: GoStats;
  /** listTasks / getTask from src/storage, as the handler calls it. */
  storage?: Stats;
  /** listTasks without the COUNT(*) for total_size (first pages only). */
  pageOnly?: Stats;
  plans: string[];
}

/** Where the time of one response goes, step by step (p50 and mean of each step alone). */
export interface Breakdown {
  name: string;
  tasks: number;
  bytes: number;
  gzippedBytes: number;
  steps: { step: string; stats: Stats }[];
  /** The whole call over gRPC, from the cases, and the same call from the bare HTTP/2 client. */
  call?: Stats;
  bare?: Stats;
  go?: GoStats;
  /** The clients against a replay server that does no work: their own floor. */
  floor: { node: Stats; go?: GoStats };
}

export interface MeasureResult {
  engineVersion: string;
  cases: CaseResult[];
  breakdowns: Breakdown[];
  walks: { name: string; how: "gRPC" | "storage"; pages: number; pageSize: number; seconds: number }[];
  /** Events the server's background work appended while measuring (0: it changed nothing). */
  backgroundEvents: number;
  /** 1-minute load average before and after measuring: other work on the machine shows here. */
  loadBefore: number;
  loadAfter: number;
  server: ProcessUsage & { rssAfterStartBytes: number };
  /** This process: the gRPC clients, the storage reader and the breakdown's steps. */
  client: ProcessUsage;
  /** The Go client's process: its CPU seconds; or why it did not build. */
  goClient: { cpuSeconds: number } | { error: string };
  seconds: number;
}

/** What /proc (or process.resourceUsage) says of a process over the measuring. */
export interface ProcessUsage {
  rssBytes: number;
  peakRssBytes: number;
  cpuSeconds: number;
}

/** Samples the server process's RSS every 250 ms for its peak, and reads its CPU seconds. */
class ServerUsage {
  private peak = 0;
  private readonly cpu0: number;
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly pid: number) {
    this.cpu0 = cpuSeconds(pid);
    this.timer = setInterval(() => (this.peak = Math.max(this.peak, rssBytes(pid))), 250);
  }
  stop(): ProcessUsage {
    clearInterval(this.timer);
    const rss = rssBytes(this.pid);
    return { rssBytes: rss, peakRssBytes: Math.max(this.peak, rss), cpuSeconds: cpuSeconds(this.pid) - this.cpu0 };
  }
}

/**
 * The bench's own handle on the server's database, for the storage column:
 * SQLite read-only, with the server's statement cache (prepared statements
 * reused, rows read as arrays); PostgreSQL a pool of its own.
 */
function openReader(location: string): Db {
  if (isPostgresUrl(location)) return openDatabase(location);
  const file = new BetterSqlite3(location, { readonly: true });
  const kysely = new Kysely<Database>({ dialect: new SqliteDialect({ database: withStatementCache(file) }) });
  return { kysely, dialect: "sqlite", close: () => kysely.destroy() };
}

/**
 * Starts the real server as a process of its own (`bin/taskstream.js serve`)
 * on the seeded database, and times each case from this process over gRPC
 * and straight against storage, one call at a time.
 */
export async function runCases(request: MeasureRequest, log: (line: string) => void): Promise<MeasureResult> {
  const started = performance.now();
  const loadBefore = loadavg()[0];
  // Retention keeps 60 days, as a deployment that keeps this history would set it: the
  // defaults (completed and cancelled tasks 1 h, failed 1 day) would have the server
  // deleting nearly the whole table while it is measured.
  const keep = String(60 * 86_400_000);
  const server = await spawnTaskstream(request.serverNodeFlags ?? [], [
    "--host", "127.0.0.1", "--port", "0", "--database", request.location, "--log-level", "info",
    "--retain-completed-ms", keep, "--retain-failed-ms", keep, "--retain-cancelled-ms", keep,
  ]);
  const db = openReader(request.location);
  const goDir = mkdtempSync(join(tmpdir(), "taskstream-list-reader-"));
  let go: GoListReader | { error: string };
  try {
    log("  building the Go client (clients/go/cmd/list-reader)");
    const built = buildGoCommand(join(dirname(fileURLToPath(import.meta.url)), "..", ".."), goDir, "list-reader");
    if (built.path) {
      go = new GoListReader(built.path);
      await go.ready;
    } else {
      go = { error: built.error! };
      log(`  the Go client did not build (${built.error}): no Go column`);
    }
    return await measureServer(server.url, server.pid, db, go, request, log, { started, loadBefore });
  } finally {
    if (go! instanceof GoListReader) await go.stop();
    rmSync(goDir, { recursive: true, force: true });
    await db.close();
    await server.stop();
  }
}

async function measureServer(
  url: string,
  serverPid: number,
  db: Db,
  go: GoListReader | { error: string },
  request: MeasureRequest,
  log: (line: string) => void,
  run: { started: number; loadBefore: number },
): Promise<MeasureResult> {
  const goReader = go instanceof GoListReader ? go : undefined;
  const goCpu0 = goReader?.cpuSeconds() ?? 0;
  const rssAfterStartBytes = rssBytes(serverPid);
  const serverUsage = new ServerUsage(serverPid);
  const clientCpu0 = process.cpuUsage();
  const gzipClient = createClient(TaskService, createGrpcTransport({ baseUrl: url }));
  const identityClient = createClient(TaskService, createGrpcTransport({ baseUrl: url, acceptCompression: [] }));
  const bareClient = new BareGrpcClient(url);
  const bareList = (req: ListRequest, gzip: boolean) =>
    bareClient.call("/taskstream.v1.TaskService/ListTasks", toBinary(ListTasksRequestSchema, create(ListTasksRequestSchema, req)), gzip);
  const options: MeasureOptions = {
    warmup: request.warmup,
    samples: request.samples,
    maxMs: request.maxCaseSeconds * 1000,
    minSamples: Math.min(request.samples, 200),
  };
  const pageSize = request.pageSize;
  // The server's first thousand calls or so run slower (code not yet optimized,
  // the heap still growing): warm it up before any case, not in the first one.
  for (let i = 0; i < request.warmup * 10; i++) {
    await gzipClient.listTasks({ pageSize });
    await identityClient.listTasks({ pageSize });
  }
  const walks: MeasureResult["walks"] = [];
  const walked = new Map<string, { token: string; after: { value: number; taskId: string } }>();

  /**
   * Follows next_page_token from the first page, once, `depth` times; keeps
   * the token and the keyset position it stands for. A storage-only case
   * pages storage instead, 1000 tasks a query, to the same position.
   */
  async function walk(c: ListCase, client: Client<typeof TaskService>) {
    const req = c.request(0);
    const key = `${JSON.stringify(storageQuery(req))}|${c.depth}|${c.storageOnly ?? false}`;
    const known = walked.get(key);
    if (known) return known;
    const t0 = performance.now();
    let found: { token: string; after: { value: number; taskId: string } };
    let calls: number;
    let size: number;
    if (c.storageOnly) {
      size = 1000;
      calls = (c.depth * pageSize) / size;
      if (!Number.isInteger(calls)) throw new Error(`${c.name}: ${c.depth} pages of ${pageSize} are not whole pages of ${size}`);
      const query = storageQuery(req);
      let after: { value: number; taskId: string } | undefined;
      for (let page = 0; page < calls; page++) {
        const { items } = await listTasks(db.kysely, { ...query, limit: size, after, countTotal: false });
        const last = items[items.length - 1];
        after = { value: last[query.orderBy], taskId: last.task_id };
      }
      found = { token: "", after: after! };
    } else {
      size = pageSize;
      calls = c.depth;
      let token = "";
      let last: Task | undefined;
      for (let page = 0; page < calls; page++) {
        const res = await client.listTasks({ ...req, pageSize, pageToken: token });
        if (res.nextPageToken === "") throw new Error(`${c.name}: only ${page + 1} pages`);
        token = res.nextPageToken;
        last = res.tasks[res.tasks.length - 1];
      }
      found = { token, after: positionAfter(req, last!) };
    }
    const seconds = (performance.now() - t0) / 1000;
    const how = c.storageOnly ? "storage" : "gRPC";
    walks.push({ name: c.name, how, pages: calls, pageSize: size, seconds });
    log(`    walked ${calls.toLocaleString("en-US")} pages of ${size} (${how}) in ${seconds.toFixed(1)} s`);
    walked.set(key, found);
    return found;
  }

  const cases: CaseResult[] = [];
  let deep: { name: string; rows: TaskRow[] } | undefined;
  for (const c of listCases(request.nowMs, request.deep)) {
    log(`  ${c.name}`);
    const client = c.identity ? identityClient : gzipClient;
    const walkedTo = c.depth > 0 ? await walk(c, client) : undefined;
    const rpcRequest = (i: number): ListRequest =>
      walkedTo ? { ...c.request(0), pageSize, pageToken: walkedTo.token } : { ...c.request(i), pageSize };
    const storageCall = (k: typeof db.kysely, i: number, countTotal: boolean) =>
      listTasks(k, { ...storageQuery(c.request(walkedTo ? 0 : i)), limit: pageSize, after: walkedTo?.after, countTotal });

    // The storage call must be the query the handler makes: same page.
    const viaStorage = await storageCall(db.kysely, 0, !walkedTo);
    if (!c.storageOnly) {
      const viaRpc = await client.listTasks(rpcRequest(0));
      const ids = (xs: { taskId?: string; task_id?: string }[]) => xs.map((x) => x.taskId ?? x.task_id).join(",");
      if (ids(viaRpc.tasks) !== ids(viaStorage.items)) throw new Error(`${c.name}: gRPC and storage pages differ`);
    }

    // The first deep page is the one whose response is taken apart step by step.
    if (c.depth === request.deep && !c.identity && !c.storageOnly) deep ??= { name: c.name, rows: viaStorage.items };

    const totals: number[] = [];
    const rpc = c.storageOnly
      ? undefined
      : await measure(async (i) => {
          const res = await client.listTasks(rpcRequest(i));
          totals.push(Number(res.totalSize));
        }, options);
    const storage = c.identity
      ? undefined
      : await measure((i) => storageCall(db.kysely, i, !walkedTo), options);
    // A storage-only deep case matches what its first page counts.
    if (c.storageOnly) totals.push((await listTasks(db.kysely, { ...storageQuery(c.request(0)), limit: 1, countTotal: true })).total!);
    // The server's CPU per call, from /proc over the bare client's calls (warm-up included): its cost alone,
    // whatever the scheduling of the 2 cores makes of the latency.
    let bareCalls = 0;
    const serverCpu0 = cpuSeconds(serverPid);
    const bare = c.storageOnly
      ? undefined
      : await measure((i) => (bareCalls++, bareList(rpcRequest(i), !c.identity)), options);
    const serverCpuMs = bareCalls ? ((cpuSeconds(serverPid) - serverCpu0) * 1000) / bareCalls : undefined;
    let goStats: GoStats | undefined;
    if (goReader && !c.storageOnly) {
      const calls = Array.from({ length: options.warmup + options.samples }, (_, i) =>
        toJson(ListTasksRequestSchema, create(ListTasksRequestSchema, rpcRequest(i))),
      );
      const { stats, firstTaskIds } = await goReader.run(url, "ListTasks", !c.identity, calls, options);
      if (firstTaskIds.join(",") !== viaStorage.items.map((t) => t.task_id).join(",")) throw new Error(`${c.name}: Go and storage pages differ`);
      goStats = stats;
    }
    const pageOnly = walkedTo || c.identity ? undefined : await measure((i) => storageCall(db.kysely, i, false), options);
    const plans = c.identity ? [] : await explainCalls(db, (k) => storageCall(k, 0, !walkedTo));
    cases.push({ name: c.name, matches: range(totals), rpc, bare, serverCpuMs, go: goStats, storage, pageOnly, plans });
    log(
      `    gRPC p50 ${rpc?.p50.toFixed(2) ?? "-"} ms, p99 ${rpc?.p99.toFixed(2) ?? "-"} ms; ` +
        `bare p50 ${bare?.p50.toFixed(2) ?? "-"} ms, p99 ${bare?.p99.toFixed(2) ?? "-"} ms; ` +
        `Go p50 ${goStats?.p50.toFixed(2) ?? "-"} ms, p99 ${goStats?.p99.toFixed(2) ?? "-"} ms; storage p99 ${storage?.p99.toFixed(2) ?? "-"} ms`,
    );
  }

  log("  GetTask");
  const ids = request.sampleIds;
  const id = (i: number) => ids[(i * 7919) % ids.length];
  const rpc = await measure((i) => gzipClient.getTask({ taskId: id(i) }), options);
  const getPath = "/taskstream.v1.TaskService/GetTask";
  const bare = await measure((i) => bareClient.call(getPath, toBinary(GetTaskRequestSchema, create(GetTaskRequestSchema, { taskId: id(i) })), true), options);
  let goGet: GoStats | undefined;
  if (goReader) {
    const calls = Array.from({ length: options.warmup + options.samples }, (_, i) => toJson(GetTaskRequestSchema, create(GetTaskRequestSchema, { taskId: id(i) })));
    const { stats, firstTaskIds } = await goReader.run(url, "GetTask", true, calls, options);
    if (firstTaskIds[0] !== id(0)) throw new Error(`GetTask over Go answered ${firstTaskIds[0]}, not ${id(0)}`);
    goGet = stats;
  }
  const storage = await measure(async (i) => {
    if (!(await getTask(db.kysely, id(i)))) throw new Error(`task ${id(i)} not found`);
  }, options);
  const plans = await explainCalls(db, (k) => getTask(k, id(0)));
  cases.push({ name: "GetTask (random known ids)", matches: "1", rpc, bare, go: goGet, storage, plans });
  log(
    `    gRPC p50 ${rpc.p50.toFixed(2)} ms, p99 ${rpc.p99.toFixed(2)} ms; bare p50 ${bare.p50.toFixed(2)} ms, p99 ${bare.p99.toFixed(2)} ms; ` +
      `Go p50 ${goGet?.p50.toFixed(2) ?? "-"} ms, p99 ${goGet?.p99.toFixed(2) ?? "-"} ms`,
  );

  const breakdowns: Breakdown[] = [];
  if (deep) breakdowns.push(await breakdown(deep.name, deep.rows, cases.find((c) => c.name === deep!.name)!, true, options, goReader));
  const one = await getTask(db.kysely, id(0));
  breakdowns.push(await breakdown("GetTask", [one!], cases[cases.length - 1], false, options, goReader));

  const version =
    db.dialect === "sqlite"
      ? `SQLite ${(await sql<{ v: string }>`SELECT sqlite_version() AS v`.execute(db.kysely)).rows[0].v}`
      : (await sql<{ v: string }>`SELECT version() AS v`.execute(db.kysely)).rows[0].v.replace(/ on .*/, "");
  // The sweeper and retention run in the server throughout; any change they made appended events.
  const events = Number((await sql<{ n: number | string }>`SELECT count(*) AS n FROM events`.execute(db.kysely)).rows[0].n);
  if (events > 0) log(`  warning: the server changed tasks during the run (${events} events appended)`);
  bareClient.close();
  const clientCpu = process.cpuUsage(clientCpu0);
  return {
    engineVersion: version,
    cases,
    breakdowns,
    walks,
    backgroundEvents: events,
    loadBefore: run.loadBefore,
    loadAfter: loadavg()[0],
    server: { ...serverUsage.stop(), rssAfterStartBytes },
    client: {
      rssBytes: process.memoryUsage().rss,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      cpuSeconds: (clientCpu.user + clientCpu.system) / 1e6,
    },
    goClient: goReader ? { cpuSeconds: goReader.cpuSeconds() - goCpu0 } : { error: (go as { error: string }).error },
    seconds: (performance.now() - run.started) / 1000,
  };
}

const gunzipAsync = promisify(gunzip);

/**
 * Times each step of answering with these rows, alone: encoding the response
 * as the handler does (tasks written from their rows, sent verbatim by
 * protobuf-es), gzip as the server's fast path does it (gzipAnswer: level 1,
 * on the event loop up to 64 KiB), and the client's gunzip (async, on the
 * thread pool, as connect-node does it) and decoding.
 */
async function breakdown(
  name: string,
  rows: TaskRow[],
  c: CaseResult,
  list: boolean,
  options: MeasureOptions,
  goReader: GoListReader | undefined,
): Promise<Breakdown> {
  const encode = () =>
    list
      ? toBinary(
          ListTasksResponseSchema,
          withEncodedField(ListTasksResponseSchema, { nextPageToken: "x".repeat(120), totalSize: 1n }, ListTasksResponseSchema.field.tasks, rows, writeTask),
        )
      : toBinary(GetTaskResponseSchema, withEncodedField(GetTaskResponseSchema, {}, GetTaskResponseSchema.field.task, rows, writeTask));
  const bytes = encode();
  const gzipped = await gzipAnswer(bytes);
  const schema = list ? ListTasksResponseSchema : GetTaskResponseSchema;
  const steps: Breakdown["steps"] = [];
  if (c.storage) steps.push({ step: "server: storage query", stats: c.storage });
  steps.push({ step: "server: encode (as the handler)", stats: await measure(async () => encode(), options) });
  // connect-node compresses only messages of 1 KiB or more.
  if (bytes.length >= 1024) {
    steps.push({ step: "server: gzip (level 1, as the server)", stats: await measure(async () => gzipAnswer(bytes), options) });
    steps.push({ step: "client: gunzip (thread pool)", stats: await measure(() => gunzipAsync(gzipped), options) });
  }
  steps.push({ step: "client: fromBinary", stats: await measure(async () => fromBinary(schema, bytes), options) });
  const floor = await clientFloor(bytes, list, options, goReader);
  return { name, tasks: rows.length, bytes: bytes.length, gzippedBytes: bytes.length >= 1024 ? gzipped.length : bytes.length, steps, call: c.rpc, bare: c.bare, go: c.go, floor };
}

/**
 * The same calls against a replay server that answers with these bytes at
 * once (gzipped as the server would): each client's latency with no server
 * work at all, so the least a call through it can take on this machine.
 */
async function clientFloor(bytes: Uint8Array, list: boolean, options: MeasureOptions, goReader: GoListReader | undefined): Promise<Breakdown["floor"]> {
  const replay = await startReplayServer(bytes, bytes.length >= 1024);
  try {
    const client = createClient(TaskService, createGrpcTransport({ baseUrl: replay.url }));
    const node = await measure(() => (list ? client.listTasks({}) : client.getTask({ taskId: "replayed" })), options);
    const request = list ? toJson(ListTasksRequestSchema, create(ListTasksRequestSchema)) : toJson(GetTaskRequestSchema, create(GetTaskRequestSchema, { taskId: "replayed" }));
    const calls = Array.from({ length: options.warmup + options.samples }, () => request);
    const go = goReader && (await goReader.run(replay.url, list ? "ListTasks" : "GetTask", true, calls, options)).stats;
    return { node, go };
  } finally {
    replay.stop();
  }
}

/** "n", or "median (min–max)" when the case's filter rotates. */
function range(values: number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  const fmt = (n: number) => n.toLocaleString("en-US");
  if (sorted[0] === sorted[sorted.length - 1]) return fmt(sorted[0]);
  return `${fmt(sorted[Math.floor(sorted.length / 2)])} (${fmt(sorted[0])}–${fmt(sorted[sorted.length - 1])})`;
}

if (process.send) {
  process.once("message", (request: MeasureRequest) => {
    runCases(request, (line) => process.stderr.write(`${line}\n`)).then(
      (result) => process.send!({ ok: true, result }, () => process.exit(0)),
      (err: unknown) => process.send!({ ok: false, error: String((err as Error)?.stack ?? err) }, () => process.exit(1)),
    );
  });
}
