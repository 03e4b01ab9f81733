/**
 * The floor under bench/lifecycle: what one unary call costs connect-node on
 * this machine with a handler that does nothing (no storage), over the same
 * transports the lifecycle bench uses, with the client in another process.
 * Also the same call count over bare node:http2, for scale.
 *
 *   npx tsx bench/lifecycle/rpc-floor.ts [--calls 20000] [--concurrency 64]
 */
import { fork } from "node:child_process";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";

const { values: flags, positionals } = parseArgs({
  options: { calls: { type: "string", default: "20000" }, concurrency: { type: "string", default: "64" } },
  allowPositionals: true,
});
const CALLS = Number(flags.calls);
const CONCURRENCY = Number(flags.concurrency);
type Kind = "grpc" | "connect" | "h2";

interface ClientResult {
  perSecond: number;
  cpuUs: number;
}

async function client(kind: Kind, url: string): Promise<ClientResult> {
  let call: () => Promise<unknown>;
  if (kind === "h2") {
    const session = http2.connect(url);
    call = () =>
      new Promise((resolve) => {
        const stream = session.request({ ":method": "POST", ":path": "/x" });
        stream.end(Buffer.alloc(20));
        stream.on("data", () => {});
        stream.on("end", resolve);
      });
  } else {
    const transport =
      kind === "grpc" ? createGrpcTransport({ baseUrl: url }) : createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true });
    const tasks = createClient(TaskService, transport);
    call = () => tasks.getTask({ taskId: "x" });
  }
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next++ < CALLS) await call();
  }));
  const cpu = process.cpuUsage(cpu0);
  return { perSecond: CALLS / ((performance.now() - t0) / 1000), cpuUs: (cpu.user + cpu.system) / CALLS };
}

async function measure(kind: Kind): Promise<string> {
  const server =
    kind === "h2"
      ? http2.createServer((req, res) => {
          req.resume();
          req.on("end", () => res.writeHead(200, { "content-type": "application/grpc" }).end(Buffer.alloc(20)));
        })
      : http2.createServer(
          connectNodeAdapter({ routes: (router) => router.rpc(TaskService.method.getTask, (req) => ({ task: { taskId: req.taskId } })) }),
        );
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const cpu0 = process.cpuUsage();
  const child = fork(fileURLToPath(import.meta.url), ["client", kind, url], { execArgv: ["--import", "tsx"] });
  const result = await new Promise<ClientResult>((resolve) => child.once("message", (m) => resolve(m as ClientResult)));
  const cpu = process.cpuUsage(cpu0);
  server.close();
  const label = { grpc: "connect-node, gRPC", connect: "connect-node, Connect binary over HTTP/2", h2: "bare node:http2 (no RPC framework)" }[kind];
  return `| ${label} | ${Math.round(result.perSecond).toLocaleString("en-US")} | ${Math.round((cpu.user + cpu.system) / CALLS)} | ${Math.round(result.cpuUs)} |`;
}

if (positionals[0] === "client") {
  process.send!(await client(positionals[1] as Kind, positionals[2]));
  process.exit(0);
} else {
  const rows = [];
  for (const kind of ["grpc", "connect", "h2"] as Kind[]) rows.push(await measure(kind));
  console.log(
    [
      `${CALLS.toLocaleString("en-US")} unary calls, ${CONCURRENCY} in flight on one HTTP/2 connection, handler returns at once:`,
      "",
      "| server | calls/s | server CPU µs per call | client CPU µs per call |",
      "| --- | ---: | ---: | ---: |",
      ...rows,
    ].join("\n"),
  );
  process.exit(0);
}
