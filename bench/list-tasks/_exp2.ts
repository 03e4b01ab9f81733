import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { toBinary } from "@bufbuild/protobuf";
import { writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { TaskService, ListTasksResponseSchema } from "../../gen/taskstream/v1/task_service_pb.js";
import { spawnTaskstream } from "../support/server-process.js";
const keep = String(60 * 86_400_000);
const real = await spawnTaskstream([], ["--host", "127.0.0.1", "--port", "0", "--database", "/tmp/exp/tasks.db", "--retain-completed-ms", keep, "--retain-failed-ms", keep, "--retain-cancelled-ms", keep]);
const res = await createClient(TaskService, createGrpcTransport({ baseUrl: real.url })).listTasks({ pageSize: 50 });
const bytes = toBinary(ListTasksResponseSchema, res);
writeFileSync("/tmp/exp/page.bin", bytes);
await real.stop();
const child = spawn(process.execPath, ["/tmp/exp/replay-server.mjs", "/tmp/exp/page.bin"], { stdio: ["ignore", "pipe", "inherit"] });
const url: string = await new Promise((r) => child.stdout!.once("data", (d) => r(String(d).trim())));
const client = createClient(TaskService, createGrpcTransport({ baseUrl: url }));
for (const round of [1, 2, 3]) {
  for (let i = 0; i < 2000; i++) await client.listTasks({ pageSize: 50 });
  const times: number[] = [];
  for (let i = 0; i < 3000; i++) { const t0 = performance.now(); await client.listTasks({ pageSize: 50 }); times.push(performance.now() - t0); }
  times.sort((a, b) => a - b);
  const p = (q: number) => times[Math.floor(q * times.length)].toFixed(2);
  console.log(`round ${round}: ${bytes.length} bytes, ${res.tasks.length} tasks; connect-node against a replay server: p50 ${p(0.5)} p90 ${p(0.9)} p99 ${p(0.99)} max ${times[times.length - 1].toFixed(1)}`);
}
child.kill(); process.exit(0);
