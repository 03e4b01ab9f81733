import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { build } from "esbuild";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { TaskService } from "../gen/taskstream/v1/task_service_pb.js";
import { WorkerService } from "../gen/taskstream/v1/worker_service_pb.js";
import type * as Dashboard from "./browser/dashboard.js";
import type { WebProtocol } from "./browser/dashboard.js";
import { connectClients, DIALECTS, freshDatabase, startTestServer, startWith, withClients, type TestServer } from "./support/test-server.js";

/**
 * A dashboard in Debian's Chromium, on a page served from another origin than
 * the API (as a dashboard usually is), calling taskstream with Connect-Web
 * (JSON and binary, reads as GET) and gRPC-Web: CORS, streaming over fetch,
 * deadlines and aborts as a browser does them.
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const PROTOCOLS = ["connect-json", "connect-binary", "grpc-web"] as const;

type DashboardModule = typeof Dashboard;
declare const dashboard: DashboardModule;

/** Serves one page that loads the bundled dashboard, on 127.0.0.1 and a port of its own: an origin. */
async function servePage(script: string): Promise<{ origin: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url === "/dashboard.js") res.writeHead(200, { "content-type": "text/javascript" }).end(script);
    else res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><title>dashboard</title><script src="/dashboard.js"></script>`);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { origin, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function bundleDashboard(): Promise<string> {
  const result = await build({
    entryPoints: [new URL("./browser/dashboard.ts", import.meta.url).pathname],
    bundle: true,
    format: "iife",
    globalName: "dashboard",
    platform: "browser",
    target: "chrome120",
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

let browser: Browser;
let script: string;
let allowedPage: Awaited<ReturnType<typeof servePage>>;
let otherPage: Awaited<ReturnType<typeof servePage>>;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run 'npm run setup' (Debian's chromium), or set CHROMIUM_PATH`);
  script = await bundleDashboard();
  [allowedPage, otherPage] = await Promise.all([servePage(script), servePage(script)]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // This machine has no network beyond localhost: Chromium's own
    // background connections would only fail, many at a time.
    args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

afterAll(async () => {
  await browser?.close();
  await allowedPage?.close();
  await otherPage?.close();
});

async function openDashboard(origin: string): Promise<{ page: Page; requests: { method: string; url: string }[] }> {
  const page = await browser.newPage();
  const requests: { method: string; url: string }[] = [];
  page.on("request", (request) => requests.push({ method: request.method(), url: request.url() }));
  await page.goto(origin);
  await page.waitForFunction(() => typeof dashboard === "object");
  return { page, requests };
}

/** The server as the test sees it beside the page: its URL, clients of its own, its open-stream gauge. */
interface Backend {
  url: string;
  tasks: Client<typeof TaskService>;
  workers: Client<typeof WorkerService>;
  streamsOpen(): number;
}

const backend = (t: TestServer): Backend => ({
  url: t.server.url,
  tasks: t.tasks("grpc"),
  workers: t.workers("grpc"),
  streamsOpen: () => t.server.deps.gauges.activeStreams,
});

/** The page dispatches a task and reads it back three ways; the server holds what the page saw. */
async function expectDispatchAndReads(page: Page, server: Backend, protocol: WebProtocol, agentId: string) {
  const seen = await page.evaluate(([url, p, a]) => dashboard.dispatchAndRead(url, p, a), [server.url, protocol, agentId] as const);
  if ("error" in seen) throw new Error(`the page's calls failed: ${JSON.stringify(seen.error)}`);
  const stored = (await server.tasks.getTask({ taskId: seen.taskId })).task!;
  expect(seen).toEqual({
    taskId: stored.taskId,
    status: "PENDING",
    args: { from: protocol, n: 1 },
    listed: [stored.taskId],
    totalSize: 1,
    events: [{ sequence: Number(stored.sequence), kind: "queued" }],
  });
  expect(stored.agentId).toBe(agentId);
}

/** The page watches an agent while the test runs a task's life; then the page closes its view. */
async function expectLiveLife(page: Page, server: Backend, protocol: WebProtocol, agentId: string) {
  const name = `life-${agentId}`;
  const toolName = `browser-life-${agentId}`;
  await page.evaluate(([n, url, p, a]) => dashboard.watch(n, url, p, { agentId: a }), [name, server.url, protocol, agentId] as const);
  await page.waitForFunction((n) => dashboard.watched(n).messages.some((m) => m.kind === "snapshotComplete"), name, { timeout: 10_000 });

  const { task } = await server.tasks.dispatchTask({ toolName, agentId, args: { step: 1 } });
  const taskId = task!.taskId;
  const { tasks: claimed } = await server.workers.claimTasks({ workerId: "w", toolNames: [toolName], maxTasks: 1 });
  const leaseId = claimed[0].lease!.leaseId;
  await server.workers.reportOutput({ taskId, leaseId, output: fromJson(ValueSchema, { progress: 0.5 }) });
  await server.workers.completeTask({ taskId, leaseId, result: fromJson(ValueSchema, { answer: 42 }) });
  await page.waitForFunction((n) => dashboard.watched(n).messages.some((m) => m.kind === "completed"), name, { timeout: 10_000 });

  const { messages, ended } = await page.evaluate((n) => dashboard.watched(n), name);
  expect(ended).toBeUndefined();
  const { events } = await server.tasks.listTaskEvents({ taskId });
  const seq = events.map((e) => Number(e.sequence));
  expect(messages.slice(1)).toEqual([
    { kind: "queued", sequence: seq[0], taskId, agentId, status: "PENDING" },
    { kind: "running", sequence: seq[1], taskId, agentId, status: "RUNNING" },
    { kind: "output", sequence: seq[2], taskId, agentId, status: "RUNNING", output: { progress: 0.5 } },
    { kind: "completed", sequence: seq[3], taskId, agentId, status: "COMPLETED", result: { answer: 42 } },
  ]);
  expect(events.map((e) => TaskStatus[e.status])).toEqual(["PENDING", "RUNNING", "RUNNING", "COMPLETED"]);

  expect(server.streamsOpen()).toBe(1);
  await page.evaluate((n) => dashboard.unwatch(n), name);
  await expect.poll(() => server.streamsOpen(), { timeout: 5000 }).toBe(0);
  expect(await page.evaluate((n) => dashboard.watched(n).ended, name)).toMatchObject({ code: "Canceled" });
}

describe.each(DIALECTS)("a browser dashboard (%s)", (dialect) => {
  let t: TestServer;
  let server: Backend;
  let page: Page;
  let requests: { method: string; url: string }[];

  beforeAll(async () => {
    t = await startTestServer(dialect, { corsOrigins: [allowedPage.origin] });
    server = backend(t);
    ({ page, requests } = await openDashboard(allowedPage.origin));
  });
  afterAll(async () => {
    await page?.close();
    await t?.close();
  });

  it.each(PROTOCOLS)("dispatches and reads a task from another origin over %s", async (protocol) => {
    await expectDispatchAndReads(page, server, protocol, `browser-${protocol}`);
    // Connect-Web sent the three reads as GETs, gRPC-Web has only POST.
    const reads = requests.filter((r) => r.url.startsWith(t.server.url) && /\/(GetTask|ListTasks|ListTaskEvents)\b/.test(r.url));
    const expected = protocol === "grpc-web" ? "POST" : "GET";
    expect(reads.slice(-3).map((r) => r.method)).toEqual([expected, expected, expected]);
  });

  it.each(PROTOCOLS)("watches a task's life live over %s, and an abort releases the stream", async (protocol) => {
    await expectLiveLife(page, server, protocol, `watched-${dialect}-${protocol}`);
  });

  it.each(PROTOCOLS)("ends a browser's stream at its deadline over %s", async (protocol) => {
    const name = `deadline-${protocol}`;
    await page.evaluate(([n, url, p]) => dashboard.watch(n, url, p, { agentId: "nobody" }, 700), [name, t.server.url, protocol] as const);
    await page.waitForFunction((n) => dashboard.watched(n).ended !== undefined, name, { timeout: 10_000 });
    const { messages, ended } = await page.evaluate((n) => dashboard.watched(n), name);
    expect(messages.map((m) => m.kind)).toEqual(["snapshotComplete"]);
    expect(ended?.code).toBe("DeadlineExceeded");
    await expect.poll(server.streamsOpen, { timeout: 5000 }).toBe(0);
  });

  it("answers no page from an origin it does not list", async () => {
    const other = await openDashboard(otherPage.origin);
    try {
      const agentId = "from-elsewhere";
      const seen = await other.page.evaluate(([url, a]) => dashboard.dispatchAndRead(url, "connect-json", a), [t.server.url, agentId] as const);
      // The preflight was refused, so the browser never sent the dispatch.
      expect(seen).toMatchObject({ error: { code: "Unknown" } });
      expect((await t.tasks("grpc").listTasks({ filter: { agentId } })).tasks).toEqual([]);
    } finally {
      await other.page.close();
    }
  });
});

describe("a browser dashboard over HTTPS", () => {
  let dir: string;
  let t: TestServer;
  let page: Page;
  /** The protocol Chromium used for each response from the server, as its network log reports it. */
  const protocols = new Set<string>();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "taskstream-browser-tls-"));
    const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
    await promisify(execFile)("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
    ]);
    const database = await freshDatabase("sqlite");
    const server = await startWith(database.location, { tlsCert: cert, tlsKey: key, corsOrigins: [allowedPage.origin], shutdownGraceMs: 300 });
    // The test's own clients speak to it over HTTPS too, trusting the same certificate.
    const ca = readFileSync(cert);
    const transport = createGrpcTransport({ baseUrl: server.url, nodeOptions: { ca } });
    t = {
      ...withClients(server, database.location, async () => {
        await server.close();
        await database.drop();
      }),
      tasks: () => createClient(TaskService, transport),
      workers: () => createClient(WorkerService, transport),
    };
    // The certificate is this test's own: the browser is told to accept it.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.responseReceived", ({ response }) => {
      if (response.url.startsWith(t.server.url)) protocols.add(response.protocol ?? "");
    });
    await page.goto(allowedPage.origin);
    await page.waitForFunction(() => typeof dashboard === "object");
  });
  afterAll(async () => {
    await page?.context().close();
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(PROTOCOLS)("calls and streams over HTTP/2 with %s", async (protocol) => {
    await expectDispatchAndReads(page, backend(t), protocol, `tls-${protocol}`);
    await expectLiveLife(page, backend(t), protocol, `tls-watched-${protocol}`);
    // ALPN gave the browser HTTP/2 for the calls, as it does for any HTTPS server that offers it.
    expect([...protocols]).toEqual(["h2"]);
  });
});

