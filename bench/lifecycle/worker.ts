/**
 * The workers, in their own process: `loops` concurrent claim loops over
 * `connections` HTTP/2 connections. Each loop long-polls ClaimTasks for up to
 * `maxTasks` tasks, then completes them all (CompleteTasks calls of up to
 * `completeBatch` tasks, or with 1 CompleteTask per task, issued concurrently),
 * and claims again. Stops on {type: "stop"} and reports counts.
 * clients/go/cmd/lifecycle-worker is its Go twin (main.ts --clients go): keep
 * the two making the same calls.
 */
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { WorkerService, type TaskOutcome } from "../../gen/taskstream/v1/worker_service_pb.js";

export interface WorkerConfig {
  url: string;
  toolName: string;
  loops: number;
  connections: number;
  maxTasks: number;
  waitMs: number;
  /** Tasks per CompleteTasks call; 1 sends CompleteTask per task. */
  completeBatch: number;
}

export type WorkerMessage =
  | { type: "ready" }
  | {
      type: "stats";
      claimCalls: number;
      emptyClaims: number;
      claimed: number;
      completed: number;
      errors: number;
      firstError?: string;
    };

const config = JSON.parse(process.argv[2]) as WorkerConfig;
const clients: Client<typeof WorkerService>[] = Array.from({ length: config.connections }, () =>
  createClient(WorkerService, createGrpcTransport({ baseUrl: config.url })),
);
const stop = new AbortController();
const stats = { claimCalls: 0, emptyClaims: 0, claimed: 0, completed: 0, errors: 0, firstError: undefined as string | undefined };
const wait = { seconds: BigInt(Math.floor(config.waitMs / 1000)), nanos: (config.waitMs % 1000) * 1_000_000 };
const result = { kind: { case: "stringValue" as const, value: "ok" } };

function failed(err: unknown): void {
  if (stop.signal.aborted) return;
  stats.errors++;
  stats.firstError ??= String(err);
}

async function loop(index: number): Promise<void> {
  const client = clients[index % clients.length];
  const workerId = `bench-worker-${process.pid}-${index}`;
  while (!stop.signal.aborted) {
    let tasks;
    try {
      stats.claimCalls++;
      ({ tasks } = await client.claimTasks(
        { workerId, toolNames: [config.toolName], maxTasks: config.maxTasks, wait },
        { signal: stop.signal },
      ));
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Canceled) failed(err);
      continue;
    }
    if (tasks.length === 0) stats.emptyClaims++;
    stats.claimed += tasks.length;
    const requests = tasks.map(({ task, lease }) => ({ taskId: task!.taskId, leaseId: lease!.leaseId, result }));
    if (config.completeBatch === 1) {
      await Promise.all(requests.map((request) => client.completeTask(request).then(() => void stats.completed++, failed)));
      continue;
    }
    const calls = [];
    for (let i = 0; i < requests.length; i += config.completeBatch) {
      const batch = requests.slice(i, i + config.completeBatch);
      calls.push(client.completeTasks({ requests: batch }).then(({ results }) => results.forEach(counted), failed));
    }
    await Promise.all(calls);
  }
}

/** One CompleteTasks outcome: completed, or refused. */
function counted(outcome: TaskOutcome): void {
  if (outcome.error) failed(outcome.error.message);
  else stats.completed++;
}

const loops = Array.from({ length: config.loops }, (_, i) => loop(i));
process.on("message", async (message: { type: string }) => {
  if (message.type !== "stop") return;
  stop.abort();
  await Promise.all(loops);
  const out: WorkerMessage = { type: "stats", ...stats };
  process.send!(out, () => process.exit(0));
});
process.send!({ type: "ready" } satisfies WorkerMessage);
