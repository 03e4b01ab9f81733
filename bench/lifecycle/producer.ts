/**
 * The producers, in their own process: on {type: "go"}, dispatch `total`
 * tasks as fast as the server takes them, `concurrency` calls in flight over
 * `connections` HTTP/2 connections, each as an agent would send it (agent_id,
 * tool_call_id, run_id, small args), or with `plain` only tool_name and args.
 * With `batch` over 1, each call is a DispatchTasks of `batch` tasks. Reports
 * when the last dispatch answered.
 * clients/go/cmd/lifecycle-producer is its Go twin (main.ts --clients go):
 * keep the two sending the same requests.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { TaskService, type DispatchTaskRequestSchema } from "../../gen/taskstream/v1/task_service_pb.js";

export interface ProducerConfig {
  url: string;
  toolName: string;
  total: number;
  concurrency: number;
  connections: number;
  agents: number;
  /** Dispatch with tool_name and args only: no agent_id, tool_call_id or run_id, so no idempotency lookup. */
  plain: boolean;
  /** Tasks per DispatchTasks call; 1 sends DispatchTask per task. */
  batch: number;
}

export type ProducerMessage =
  | { type: "ready" }
  | { type: "done"; startMs: number; endMs: number; dispatched: number; errors: number; firstError?: string; cpuSeconds: number };

const config = JSON.parse(process.argv[2]) as ProducerConfig;
const clients: Client<typeof TaskService>[] = Array.from({ length: config.connections }, () =>
  createClient(TaskService, createGrpcTransport({ baseUrl: config.url })),
);

async function run(): Promise<ProducerMessage> {
  let next = 0;
  let dispatched = 0;
  let errors = 0;
  let firstError: string | undefined;
  const startMs = Date.now();
  const cpu0 = process.cpuUsage();
  const failed = (err: unknown, n = 1) => {
    errors += n;
    firstError ??= String(err);
  };
  const lane = async (index: number) => {
    const client = clients[index % clients.length];
    for (let first = next; first < config.total; first = next) {
      next = Math.min(config.total, first + config.batch);
      const requests = Array.from({ length: next - first }, (_, j) => request(first + j));
      try {
        if (config.batch === 1) {
          await client.dispatchTask(requests[0]);
          dispatched++;
          continue;
        }
        for (const { outcome } of (await client.dispatchTasks({ requests })).results) {
          if (outcome.case === "dispatched") dispatched++;
          else failed(outcome.value?.message);
        }
      } catch (err) {
        failed(err, requests.length);
      }
    }
  };
  await Promise.all(Array.from({ length: config.concurrency }, (_, i) => lane(i)));
  const cpu = process.cpuUsage(cpu0);
  return { type: "done", startMs, endMs: Date.now(), dispatched, errors, firstError, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

function request(i: number): MessageInitShape<typeof DispatchTaskRequestSchema> {
  if (config.plain) return { toolName: config.toolName, args: { query: "tide tables", n: i } };
  return {
    toolName: config.toolName,
    agentId: `agent-${i % config.agents}`,
    toolCallId: `call-${i}`,
    runId: `run-${Math.floor(i / 100)}`,
    args: { query: "tide tables", n: i },
  };
}

process.on("message", (message: { type: string }) => {
  if (message.type !== "go") return;
  void run().then((done) => process.send!(done, () => process.exit(0)));
});
// Opens every connection before the clock starts (the task does not exist: NOT_FOUND is the answer).
await Promise.all(clients.map((client) => client.getTask({ taskId: "warm-up" }).catch(() => undefined)));
process.send!({ type: "ready" } satisfies ProducerMessage);