describe("a browser dashboard following the stream with clients/ts/follow.ts", () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let server: Awaited<ReturnType<typeof startWith>>;
  let page: Page;
  const agentId = "browser-follower";
  let clients: ReturnType<typeof connectClients>;
  const start = async (port = 0) => {
    server = await startWith(database.location, { port, corsOrigins: [allowedPage.origin], shutdownDrainMs: 0, shutdownGraceMs: 300 });
    clients = connectClients(server.url, server.port);
  };
  const tasks = () => clients.tasks();
  const workers = () => clients.workers();

  beforeAll(async () => {
    database = await freshDatabase("sqlite");
    await start();
    ({ page } = await openDashboard(allowedPage.origin));
  });
  afterAll(async () => {
    await page?.close();
    clients?.close();
    await server?.close();
    await database?.drop();
  });

  const runTasks = async (prefix: string) => {
    for (let i = 0; i < 3; i++) {
      const { task, lease } = await tasks().dispatchTask({ toolName: "browser-follow", toolCallId: `${prefix}-${i}`, agentId, claim: { workerId: "w" } });
      await workers().completeTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
    }
  };

  it("resumes in Chromium from its cursor after the server restarts, losing and repeating nothing", async () => {
    await page.evaluate(([url, a]) => dashboard.follow("restart", url, "connect-json", { agentId: a }), [server.url, agentId] as const);
    await page.waitForFunction(() => dashboard.watched("restart").messages.some((m) => m.kind === "snapshotComplete"), undefined, { timeout: 10_000 });
    const snapshotAt = (await page.evaluate(() => dashboard.watched("restart").messages))[0].sequence;
    await runTasks("before");

    // The same port and file: the page's origin stays allowed, its cursor stays valid.
    const port = server.port;
    clients.close();
    await server.close();
    await start(port);
    await runTasks("after");

    const { tasks: listed } = await tasks().listTasks({ filter: { agentId } });
    const logged = (await Promise.all(listed.map(async (task) => (await tasks().listTaskEvents({ taskId: task.taskId })).events))).flat();
    const expected = logged.filter((e) => e.sequence > BigInt(snapshotAt)).map((e) => Number(e.sequence)).sort((a, b) => a - b);
    expect(expected).toHaveLength(18);
    await page.waitForFunction(
      (n) => dashboard.watched("restart").messages.filter((m) => m.kind !== "heartbeat" && m.kind !== "snapshotComplete").length >= n,
      expected.length,
      { timeout: 20_000 },
    );
    const { messages, retries, ended } = await page.evaluate(() => dashboard.watched("restart"));
    await page.evaluate(() => dashboard.unwatch("restart"));
    expect(ended).toBeUndefined();
    expect(messages.filter((m) => m.kind !== "heartbeat" && m.kind !== "snapshotComplete").map((m) => m.sequence)).toEqual(expected);
    expect(retries.length).toBeGreaterThanOrEqual(1);
    expect(retries.filter((r) => r.startsWith("restart"))).toEqual([]);
  });
});
