/**
 * The lifecycle phase: producers dispatch, workers claim in batches and
 * complete, every call spread round-robin over the replicas. A worker claims
 * on one replica and completes through the next, so every lease is used on a
 * replica other than the one that granted it (when there are several).
 */
import { setMaxListeners } from "node:events";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";

export interface LifecycleOptions {
  tasks: number;
  /** Producers stop dispatching after this long even if `tasks` were not all dispatched. */
  maxSeconds: number;
  producers: number;
  workers: number;
  /** max_tasks of each ClaimTasks. */
  batch: number;
  /** Completions a worker loop has in flight at once. */
  completeConcurrency: number;
  agents: number;
  /** A run that completes nothing for this long fails. */
  stallMs: number;
}

export interface LifecycleResult {
  tasks: number;
  seconds: number;
  tasksPerSecond: number;
  /** How long the producers took to dispatch every task. */
  dispatchSeconds: number;
  /** Completions sent through a replica other than the one that granted the lease. */
  crossReplicaCompletions: number;
  /** Claims that returned tasks, and the mean batch they returned. */
  claims: number;
  meanBatch: number;
}

const TOOL = "scale-out";

export async function runLifecycle(transports: Transport[], options: LifecycleOptions): Promise<LifecycleResult> {
  const tasks: Client<typeof TaskService>[] = transports.map((t) => createClient(TaskService, t));
  const workers: Client<typeof WorkerService>[] = transports.map((t) => createClient(WorkerService, t));
  const n = transports.length;
  let completed = 0;
  let dispatched = 0;
  let producing = true;
  let crossReplica = 0;
  let claims = 0;
  let lastProgress = Date.now();
  let failure: Error | undefined;
  const done = new AbortController();
  setMaxListeners(0, done.signal);

  const worker = async (w: number) => {
    const claimOn = workers[w % n];
    const completeOn = (w + 1) % n;
    while (!done.signal.aborted) {
      const { tasks: claimed } = await claimOn.claimTasks(
        { workerId: `worker-${w}`, toolNames: [TOOL], maxTasks: options.batch, wait: { seconds: 1n } },
        { signal: done.signal },
      );
      if (claimed.length === 0) continue;
      claims++;
      let k = 0;
      const completer = async () => {
        for (let i = k++; i < claimed.length; i = k++) {
          const { task, lease } = claimed[i];
          await workers[completeOn].completeTask({
            taskId: task!.taskId,
            leaseId: lease!.leaseId,
            result: { kind: { case: "boolValue", value: true } },
          });
          completed++;
          if (completeOn !== w % n) crossReplica++;
          lastProgress = Date.now();
        }
      };
      await Promise.all(Array.from({ length: options.completeConcurrency }, completer));
      if (!producing && completed >= dispatched) done.abort();
    }
  };

  let next = 0;
  let dispatchedAt = 0;
  const producer = async () => {
    for (let i = next++; i < options.tasks && performance.now() - started < options.maxSeconds * 1000; i = next++) {
      await tasks[i % n].dispatchTask({
        toolName: TOOL,
        agentId: `agent-${i % options.agents}`,
        requestId: `lifecycle-${i}`,
        args: { i },
      });
      dispatched++;
    }
  };

  const stall = setInterval(() => {
    if (Date.now() - lastProgress > options.stallMs) {
      failure = new Error(`lifecycle: no task completed for ${options.stallMs} ms (${completed}/${dispatched} done)`);
      done.abort();
    }
  }, 1000);
  const runWorker = (w: number) =>
    worker(w).catch((err) => {
      if (!done.signal.aborted) {
        failure ??= err as Error;
        done.abort();
      }
    });
  const started = performance.now();
  const workerLoops = Array.from({ length: options.workers }, (_, w) => runWorker(w));
  lastProgress = Date.now();
  const producers = Promise.all(Array.from({ length: options.producers }, producer)).then(
    () => {
      dispatchedAt = performance.now();
      producing = false;
      if (completed >= dispatched) done.abort();
    },
    (err) => {
      failure ??= err as Error;
      done.abort();
    },
  );
  await Promise.all(workerLoops);
  const finished = performance.now();
  await producers;
  clearInterval(stall);
  if (failure) throw failure;
  const seconds = (finished - started) / 1000;
  return {
    tasks: completed,
    seconds,
    tasksPerSecond: completed / seconds,
    dispatchSeconds: (dispatchedAt - started) / 1000,
    crossReplicaCompletions: crossReplica,
    claims,
    meanBatch: claims === 0 ? 0 : completed / claims,
  };
}
